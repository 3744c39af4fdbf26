//! Who is asking: the principal a bearer token or a dashboard session resolves to, and the
//! token primitives. Plain data, so services and stores use it without the web layer
//! (`auth.rs` extracts it from a request).

use protocol::Role;
use sha2::{Digest, Sha256};

use crate::error::ApiError;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub name: String,
    pub role: Role,
}

impl Principal {
    /// Refuses with 403 unless this token's role allows `needed`.
    pub fn require(&self, needed: Role) -> Result<(), ApiError> {
        if self.role.allows(needed) { Ok(()) } else { Err(ApiError::Forbidden { needed, have: self.role, name: self.name.clone() }) }
    }
}

pub fn hash_token(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// 256 random bits from the OS, as `cobb_` + 64 hex digits.
pub fn new_token() -> String {
    format!("cobb_{}{}", uuid::Uuid::new_v4().simple(), uuid::Uuid::new_v4().simple())
}
