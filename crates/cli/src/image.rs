//! `hangar image …`: the daemon's image store (`/hangar/v1/images`).

use std::collections::HashMap;
use std::io::IsTerminal;

use anyhow::{bail, Context, Result};
use clap::Subcommand;
use hangar_client::{encode, Client};
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use serde_json::Value;

use crate::output::{print_json, Table};

#[derive(Subcommand, Debug, Clone)]
pub enum ImageCommand {
    /// List the images in the store
    #[command(visible_alias = "list", after_help = "Examples:\n  hangar image ls")]
    Ls {
        #[arg(long)]
        json: bool,
    },
    /// Show an image's record and config (entrypoint, cmd, env, user, …)
    #[command(
        after_help = "Examples:\n  hangar image inspect 127.0.0.1:5000/hangar/busybox:latest"
    )]
    Inspect { reference: String },
    /// Pull an image from its registry (progress per layer)
    #[command(after_help = "Examples:\n  hangar image pull 127.0.0.1:5000/hangar/busybox:latest")]
    Pull { reference: String },
    /// Import a `docker save` archive, an OCI archive or an OCI layout dir (read by the CLI, streamed to the daemon)
    #[command(
        after_help = "Examples:\n  hangar image import ./busybox.tar --tag localhost/busybox:1"
    )]
    Import {
        path: std::path::PathBuf,
        /// Reference to record the image under
        #[arg(long)]
        tag: Option<String>,
        /// Which image of an archive or layout holding several (its ref name, e.g. `busybox`)
        #[arg(long, value_name = "NAME")]
        select: Option<String>,
    },
    /// Remove an image (refused while a machine uses it)
    #[command(
        visible_alias = "remove",
        after_help = "Examples:\n  hangar image rm nginx:1.27"
    )]
    Rm { reference: String },
    /// Remove images no machine uses, and their layers
    #[command(after_help = "Examples:\n  hangar image prune\n  hangar image prune --all")]
    Prune {
        /// Also remove tagged images that no machine uses
        #[arg(long)]
        all: bool,
    },
}

