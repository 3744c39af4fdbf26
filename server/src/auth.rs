//! The web layer's authentication: a request's bearer token resolved to its `Principal`
//! (principal.rs). Tokens are random, shown once, and stored as sha256 hashes; a small
//! in-memory cache keeps the hot path (metric ingestion) off the database.

use actix_web::{FromRequest, HttpRequest, dev::Payload, web};
use std::future::Future;
use std::pin::Pin;

use crate::error::ApiError;
use crate::principal::{Principal, hash_token};
use crate::state::AppState;
use crate::store;

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
            let token = token.ok_or_else(|| ApiError::Unauthorized("no bearer token: send `Authorization: Bearer TOKEN`".to_owned()))?;
            let hash = hash_token(&token);
            let now = std::time::Instant::now();
            let cached = state.token_cache.read().ok().and_then(|c| c.get(&hash).filter(|(_, until)| *until > now).map(|(p, _)| p.clone()));
            if let Some(principal) = cached {
                return Ok(principal);
            }
            let Some(principal) = store::tokens::find_by_hash(&state.db.read, &hash, crate::clock::now_ms()).await? else {
                if let Ok(mut cache) = state.token_cache.write() {
                    cache.remove(&hash);
                }
                tracing::info!("a request with an unknown, revoked or expired token was refused");
                return Err(ApiError::Unauthorized("the token is not valid (unknown, revoked or expired)".to_owned()));
            };
            if let Ok(mut cache) = state.token_cache.write() {
                cache.insert(hash, (principal.clone(), now + crate::state::TOKEN_CACHE_TTL));
            }
            Ok(principal)
        })
    }
}
