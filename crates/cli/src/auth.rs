//! `hangar auth …`.

use anyhow::Result;
use clap::Subcommand;

#[derive(Subcommand, Debug, Clone, PartialEq, Eq)]
pub enum AuthCommand {
    /// Print the API token (HANGAR_API_TOKEN, else <data dir>/token)
    #[command(after_help = "Examples:\n  \
        hangar auth token\n  \
        curl --unix-socket /run/hangar/api.sock -H \"Authorization: Bearer $(hangar auth token)\" http://flaps/v1/apps?org_slug=personal")]
    Token,
}

pub fn run(cmd: AuthCommand) -> Result<()> {
    match cmd {
        AuthCommand::Token => {
            // The client's error already names the file and says the daemon creates it.
            let token = hangar_client::read_token()?;
            println!("{token}");
            Ok(())
        }
    }
}
