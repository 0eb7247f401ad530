//! `hangar logs`: container output of an app's machines, like `fly logs`.

use anyhow::Result;
use clap::Args;
use hangar_client::{encode, Client};

use crate::app_name::AppArgs;

#[derive(Args, Debug, Clone)]
#[command(after_help = "Examples:\n  \
    hangar logs -a my-app\n  \
    hangar logs -a my-app -i 3d8d9015b03e68 --no-tail")]
pub struct LogsArgs {
    #[command(flatten)]
    pub app: AppArgs,
    /// Only this machine (id or name)
    #[arg(
        short = 'i',
        long = "instance",
        alias = "machine",
        value_name = "MACHINE"
    )]
    pub instance: Option<String>,
    /// Print what is there and exit instead of following new lines
    #[arg(short = 'n', long = "no-tail", conflicts_with = "follow")]
    pub no_tail: bool,
    /// Follow new lines (the default; kept for muscle memory from other tools)
    #[arg(short = 'f', long = "follow")]
    pub follow: bool,
    /// How many earlier lines to show first
    #[arg(long, default_value_t = 100, value_name = "N")]
    pub tail: u64,
    /// Print the raw NDJSON records
    #[arg(long)]
    pub json: bool,
}

pub async fn run(client: &Client, args: LogsArgs) -> Result<()> {
    // As with `machine` commands, a machine id names its app when no app is given.
    let app = match (args.app.resolve(), args.instance.as_deref()) {
        (Ok(app), _) => app,
        (Err(e), Some(id)) if hangar_api::ids::is_machine_id(id) => {
            crate::machine::app_of_machine(client, id).await?.ok_or(e)?
        }
        (Err(e), _) => return Err(e),
    };
    let mut path = format!(
        "/hangar/v1/apps/{}/logs?follow={}&tail={}",
        encode(&app),
        !args.no_tail,
        args.tail
    );
    if let Some(i) = &args.instance {
        path.push_str(&format!("&instance={}", encode(i)));
    }
    let mut pending: Vec<u8> = Vec::new();
    let json = args.json;
    client
        .get_streaming(&path, |chunk| {
            pending.extend_from_slice(chunk);
            while let Some(nl) = pending.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = pending.drain(..=nl).collect();
                print_line(&line[..line.len() - 1], json);
            }
            true
        })
        .await?;
    Ok(())
}

/// `2026-11-24T20:33:41Z app[3bcde981e7561f] local [my-app] hello`, flyctl's shape plus the
/// container name.
fn print_line(line: &[u8], json: bool) {
    if json {
        println!("{}", String::from_utf8_lossy(line));
        return;
    }
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(line) else {
        return;
    };
    let s = |k: &str| v[k].as_str().unwrap_or_default().to_string();
    let stream = if s("stream") == "stderr" {
        " (stderr)"
    } else {
        ""
    };
    println!(
        "{} app[{}] {} [{}]{} {}",
        s("timestamp"),
        s("machine_id"),
        s("region"),
        s("container"),
        stream,
        s("message")
    );
}
