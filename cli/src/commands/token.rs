use clap::Subcommand;
use protocol::Role;
use protocol::api::{CreateToken, CreatedToken};

use crate::client::Client;
use crate::failure::Failure;
use crate::output;

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Create a token (admin only). The token is printed once.
    Create {
        /// viewer, submitter, reviewer, admin or worker.
        #[arg(long, value_parser = parse_role)]
        role: Role,
        #[arg(long)]
        name: String,
    },
}

fn parse_role(text: &str) -> Result<Role, String> {
    text.parse()
}

pub async fn run(cmd: &TokenCommand, client: &Client, json: bool) -> Result<(), Failure> {
    match cmd {
        TokenCommand::Create { role, name } => {
            let created: CreatedToken = client.post("/tokens", &CreateToken { name: name.clone(), role: *role }).await?;
            if json {
                output::json(&created);
            } else {
                eprintln!("created {} token `{}`; it is shown once:", created.role, created.name);
                println!("{}", created.token);
            }
            Ok(())
        }
    }
}
