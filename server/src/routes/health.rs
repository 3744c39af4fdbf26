use actix_web::{HttpResponse, get, web};
use protocol::api::Health;

use crate::error::ApiError;
use crate::state::AppState;

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(health);
}

/// Unauthenticated liveness and database check.
#[get("/health")]
async fn health(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    crate::store::tokens::count(&state.db.read).await?;
    Ok(HttpResponse::Ok().json(Health {
        status: "ok".to_owned(),
        version: env!("CARGO_PKG_VERSION").to_owned(),
        database: format!("{:?}", state.db.backend).to_lowercase(),
    }))
}
