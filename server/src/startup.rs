//! Building the application: database, first admin token, reaper, HTTP server.

use actix_web::dev::Server;
use actix_web::{App, HttpServer, web};
use anyhow::Context;
use std::collections::HashMap;
use std::net::TcpListener;
use std::sync::RwLock;

use crate::config::ServerConfig;
use crate::db;
use crate::error;
use crate::state::AppState;

pub struct Application {
    port: u16,
    server: Server,
    /// The admin token created on this start (first start only).
    pub admin_token: Option<String>,
}

impl Application {
    pub async fn build(config: ServerConfig) -> anyhow::Result<Self> {
        std::fs::create_dir_all(&config.data_dir).with_context(|| format!("while creating the data dir {}", config.data_dir.display()))?;
        let url = config.database_url();
        let db = db::connect(&url).await.with_context(|| {
            format!("while connecting to the database ({})", if url.starts_with("postgres") { "postgres" } else { &url })
        })?;
        let artifacts = crate::artifacts::ArtifactStore::open(&config)?;
        artifacts.check().await?;
        let group_commit =
            (db.backend == sea_orm::DbBackend::Sqlite).then(|| crate::service::group_commit::GroupCommit::new(db.write.clone()));
        let hot = (db.backend == sea_orm::DbBackend::Postgres).then(|| {
            let options = db.write.get_postgres_connection_pool().connect_options();
            crate::store::hot::HotConnections::new((*options).clone(), HOT_CONNECTIONS)
        });
        let state = web::Data::new(AppState {
            group_commit,
            hot,
            run_sweeps: std::sync::Mutex::new(HashMap::new()),
            evidence_cache: std::sync::Mutex::new(HashMap::new()),
            versus_cache: std::sync::Mutex::new(HashMap::new()),
            db,
            artifacts,
            config: config.clone(),
            token_cache: RwLock::new(HashMap::new()),
            login_failures: std::sync::Mutex::new(HashMap::new()),
            early_stop_rules: std::sync::Mutex::new(HashMap::new()),
            sweep_specs: std::sync::Mutex::new(HashMap::new()),
            params_cache: std::sync::Mutex::new(HashMap::new()),
            counters: crate::prom::Counters::default(),
        });
        let admin_token = crate::service::tokens::ensure_admin(&state, &config.data_dir).await?;
        tighten_modes(&config.data_dir).with_context(|| format!("while restricting the modes of {}", config.data_dir.display()))?;

        let listener = TcpListener::bind(&config.bind).with_context(|| format!("while binding {}", config.bind))?;
        let port = listener.local_addr()?.port();
        let limit = config.max_body_bytes;
        let app_state = state.clone();
        let server = HttpServer::new(move || {
            App::new()
                .app_data(app_state.clone())
                .app_data(web::JsonConfig::default().limit(limit).error_handler(move |e, _| error::json_error(e, limit)))
                .app_data(web::PayloadConfig::default().limit(limit))
                .app_data(web::PathConfig::default().error_handler(|e, _| error::request_error(format!("bad path: {e}"))))
                .app_data(web::QueryConfig::default().error_handler(|e, _| error::request_error(format!("bad query: {e}"))))
                .wrap(security_headers())
                .wrap(actix_web::middleware::Compress::default())
                .wrap(actix_web::middleware::from_fn(crate::telemetry::request_span))
                .service(crate::routes::health::metrics)
                .configure(crate::routes::api)
                .configure(crate::ui::routes)
        })
        .listen(listener)?
        .shutdown_timeout(5)
        .run();
        crate::service::jobs::spawn_reaper(state.clone());
        tracing::info!(port, database = ?state.db.backend, data_dir = %config.data_dir.display(), "cobb server listening");
        Ok(Self { port, server, admin_token })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub async fn run_until_stopped(self) -> std::io::Result<()> {
        self.server.await
    }
}

/// The files in a data dir that hold secrets or the database: readable by their owner only.
/// The most PostgreSQL connections one server keeps outside its pool (of 16) for metric
/// writes, at most four per HTTP worker thread (store::hot): two servers on one database use
/// at most 48 of PostgreSQL's default 100.
const HOT_CONNECTIONS: usize = 8;

const PRIVATE_FILES: [&str; 5] = ["admin.token", "worker.token", "cobb.db", "cobb.db-wal", "cobb.db-shm"];

/// Data dir 0700 (so the artifact blobs under it are the owner's only) and the secrets and
/// SQLite files in it 0600, on every start: a file left with a loose mode by an earlier
/// version, a copy or a restore is fixed. SQLite creates its -wal and -shm files with the
/// database's mode.
fn tighten_modes(data_dir: &std::path::Path) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(data_dir, std::fs::Permissions::from_mode(0o700))?;
        for name in PRIVATE_FILES {
            let path = data_dir.join(name);
            if path.exists() {
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
            }
        }
    }
    #[cfg(not(unix))]
    let _ = (data_dir, PRIVATE_FILES);
    Ok(())
}

/// Headers on every answer: no MIME sniffing, no framing (clickjacking), no referrer to other
/// sites (same-origin: with `no-referrer` browsers send `Origin: null` on the login form), and a
/// content security policy that allows no script at all (the pages use none) and only this
/// site for forms.
fn security_headers() -> actix_web::middleware::DefaultHeaders {
    actix_web::middleware::DefaultHeaders::new()
        .add(("X-Content-Type-Options", "nosniff"))
        .add(("X-Frame-Options", "DENY"))
        .add(("Referrer-Policy", "same-origin"))
        .add((
            "Content-Security-Policy",
            "default-src 'none'; style-src 'unsafe-inline'; img-src 'self' data:; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ))
}
