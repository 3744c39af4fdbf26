//! `cobb backup --out FILE` (a consistent copy of a running server's SQLite database, whose
//! audit chain is verified and whose head hash is printed, to keep with the file) and `cobb
//! restore FILE --data-dir DIR` (offline: a checked copy into a fresh data dir).

use anyhow::Context;
use sea_orm::ConnectionTrait;
use std::path::Path;

use crate::client::Client;
use crate::failure::Failure;
use crate::output;

/// The first 16 bytes of every SQLite database file.
const SQLITE_HEADER: &[u8; 16] = b"SQLite format 3\0";

/// Checks a database file (integrity and the audit chain); returns (events, head hash).
async fn check(file: &Path) -> Result<(u64, String), Failure> {
    let url = format!("sqlite://{}?mode=ro", file.display());
    let db = sea_orm::Database::connect(&url).await.with_context(|| format!("while opening {}", file.display()))?;
    let row = db
        .query_one(sea_orm::Statement::from_string(db.get_database_backend(), "PRAGMA integrity_check"))
        .await
        .context("while checking the copy")?;
    let verdict: String = row.map(|r| r.try_get_by_index(0).unwrap_or_default()).unwrap_or_default();
    if verdict != "ok" {
        return Err(Failure::Runtime(anyhow::anyhow!("{} is damaged: SQLite's integrity check says {verdict}", file.display())));
    }
    let rows = server::store::audit::list(&db).await.context("while reading the audit log of the copy")?;
    let chain = server::service::audit::verify(&rows);
    if !chain.ok {
        return Err(Failure::Runtime(anyhow::anyhow!(
            "the audit chain in {} is broken: {}",
            file.display(),
            chain.reason.unwrap_or_default()
        )));
    }
    let head = rows.last().map_or_else(|| "-".to_owned(), |r| r.hash.clone());
    db.close().await.ok();
    Ok((chain.events, head))
}

fn private_write(path: &Path, bytes: &[u8]) -> Result<(), Failure> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file =
        options.open(path).map_err(|e| Failure::Input(anyhow::anyhow!("cannot create {}: {e} (it must not exist yet)", path.display())))?;
    std::io::Write::write_all(&mut file, bytes).with_context(|| format!("while writing {}", path.display()))?;
    file.sync_all().with_context(|| format!("while writing {}", path.display()))?;
    Ok(())
}

pub async fn backup(client: &Client, out: &Path, json: bool) -> Result<(), Failure> {
    let bytes = client.post_for_bytes("/backup").await?;
    if !bytes.starts_with(SQLITE_HEADER) {
        return Err(Failure::Runtime(anyhow::anyhow!("the server's answer is not a SQLite database")));
    }
    private_write(out, &bytes)?;
    let (events, head) = check(out).await?;
    if json {
        output::json(
            &serde_json::json!({"file": out.display().to_string(), "bytes": bytes.len(), "audit_events": events, "audit_head": head}),
        );
    } else {
        println!(
            "backed up {} bytes to {}; its audit chain verifies ({events} events), head {head}\n\
             keep the head hash apart from the file: `cobb audit --anchor {head}` checks a server still holds this history",
            bytes.len(),
            out.display()
        );
    }
    Ok(())
}

pub async fn restore(file: &Path, data_dir: &Path, json: bool) -> Result<(), Failure> {
    let target = data_dir.join("cobb.db");
    if target.exists() {
        return Err(Failure::input(format!(
            "{} already holds a database; restore into a new data dir (nothing already stored is overwritten)",
            data_dir.display()
        )));
    }
    let bytes = std::fs::read(file).with_context(|| format!("while reading {}", file.display())).map_err(Failure::Input)?;
    if !bytes.starts_with(SQLITE_HEADER) {
        return Err(Failure::input(format!(
            "{} is not a SQLite database (a PostgreSQL installation restores with pg_restore)",
            file.display()
        )));
    }
    let (events, head) = check(file).await?;
    std::fs::create_dir_all(data_dir).with_context(|| format!("while creating {}", data_dir.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(data_dir, std::fs::Permissions::from_mode(0o700))
            .with_context(|| format!("while securing {}", data_dir.display()))?;
    }
    private_write(&target, &bytes)?;
    if json {
        output::json(&serde_json::json!({"data_dir": data_dir.display().to_string(), "audit_events": events, "audit_head": head}));
    } else {
        println!(
            "restored {} into {} ({events} audit events, head {head}); start it with `cobb server --data-dir {}` \
             (artifact blobs live in the artifact store: copy DATA_DIR/artifacts too, or point --artifacts at the same store)",
            file.display(),
            target.display(),
            data_dir.display()
        );
    }
    Ok(())
}
