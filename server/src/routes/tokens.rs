use actix_web::{HttpResponse, get, post, web};
use protocol::Role;
use protocol::api::{CreateToken, WhoAmI};

use crate::error::ApiError;
use crate::principal::Principal;
use crate::service;
use crate::state::AppState;

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(create).service(whoami);
}

#[post("/tokens")]
async fn create(state: web::Data<AppState>, who: Principal, body: web::Json<CreateToken>) -> Result<HttpResponse, ApiError> {
    who.require(Role::Admin)?;
    let created = service::tokens::create(&state, &who.name, body.into_inner()).await?;
    Ok(HttpResponse::Created().json(created))
}

#[get("/whoami")]
async fn whoami(who: Principal) -> HttpResponse {
    HttpResponse::Ok().json(WhoAmI { name: who.name, role: who.role })
}