pub async fn run(client: &Client, cmd: ImageCommand) -> Result<()> {
    match cmd {
        ImageCommand::Ls { json } => {
            let list: Value = client.get("/hangar/v1/images").send().await?;
            if json {
                return print_json(&list);
            }
            let mut table = Table::new(["REFERENCE", "DIGEST", "SIZE", "PLATFORM"]);
            for img in list.as_array().into_iter().flatten() {
                let digest = img["manifest_digest"].as_str().unwrap_or_default();
                let short = digest.strip_prefix("sha256:").unwrap_or(digest);
                let refs: Vec<&str> = img["references"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_str)
                    .collect();
                let platform = format!(
                    "{}/{}",
                    img["os"].as_str().unwrap_or_default(),
                    img["architecture"].as_str().unwrap_or_default()
                );
                let size = human_size(img["size"].as_u64().unwrap_or(0));
                let name = if refs.is_empty() {
                    "<none>".to_string()
                } else {
                    refs.join(", ")
                };
                table.row([name, short.chars().take(12).collect(), size, platform]);
            }
            print!("{}", table.render());
            Ok(())
        }
        ImageCommand::Inspect { reference } => {
            let v: Value = client
                .get(format!(
                    "/hangar/v1/images/inspect?ref={}",
                    encode(&reference)
                ))
                .send()
                .await?;
            print_json(&v)
        }
        ImageCommand::Rm { reference } => {
            let v: Value = client
                .delete(format!("/hangar/v1/images?ref={}", encode(&reference)))
                .send()
                .await?;
            for r in v["untagged"].as_array().into_iter().flatten() {
                println!("Untagged: {}", r.as_str().unwrap_or_default());
            }
            if let Some(d) = v["deleted"].as_str() {
                println!("Deleted: {d}");
            }
            Ok(())
        }
        ImageCommand::Prune { all } => {
            let v: Value = client
                .post(format!("/hangar/v1/images/prune?all={all}"))
                .send()
                .await?;
            let images = v["gc"]["images_removed"]
                .as_array()
                .or(v["images_removed"].as_array())
                .map_or(0, Vec::len);
            println!(
                "Removed {images} image(s), {} layer(s); {} freed",
                v["layers_removed"].as_u64().unwrap_or(0),
                human_size(v["bytes_freed"].as_u64().unwrap_or(0))
            );
            Ok(())
        }
        ImageCommand::Import { path, tag, select } => {
            let mut url = "/hangar/v1/images/import?".to_string();
            if let Some(t) = tag {
                url.push_str(&format!("tag={}&", encode(&t)));
            }
            if let Some(sel) = select {
                url.push_str(&format!("select={}&", encode(&sel)));
            }
            let url = url.trim_end_matches(['&', '?']).to_string();
            // The CLI reads the archive with the caller's own rights and streams it; the
            // daemon never opens a path named by its caller.
            let raw = upload(client, &url, &path).await?;
            if !raw.status.is_success() {
                return Err(
                    hangar_client::ClientError::from_response(raw.status, &raw.body).into(),
                );
            }
            let v: Value = raw.json().context("decoding the import answer")?;
            for img in v.as_array().into_iter().flatten() {
                println!(
                    "Imported {} {}",
                    img["manifest_digest"].as_str().unwrap_or_default(),
                    img["references"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(Value::as_str)
                        .collect::<Vec<_>>()
                        .join(", ")
                );
            }
            Ok(())
        }
        ImageCommand::Pull { reference } => pull(client, &reference).await,
    }
}

/// Streams the daemon's pull progress: a bar per layer on a terminal, plain lines otherwise.
async fn pull(client: &Client, reference: &str) -> Result<()> {
    let tty = std::io::stderr().is_terminal();
    let multi = MultiProgress::new();
    let style =
        ProgressStyle::with_template("{prefix:.bold} [{bar:30}] {bytes}/{total_bytes} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> ");
    let mut bars: HashMap<String, ProgressBar> = HashMap::new();
    let mut pending = Vec::new();
    let mut outcome: Option<Result<String, String>> = None;
    client
        .get_streaming_post(
            &format!("/hangar/v1/images/pull?ref={}", encode(reference)),
            |chunk| {
                pending.extend_from_slice(chunk);
                while let Some(nl) = pending.iter().position(|b| *b == b'\n') {
                    let line: Vec<u8> = pending.drain(..=nl).collect();
                    let Ok(v) = serde_json::from_slice::<Value>(&line) else {
                        continue;
                    };
                    if let Some(d) = v["done"].as_str() {
                        outcome = Some(Ok(d.to_string()));
                        continue;
                    }
                    if let Some(e) = v["error"].as_str() {
                        outcome = Some(Err(e.to_string()));
                        continue;
                    }
                    let digest = v["digest"].as_str().unwrap_or_default().to_string();
                    let short: String = digest
                        .trim_start_matches("sha256:")
                        .chars()
                        .take(12)
                        .collect();
                    let event = v["event"].as_str().unwrap_or_default();
                    if !tty {
                        if event != "bytes" {
                            eprintln!("{short}: {event}");
                        }
                        continue;
                    }
                    let total = v["total"].as_u64().unwrap_or(0);
                    let bar = bars.entry(digest.clone()).or_insert_with(|| {
                        let b = multi.add(ProgressBar::new(total));
                        b.set_style(style.clone());
                        b.set_prefix(short.clone());
                        b
                    });
                    match event {
                        "bytes" => {
                            bar.set_length(total);
                            bar.set_position(v["done"].as_u64().unwrap_or(0));
                        }
                        "cached" => bar.finish_with_message("already present"),
                        "verified" => bar.set_message("verified"),
                        "unpacked" => bar.finish_with_message("done"),
                        _ => {}
                    }
                }
                true
            },
        )
        .await?;
    match outcome {
        Some(Ok(digest)) => {
            println!("Pulled {reference} ({digest})");
            Ok(())
        }
        Some(Err(e)) => bail!("pulling {reference} failed: {e}"),
        None => bail!("pulling {reference}: the daemon ended the stream without a result"),
    }
}

fn human_size(bytes: u64) -> String {
    const UNITS: &[&str] = &["B", "kB", "MB", "GB", "TB"];
    let mut v = bytes as f64;
    let mut i = 0;
    while v >= 1000.0 && i < UNITS.len() - 1 {
        v /= 1000.0;
        i += 1;
    }
    if i == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", UNITS[i])
    }
}

/// Streams the archive at `path` (a file, or an OCI layout directory packed as an OCI archive
/// on the fly) to `url`.
pub(crate) async fn upload(
    client: &Client,
    url: &str,
    path: &std::path::Path,
) -> Result<hangar_client::RawResponse> {
    let meta =
        std::fs::metadata(path).with_context(|| format!("cannot read {}", path.display()))?;
    if !meta.is_dir() {
        let file = tokio::fs::File::open(path)
            .await
            .with_context(|| format!("cannot read {}", path.display()))?;
        return Ok(client.post_stream(url, "application/x-tar", file).await?);
    }
    if !path.join("oci-layout").is_file() {
        anyhow::bail!(
            "{} is a directory but not an OCI layout (no oci-layout file)",
            path.display()
        );
    }
    let (reader, writer) = tokio::io::duplex(1 << 20);
    let dir = path.to_path_buf();
    let packer = tokio::task::spawn_blocking(move || -> std::io::Result<()> {
        let writer = tokio_util::io::SyncIoBridge::new(writer);
        let mut tar = tar::Builder::new(writer);
        tar.follow_symlinks(false);
        tar.append_dir_all(".", &dir)?;
        tar.into_inner()?;
        Ok(())
    });
    let answer = client.post_stream(url, "application/x-tar", reader).await;
    match packer.await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Err(anyhow::anyhow!("packing {}: {e}", path.display())),
        Err(e) => return Err(anyhow::anyhow!("packing {}: {e}", path.display())),
    }
    Ok(answer?)
}
