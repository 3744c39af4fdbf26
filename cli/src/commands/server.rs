use anyhow::Context;
use clap::Args;
use serde::Serialize;
use std::path::{Path, PathBuf};

use crate::failure::Failure;

#[derive(Debug, Args, Serialize)]
pub struct ServerArgs {
    /// `postgres://USER:PASS@HOST/DB` to use PostgreSQL (default: SQLite under the data dir).
    #[arg(long, env = "COBB_DATABASE_URL", hide_env_values = true)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub database_url: Option<String>,
    /// Address to listen on.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bind: Option<String>,
    /// Artifact store: a directory or an object-store URL.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub artifacts: Option<String>,
}

/// The flags that were given: each overrides cobb.toml and `COBB_*`; a flag left out leaves
/// them in force.
#[derive(Serialize)]
struct Overrides<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    data_dir: Option<&'a Path>,
    #[serde(flatten)]
    args: &'a ServerArgs,
}

/// The server's configuration: defaults, cobb.toml (or COBB_CONFIG), `COBB_*`, then the
/// flags given (`data_dir` and the server flags).
pub fn config(args: &ServerArgs, data_dir: Option<&Path>) -> Result<server::ServerConfig, Failure> {
    server::ServerConfig::load(Overrides { data_dir, args }).map_err(|e| Failure::Input(anyhow::anyhow!("invalid configuration: {e}")))
}

pub async fn run(args: &ServerArgs, data_dir: Option<&Path>) -> Result<(), Failure> {
    let config = config(args, data_dir)?;
    let data_dir: PathBuf = config.data_dir.clone();
    let app = server::Application::build(config.clone()).await.context("while starting the server")?;
    let token_file = data_dir.join("admin.token");
    eprintln!(
        "cobb server on http://{}:{} ({}); admin token in {}",
        config.bind.rsplit_once(':').map_or("127.0.0.1", |(h, _)| h),
        app.port(),
        if config.database_url.as_deref().is_some_and(|u| u.starts_with("postgres")) { "PostgreSQL" } else { "SQLite" },
        token_file.display()
    );
    app.run_until_stopped().await.context("while serving")?;
    Ok(())
}
