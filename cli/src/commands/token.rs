//! `cobb token create|list|revoke`: API tokens (admin).

use clap::Subcommand;
use protocol::Role;
use protocol::api::{CreateToken, CreatedToken, TokenInfo};

use crate::client::Client;
use crate::failure::Failure;
use crate::output;

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Create a token (admin only). The token is printed once.
    Create {
        /// viewer, submitter, reviewer, admin or worker.
        #[arg(long, value_parser = parse_role)]
        role: Role,
        #[arg(long)]
        name: String,
        /// The token stops working after this long: `90d`, `12h`, `30m` or `45s`.
        #[arg(long, value_parser = parse_duration)]
        expires_in: Option<u64>,
    },
    /// List every token: name, role, who created it, revoked or expired (never the token).
    List,
    /// Revoke a token by name or id (admin only, audited): it stops working at once.
    Revoke {
        /// The token's name or id (`cobb token list`). (Not called `token`: that is the
        /// global --token, the credential this command runs with.)
        #[arg(value_name = "NAME|ID")]
        name_or_id: String,
    },
}

fn parse_role(text: &str) -> Result<Role, String> {
    text.parse()
}

/// Seconds in `90d`, `12h`, `30m`, `45s` (a bare number is seconds).
pub fn parse_duration(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let (number, unit) = match text.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => (&text[..i], c),
        _ => (text, 's'),
    };
    let n: u64 = number.parse().map_err(|_| format!("`{text}` is not a duration: use 90d, 12h, 30m or 45s"))?;
    let scale = match unit {
        'd' => 86_400,
        'h' => 3_600,
        'm' => 60,
        's' => 1,
        other => return Err(format!("`{other}` is not a unit: use d, h, m or s")),
    };
    match n.checked_mul(scale) {
        Some(0) | None => Err(format!("`{text}` must be at least one second and at most a few centuries")),
        Some(secs) => Ok(secs),
    }
}

pub async fn run(cmd: &TokenCommand, client: &Client, json: bool) -> Result<(), Failure> {
    match cmd {
        TokenCommand::Create { role, name, expires_in } => {
            let request = CreateToken { name: name.clone(), role: *role, expires_in_secs: *expires_in };
            let created: CreatedToken = client.post("/tokens", &request).await?;
            if json {
                output::json(&created);
            } else {
                let until = created.expires_at.map(|t| format!(", valid until {}", protocol::time::utc(t))).unwrap_or_default();
                eprintln!("created {} token `{}`{until}; it is shown once:", created.role, created.name);
                println!("{}", created.token);
            }
            Ok(())
        }
        TokenCommand::List => {
            let tokens: Vec<TokenInfo> = client.get("/tokens").await?;
            if json {
                output::json(&tokens);
                return Ok(());
            }
            let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64);
            let rows: Vec<Vec<String>> = tokens
                .iter()
                .map(|t| {
                    let state = match (t.revoked_at, t.expires_at) {
                        (Some(r), _) => format!("revoked {}", protocol::time::utc(r)),
                        (None, Some(e)) if e <= now => format!("expired {}", protocol::time::utc(e)),
                        (None, Some(e)) => format!("valid until {}", protocol::time::utc(e)),
                        (None, None) => "valid".to_owned(),
                    };
                    vec![
                        t.id.to_string(),
                        t.name.clone(),
                        t.role.to_string(),
                        t.created_by.clone(),
                        protocol::time::utc(t.created_at),
                        state,
                    ]
                })
                .collect();
            output::table(&["ID", "NAME", "ROLE", "CREATED BY", "CREATED", "STATE"], &rows);
            Ok(())
        }
        TokenCommand::Revoke { name_or_id } => {
            let revoked: TokenInfo = client.delete(&format!("/tokens/{}", super::runs::encode(name_or_id))).await?;
            if json {
                output::json(&revoked);
            } else {
                println!("revoked {} token `{}` (id {}); it no longer works", revoked.role, revoked.name, revoked.id);
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::parse_duration;

    #[test]
    fn durations_read_as_seconds() {
        assert_eq!(parse_duration("90d"), Ok(90 * 86_400));
        assert_eq!(parse_duration("12h"), Ok(43_200));
        assert_eq!(parse_duration("30m"), Ok(1_800));
        assert_eq!(parse_duration("45"), Ok(45));
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("3w").is_err());
        assert!(parse_duration("soon").is_err());
    }
}
