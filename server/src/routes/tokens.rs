use actix_web::{HttpResponse, delete, get, post, web};
use protocol::Role;
use protocol::api::{CreateToken, WhoAmI};

use crate::error::ApiError;
use crate::principal::Principal;
use crate::service;
use crate::state::AppState;

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(create).service(list).service(revoke).service(whoami);
}

#[post("/tokens")]
async fn create(state: web::Data<AppState>, who: Principal, body: web::Json<CreateToken>) -> Result<HttpResponse, ApiError> {
    who.require(Role::Admin)?;
    let created = service::tokens::create(&state, &who.name, body.into_inner()).await?;
    Ok(HttpResponse::Created().json(created))
}

/// Every token (admin), never the tokens themselves.
#[get("/tokens")]
async fn list(state: web::Data<AppState>, who: Principal) -> Result<HttpResponse, ApiError> {
    who.require(Role::Admin)?;
    Ok(HttpResponse::Ok().json(service::tokens::list(&state).await?))
}

/// Revokes a token by id or name (admin, audited); it stops working at once.
#[delete("/tokens/{id}")]
async fn revoke(state: web::Data<AppState>, who: Principal, id: web::Path<String>) -> Result<HttpResponse, ApiError> {
    who.require(Role::Admin)?;
    Ok(HttpResponse::Ok().json(service::tokens::revoke(&state, &who.name, &id).await?))
}

#[get("/whoami")]
async fn whoami(who: Principal) -> HttpResponse {
    HttpResponse::Ok().json(WhoAmI { name: who.name, role: who.role })
}
