//! Bearer tokens. Tokens are random, shown once, and stored as sha256 hashes; a small
//! in-memory cache keeps the hot path (metric ingestion) off the database.

use actix_web::{FromRequest, HttpRequest, dev::Payload, web};
use protocol::Role;
use sha2::{Digest, Sha256};
use std::future::Future;
use std::pin::Pin;

use crate::error::ApiError;
use crate::startup::AppState;
use crate::store;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub name: String,
    pub role: Role,
}

impl Principal {
    /// Refuses with 403 unless this token's role allows `needed`.
    pub fn require(&self, needed: Role) -> Result<(), ApiError> {
        if self.role.allows(needed) {
            Ok(())
        } else {
            Err(ApiError::Forbidden { needed, have: self.role, name: self.name.clone() })
        }
    }
}

pub fn hash_token(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// 256 random bits from the OS, as `cobb_` + 64 hex digits.
pub fn new_token() -> String {
    format!("cobb_{}{}", uuid::Uuid::new_v4().simple(), uuid::Uuid::new_v4().simple())
}

fn bearer(req: &HttpRequest) -> Option<String> {
    let header = req.headers().get(actix_web::http::header::AUTHORIZATION)?.to_str().ok()?;
    let token = header.strip_prefix("Bearer ").or_else(|| header.strip_prefix("bearer "))?;
    Some(token.trim().to_owned())
}

impl FromRequest for Principal {
    type Error = ApiError;
    type Future = Pin<Box<dyn Future<Output = Result<Self, Self::Error>>>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let state = req.app_data::<web::Data<AppState>>().cloned();
        let token = bearer(req);
        Box::pin(async move {
            let state = state.ok_or_else(|| ApiError::Internal(anyhow::anyhow!("state missing")))?;
            let token = token.ok_or_else(|| {
                ApiError::Unauthorized("no bearer token: send `Authorization: Bearer TOKEN`".to_owned())
            })?;
            let hash = hash_token(&token);
            if let Some(principal) = state.token_cache.read().ok().and_then(|c| c.get(&hash).cloned()) {
                return Ok(principal);
            }
            let principal = store::tokens::find_by_hash(&state.db.read, &hash)
                .await?
                .ok_or_else(|| ApiError::Unauthorized("the token is not valid (unknown or revoked)".to_owned()))?;
            if let Ok(mut cache) = state.token_cache.write() {
                cache.insert(hash, principal.clone());
            }
            Ok(principal)
        })
    }
}
