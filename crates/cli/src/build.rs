//! Image builds for `hangar machine run .` and `hangar deploy`, with Debian's buildah (not a
//! home-made builder; docs/decisions.md): `buildah bud` builds the Dockerfile in its own storage
//! under Hangar's cache dir, `buildah push` writes an OCI archive, and the archive is imported
//! into the daemon's image store (the same upload `hangar image import` makes) as
//! `<app>:deployment-<ULID>`.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};
use clap::Args;
use hangar_client::Client;

/// flyctl's build flags.
#[derive(Args, Debug, Clone, Default, PartialEq, Eq)]
pub struct BuildFlags {
    /// Dockerfile to build (default: ./Dockerfile); implies building the working directory
    #[arg(long, value_name = "PATH")]
    pub dockerfile: Option<String>,
    /// Build-time variable (repeatable): --build-arg NAME=VALUE
    #[arg(long = "build-arg", value_name = "NAME=VALUE")]
    pub build_args: Vec<String>,
    /// Build only up to this stage of a multi-stage Dockerfile
    #[arg(long, value_name = "STAGE")]
    pub build_target: Option<String>,
    /// Tag the built image <app>:LABEL instead of <app>:deployment-<ULID>
    #[arg(long, value_name = "LABEL")]
    pub image_label: Option<String>,
    /// Do not use the build cache
    #[arg(long)]
    pub no_build_cache: bool,
    /// A secret the Dockerfile mounts with RUN --mount=type=secret,id=NAME (repeatable): NAME=VALUE
    #[arg(long = "build-secret", value_name = "NAME=VALUE")]
    pub build_secrets: Vec<String>,
}

/// What to build: the context dir and the Dockerfile in it.
pub struct BuildSource {
    pub context: PathBuf,
    pub dockerfile: PathBuf,
}

/// Whether an image argument (`.`, `./dir`, `/abs/dir`) or `--dockerfile` asks for a build,
/// and of what (flyctl's rule: a path-like image, or any --dockerfile, means build).
pub fn build_source(image: Option<&str>, flags: &BuildFlags) -> Result<Option<BuildSource>> {
    let path_like = image.filter(|i| i.starts_with('.') || i.starts_with('/'));
    if path_like.is_none() && flags.dockerfile.is_none() {
        return Ok(None);
    }
    let context = PathBuf::from(path_like.unwrap_or("."));
    if !context.is_dir() {
        bail!("build context {} is not a directory", context.display());
    }
    let dockerfile = match &flags.dockerfile {
        Some(d) => PathBuf::from(d),
        None => ["Dockerfile", "dockerfile"]
            .iter()
            .map(|n| context.join(n))
            .find(|p| p.is_file())
            .unwrap_or_else(|| context.join("Dockerfile")),
    };
    if !dockerfile.is_file() {
        bail!(
            "no Dockerfile at {} (pass --dockerfile PATH, or an image to run)",
            dockerfile.display()
        );
    }
    Ok(Some(BuildSource {
        context,
        dockerfile,
    }))
}

fn split_pair<'a>(flag: &str, pair: &'a str) -> Result<(&'a str, &'a str)> {
    pair.split_once('=')
        .filter(|(k, _)| !k.is_empty())
        .with_context(|| format!("invalid {flag} {pair:?}: expected NAME=VALUE"))
}

/// buildah's storage: Hangar's own (the host's podman/buildah images stay apart), kept between
/// builds for the layer cache.
fn storage_dirs() -> (PathBuf, PathBuf) {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return (
            PathBuf::from("/var/cache/hangar/buildah"),
            PathBuf::from("/run/hangar/buildah"),
        );
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    let run = std::env::var_os("XDG_RUNTIME_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    (
        home.join(".cache/hangar/buildah"),
        run.join("hangar-buildah"),
    )
}

/// The registries the Dockerfile's `FROM` lines name that are on loopback (the daemon pulls
/// from those over plain HTTP; buildah must too).
fn loopback_registries(dockerfile: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for line in dockerfile.lines() {
        let mut words = line.split_whitespace();
        if !words.next().is_some_and(|w| w.eq_ignore_ascii_case("FROM")) {
            continue;
        }
        let Some(image) = words.find(|w| !w.starts_with("--")) else {
            continue;
        };
        let Some((host, _)) = image.split_once('/') else {
            continue;
        };
        let name = host.rsplit_once(':').map_or(host, |(h, _)| h);
        let loopback = name == "localhost" || name.starts_with("127.") || name == "[::1]";
        if loopback && !out.iter().any(|h| h == host) {
            out.push(host.to_string());
        }
    }
    out
}

