//! Tokens may expire: `expires_at` (milliseconds, NULL for never).

use sea_orm_migration::prelude::*;

crate::ddl_migration!("m005_token_expiry");

const UP: &str = "ALTER TABLE api_tokens ADD COLUMN expires_at BIGINT";

const DOWN: &str = "ALTER TABLE api_tokens DROP COLUMN expires_at";
