use protocol::Role;
use protocol::api::{CreateToken, CreatedToken, TokenInfo};
use sea_orm::TransactionTrait;
use serde_json::json;
use std::path::Path;

use crate::clock::now_ms;
use crate::error::ApiError;
use crate::principal::{hash_token, new_token};
use crate::state::AppState;
use crate::store;

fn valid_name(name: &str) -> bool {
    !name.is_empty() && name.len() <= 64 && name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.@".contains(c))
}

pub async fn create(state: &AppState, actor: &str, req: CreateToken) -> Result<CreatedToken, ApiError> {
    if !valid_name(&req.name) {
        return Err(ApiError::InvalidRequest(format!(
            "`{}` is not a valid token name: use 1-64 letters, digits, '-', '_', '.' or '@'",
            req.name
        )));
    }
    let tx = state.db.write.begin().await?;
    if store::tokens::name_taken(&tx, &req.name).await? {
        return Err(ApiError::Conflict(format!("a token named `{}` already exists; pick another name", req.name)));
    }
    let token = new_token();
    let now = now_ms();
    let expires_at = match req.expires_in_secs {
        Some(0) => return Err(ApiError::InvalidRequest("expires_in_secs must be at least 1".to_owned())),
        Some(secs) => Some(now.saturating_add(i64::try_from(secs).unwrap_or(i64::MAX / 1000).saturating_mul(1000))),
        None => None,
    };
    store::tokens::insert(&tx, &req.name, req.role.as_str(), &hash_token(&token), actor, now, expires_at).await?;
    super::audit::append(
        &tx,
        super::audit::Event {
            actor,
            action: protocol::AuditAction::TokenCreate,
            experiment: None,
            run_id: None,
            details: json!({"name": req.name, "role": req.role, "expires_at": expires_at}),
        },
    )
    .await?;
    tx.commit().await?;
    Ok(CreatedToken { name: req.name, role: req.role, token, expires_at })
}

fn token_info(t: store::tokens::ListedToken) -> Result<TokenInfo, ApiError> {
    let role = t.role()?;
    Ok(TokenInfo {
        id: t.id,
        name: t.name,
        role,
        created_at: t.created_at,
        created_by: t.created_by,
        revoked_at: t.revoked_at,
        expires_at: t.expires_at,
    })
}

/// Every token, oldest first (admin): names, roles, who made them, revocation and expiry.
pub async fn list(state: &AppState) -> Result<Vec<TokenInfo>, ApiError> {
    store::tokens::list(&state.db.read).await?.into_iter().map(token_info).collect()
}

/// Revokes a token by name or id (admin, audited). It stops working on the next request to
/// this server (its cache entry goes) and within seconds on any other.
pub async fn revoke(state: &AppState, actor: &str, name_or_id: &str) -> Result<TokenInfo, ApiError> {
    let tx = state.db.write.begin().await?;
    let token = store::tokens::find(&tx, name_or_id).await?.ok_or_else(|| ApiError::not_found("token", name_or_id))?;
    if !store::tokens::revoke(&tx, token.id, now_ms()).await? {
        return Err(ApiError::Conflict(format!("token `{}` was already revoked", token.name)));
    }
    super::audit::append(
        &tx,
        super::audit::Event {
            actor,
            action: protocol::AuditAction::TokenRevoke,
            experiment: None,
            run_id: None,
            details: json!({"id": token.id, "name": token.name, "role": token.role}),
        },
    )
    .await?;
    tx.commit().await?;
    if let Ok(mut cache) = state.token_cache.write() {
        cache.remove(&token.token_hash);
    }
    tracing::info!(token = %token.name, by = %actor, "token revoked");
    let revoked =
        store::tokens::find(&state.db.read, &token.id.to_string()).await?.ok_or_else(|| ApiError::not_found("token", token.id))?;
    token_info(revoked)
}

/// On a server's first start (no tokens at all): creates the `admin` token and writes it
/// to `data_dir/admin.token` with mode 0600. Returns the token when one was created.
pub async fn ensure_admin(state: &AppState, data_dir: &Path) -> anyhow::Result<Option<String>> {
    use anyhow::Context;
    if store::tokens::count(&state.db.write).await? > 0 {
        return Ok(None);
    }
    let created = create(state, "cobb", CreateToken { name: "admin".to_owned(), role: Role::Admin, expires_in_secs: None })
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let path = data_dir.join("admin.token");
    write_private(&path, &created.token).with_context(|| format!("while writing {}", path.display()))?;
    tracing::info!(path = %path.display(), "created the first admin token; the CLI on this machine reads it from there");
    Ok(Some(created.token))
}

/// Writes a secret readable by its owner only (mode 0600 on Unix).
pub fn write_private(path: &Path, contents: &str) -> std::io::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path)?;
    file.write_all(contents.as_bytes())?;
    file.write_all(b"\n")
}
