//! Dashboard login sessions: a random session id (stored hashed) bound to the API token
//! used to log in, with its CSRF token and expiry.

use sea_orm_migration::prelude::*;

crate::ddl_migration!("m003_sessions");

const UP: &str = r#"
CREATE TABLE sessions (
    id_hash TEXT PRIMARY KEY,
    token_hash TEXT NOT NULL,
    csrf TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL
)
"#;

const DOWN: &str = "DROP TABLE sessions";
