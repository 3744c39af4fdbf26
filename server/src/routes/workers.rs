use actix_web::{HttpResponse, get, web};
use protocol::Role;

use crate::error::ApiError;
use crate::principal::Principal;
use crate::state::AppState;

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(workers);
}

#[get("/workers")]
async fn workers(state: web::Data<AppState>, who: Principal) -> Result<HttpResponse, ApiError> {
    who.require(Role::Viewer)?;
    let rows = crate::store::workers::list(&state.db.read).await?;
    let list: Vec<protocol::api::WorkerInfo> = rows
        .into_iter()
        .map(|w| protocol::api::WorkerInfo { name: w.name, device: w.device, last_seen_at: w.last_seen_at, current_run: w.current_run_id })
        .collect();
    Ok(HttpResponse::Ok().json(list))
}
