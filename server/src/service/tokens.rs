use protocol::Role;
use protocol::api::{CreateToken, CreatedToken};
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
    store::tokens::insert(&tx, &req.name, req.role.as_str(), &hash_token(&token), actor, now_ms()).await?;
    super::audit::append(
        &tx,
        super::audit::Event {
            actor,
            action: protocol::AuditAction::TokenCreate,
            experiment: None,
            run_id: None,
            details: json!({"name": req.name, "role": req.role}),
        },
    )
    .await?;
    tx.commit().await?;
    Ok(CreatedToken { name: req.name, role: req.role, token })
}

/// On a server's first start (no tokens at all): creates the `admin` token and writes it
/// to `data_dir/admin.token` with mode 0600. Returns the token when one was created.
pub async fn ensure_admin(state: &AppState, data_dir: &Path) -> anyhow::Result<Option<String>> {
    use anyhow::Context;
    if store::tokens::count(&state.db.write).await? > 0 {
        return Ok(None);
    }
    let created =
        create(state, "cobb", CreateToken { name: "admin".to_owned(), role: Role::Admin }).await.map_err(|e| anyhow::anyhow!("{e}"))?;
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