/// The images the Dockerfile's `FROM` lines name: not earlier stages, not `scratch`, not ones
/// built from build arguments.
fn from_images(dockerfile: &str) -> Vec<String> {
    let mut stages: Vec<String> = Vec::new();
    let mut out: Vec<String> = Vec::new();
    for line in dockerfile.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        if !words
            .first()
            .is_some_and(|w| w.eq_ignore_ascii_case("FROM"))
        {
            continue;
        }
        let rest: Vec<&str> = words[1..]
            .iter()
            .copied()
            .filter(|w| !w.starts_with("--"))
            .collect();
        let Some(image) = rest.first() else { continue };
        let lower = image.to_ascii_lowercase();
        // An earlier stage, `scratch`, or a name made of build arguments: nothing to load.
        let skip = lower == "scratch" || image.contains('$') || stages.contains(&lower);
        if let Some(i) = rest.iter().position(|w| w.eq_ignore_ascii_case("AS")) {
            if let Some(stage) = rest.get(i + 1) {
                stages.push(stage.to_ascii_lowercase());
            }
        }
        if skip {
            continue;
        }
        if !out.iter().any(|o| o == image) {
            out.push(image.to_string());
        }
    }
    out
}

/// Gives buildah the `FROM` images Hangar's store has (under their full names), so a build
/// can start from an image that is in no registry buildah reaches; images the store lacks are
/// pulled by buildah as usual.
async fn preload_from_store(
    client: &Client,
    images: &[String],
    work: &Path,
    (root, runroot): (&Path, &Path),
) -> Result<()> {
    for image in images {
        let Ok(reference) = hangar_image::Reference::parse(image) else {
            continue;
        };
        let full = reference.to_string();
        let found = client
            .get(format!(
                "/hangar/v1/images/inspect?ref={}",
                hangar_client::encode(&full)
            ))
            .send_raw()
            .await
            .is_ok_and(|r| r.status.is_success());
        if !found {
            continue;
        }
        let archive = work.join("from.tar");
        let mut bytes = Vec::new();
        client
            .get_streaming(
                &format!(
                    "/hangar/v1/images/export?ref={}",
                    hangar_client::encode(&full)
                ),
                |chunk| {
                    bytes.extend_from_slice(chunk);
                    true
                },
            )
            .await
            .with_context(|| format!("exporting {full} from the image store"))?;
        std::fs::write(&archive, &bytes).context("writing the exported image")?;
        let out = buildah(root, runroot)
            .args(["pull", "--quiet"])
            .arg(format!("oci-archive:{}:image", archive.display()))
            .output()
            .context("running buildah pull")?;
        if !out.status.success() {
            bail!(
                "loading {full} from the image store into the build failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        let id = String::from_utf8_lossy(&out.stdout).trim().to_string();
        let tagged = buildah(root, runroot)
            .arg("tag")
            .arg(&id)
            .arg(&full)
            .status()
            .context("running buildah tag")?;
        if !tagged.success() {
            bail!("tagging {full} for the build failed");
        }
        let _ = std::fs::remove_file(&archive);
        eprintln!("==> Using {full} from the image store");
    }
    Ok(())
}

/// A registries.conf for this build: Docker Hub for short names (no prompts), and the
/// Dockerfile's loopback registries over plain HTTP.
fn registries_conf(insecure: &[String]) -> String {
    let mut conf = String::from(
        "unqualified-search-registries = [\"docker.io\"]\nshort-name-mode = \"permissive\"\n",
    );
    for host in insecure {
        conf.push_str(&format!(
            "\n[[registry]]\nlocation = \"{host}\"\ninsecure = true\n"
        ));
    }
    conf
}

/// The tag a build gets: `<app>:deployment-<ULID>`, or `<app>:<label>`.
pub fn build_tag(app: &str, label: Option<&str>) -> String {
    match label.filter(|l| !l.is_empty()) {
        Some(l) => format!("{app}:{l}"),
        None => format!("{app}:deployment-{}", hangar_api::ids::new_ulid()),
    }
}

/// Holds buildah's layer cache at `root` for this build until dropped (an flock, released
/// with the file even if the process dies).
fn lock_cache(root: &Path) -> Result<std::fs::File> {
    use std::os::fd::AsRawFd;
    std::fs::create_dir_all(root).with_context(|| format!("creating {}", root.display()))?;
    let path = root.join(".hangar-build.lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    // SAFETY: flock on an fd this function owns.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        eprintln!("==> Waiting for another build on this host to finish");
        // SAFETY: as above.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } != 0 {
            return Err(std::io::Error::last_os_error())
                .with_context(|| format!("locking {}", path.display()));
        }
    }
    Ok(file)
}

fn buildah(root: &Path, runroot: &Path) -> Command {
    let mut cmd = Command::new("buildah");
    cmd.arg("--root").arg(root).arg("--runroot").arg(runroot);
    cmd
}

/// Builds `source` and imports the image into the daemon's store; returns its reference.
pub async fn build_image(
    client: &Client,
    app: &str,
    source: &BuildSource,
    flags: &BuildFlags,
) -> Result<String> {
    if Command::new("buildah")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_err()
    {
        bail!("building an image needs buildah on this host (apt-get install buildah), or pass a prebuilt image");
    }
    let tag = build_tag(app, flags.image_label.as_deref());
    let work = tempfile::Builder::new()
        .prefix("hangar-build-")
        .tempdir()
        .context("creating a temporary build dir")?;
    let text = std::fs::read_to_string(&source.dockerfile)
        .with_context(|| format!("reading {}", source.dockerfile.display()))?;
    let conf = work.path().join("registries.conf");
    std::fs::write(&conf, registries_conf(&loopback_registries(&text)))
        .context("writing registries.conf")?;
    let (root, runroot) = storage_dirs();
    // One build at a time per layer cache: buildah's cache lookup fails ("getting top layer
    // info: layer not known") when another build removes its image meanwhile.
    let _cache = lock_cache(&root)?;
    preload_from_store(client, &from_images(&text), work.path(), (&root, &runroot)).await?;

    let mut bud = buildah(&root, &runroot);
    bud.env("CONTAINERS_REGISTRIES_CONF", &conf)
        .arg("bud")
        // No OCI runtime needed for RUN steps (crun refuses hybrid cgroup hosts).
        .arg("--isolation=chroot")
        .arg("--format=oci")
        .arg("--layers")
        // A failed step's container goes too (buildah would keep it, and its mounts, otherwise).
        .arg("--force-rm")
        .arg("-f")
        .arg(&source.dockerfile)
        .arg("-t")
        .arg(&tag);
    for pair in &flags.build_args {
        split_pair("--build-arg", pair)?;
        bud.arg("--build-arg").arg(pair);
    }
    if let Some(t) = &flags.build_target {
        bud.arg("--target").arg(t);
    }
    if flags.no_build_cache {
        bud.arg("--no-cache");
    }
    for (i, pair) in flags.build_secrets.iter().enumerate() {
        let (name, value) = split_pair("--build-secret", pair)?;
        let file = work.path().join(format!("secret-{i}"));
        {
            use std::io::Write;
            use std::os::unix::fs::OpenOptionsExt;
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&file)
                .context("writing a build secret")?;
            f.write_all(value.as_bytes())
                .context("writing a build secret")?;
        }
        bud.arg("--secret")
            .arg(format!("id={name},src={}", file.display()));
    }
    bud.arg(&source.context);
    eprintln!("==> Building {tag} from {}", source.dockerfile.display());
    // Build output is progress: it goes to stderr with the rest of it, keeping stdout for
    // what the command prints.
    let status = bud
        .stdout(Stdio::from(std::io::stderr()))
        .status()
        .context("running buildah bud")?;
    if !status.success() {
        bail!("the build failed (buildah bud exited with {status}); see the step's error above");
    }

    let archive = work.path().join("image.tar");
    let out = buildah(&root, &runroot)
        .arg("push")
        .arg("--quiet")
        .arg(&tag)
        .arg(format!("oci-archive:{}:{tag}", archive.display()))
        .output()
        .context("running buildah push")?;
    if !out.status.success() {
        bail!(
            "exporting the built image failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    // The image lives in the daemon's store from here; buildah keeps only its layer cache.
    let _ = buildah(&root, &runroot)
        .args(["rmi", "--force"])
        .arg(&tag)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    eprintln!("==> Importing {tag} into the image store");
    let url = format!(
        "/hangar/v1/images/import?tag={}",
        hangar_client::encode(&tag)
    );
    let raw = crate::image::upload(client, &url, &archive).await?;
    if !raw.status.is_success() {
        return Err(hangar_client::ClientError::from_response(raw.status, &raw.body).into());
    }
    eprintln!("==> Built {tag}");
    Ok(tag)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_registries_are_found_in_from_lines() {
        let df = "FROM 127.0.0.1:5000/hangar/busybox:latest AS base\n\
                  from --platform=linux/amd64 localhost:5001/x\n\
                  FROM docker.io/library/alpine\nFROM busybox\nRUN echo FROM 127.0.0.2:1/y\n";
        assert_eq!(
            loopback_registries(df),
            ["127.0.0.1:5000".to_string(), "localhost:5001".to_string()]
        );
        let conf = registries_conf(&loopback_registries(df));
        assert!(
            conf.contains("location = \"127.0.0.1:5000\"\ninsecure = true"),
            "{conf}"
        );
    }

    #[test]
    fn from_lines_name_images_not_stages() {
        let df = "FROM golang:1.22 AS build\nRUN go build\nFROM build AS again\n\
                  FROM scratch\nFROM ${BASE}\nFROM --platform=x 127.0.0.1:5000/a/b:1\nFROM golang:1.22\n";
        assert_eq!(from_images(df), ["golang:1.22", "127.0.0.1:5000/a/b:1"]);
    }

    #[test]
    fn what_asks_for_a_build() {
        let none = BuildFlags::default();
        assert!(build_source(Some("nginx:latest"), &none).unwrap().is_none());
        assert!(build_source(None, &none).unwrap().is_none());
        let dir = tempfile::tempdir().unwrap();
        let image = dir.path().display().to_string();
        let e = build_source(Some(&image), &none).err().unwrap().to_string();
        assert!(e.contains("no Dockerfile"), "{e}");
        std::fs::write(dir.path().join("Dockerfile"), "FROM busybox\n").unwrap();
        let s = build_source(Some(&image), &none).unwrap().unwrap();
        assert_eq!(s.dockerfile, dir.path().join("Dockerfile"));
        assert!(build_tag("web", None).starts_with("web:deployment-"));
        assert_eq!(build_tag("web", Some("v2")), "web:v2");
    }
}
