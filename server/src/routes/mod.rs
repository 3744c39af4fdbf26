//! HTTP routes under /api/v1: extract, call one service function, respond.

pub mod audit;
pub mod classify;
pub mod datasets;
pub mod experiments;
pub mod health;
pub mod leases;
pub mod promotions;
pub mod runs;
pub mod tokens;
pub mod workers;

use actix_web::web;

pub fn api(cfg: &mut web::ServiceConfig) {
    cfg.service(
        // Routes are tried in the order they are registered, each dynamic one a regex match:
        // the worker protocol (a metric batch every epoch of every run) comes first.
        web::scope("/api/v1")
            .configure(runs::worker_routes)
            .configure(leases::routes)
            .configure(health::routes)
            .configure(tokens::routes)
            .configure(datasets::routes)
            .configure(experiments::routes)
            .configure(runs::routes)
            .configure(promotions::routes)
            .configure(classify::routes)
            .configure(workers::routes)
            .configure(audit::routes),
    );
}
