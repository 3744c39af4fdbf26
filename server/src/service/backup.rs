//! Backups of a running server's SQLite database: `VACUUM INTO` on a read connection writes a
//! consistent copy of the database as of one moment (SQLite's online backup, without stopping
//! writers: in WAL mode the copy reads a snapshot), which is then streamed to the admin who
//! asked and deleted. PostgreSQL installations back up with `pg_dump` (docs/design.md).

use actix_web::web::Bytes;
use sea_orm::{ConnectionTrait, DbBackend};
use std::path::PathBuf;

use crate::error::ApiError;
use crate::state::AppState;

/// A copy that removes itself when the response has been sent (or dropped).
struct Staged(PathBuf);

impl Drop for Staged {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// A consistent copy of the database, as a stream of chunks.
pub async fn sqlite(state: &AppState) -> Result<(u64, impl futures_util::Stream<Item = Result<Bytes, std::io::Error>> + use<>), ApiError> {
    if state.db.backend != DbBackend::Sqlite {
        return Err(ApiError::Conflict(
            "this server runs on PostgreSQL: back it up with pg_dump (pg_dump --format=custom --file cobb.dump DBNAME) and restore \
             with pg_restore; see docs/design.md, \"Backups\""
                .to_owned(),
        ));
    }
    let path = state.config.data_dir.join(format!(".backup-{}.db", uuid::Uuid::new_v4().simple()));
    let staged = Staged(path.clone());
    let quoted = path.display().to_string().replace('\'', "''");
    state.db.read.execute_unprepared(&format!("VACUUM INTO '{quoted}'")).await?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600));
    }
    let file = tokio::fs::File::open(&path).await.map_err(|e| ApiError::Internal(anyhow::anyhow!("reading the backup copy: {e}")))?;
    let size = file.metadata().await.map(|m| m.len()).unwrap_or(0);
    let stream = futures_util::stream::unfold((file, staged), |(mut file, staged)| async move {
        use tokio::io::AsyncReadExt;
        let mut buf = vec![0u8; 1 << 20];
        match file.read(&mut buf).await {
            Ok(0) => None,
            Ok(n) => {
                buf.truncate(n);
                Some((Ok(Bytes::from(buf)), (file, staged)))
            }
            Err(e) => Some((Err(e), (file, staged))),
        }
    });
    Ok((size, stream))
}
