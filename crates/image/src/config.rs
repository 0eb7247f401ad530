//! The parts of an image config (`application/vnd.oci.image.config.v1+json`) the runtime uses.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::digest::Digest;
use crate::error::{Error, Result};

/// What a machine's init needs from the image; absent fields are empty.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageConfig {
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    /// `KEY=value` strings in image order.
    pub env: Vec<String>,
    pub working_dir: Option<String>,
    pub user: Option<String>,
    pub stop_signal: Option<String>,
    /// `"80/tcp"`-style keys, sorted.
    pub exposed_ports: Vec<String>,
    pub labels: BTreeMap<String, String>,
    pub os: String,
    pub architecture: String,
    /// Uncompressed layer digests, bottom first.
    pub diff_ids: Vec<Digest>,
}

#[derive(Deserialize)]
struct Raw {
    #[serde(default)]
    architecture: String,
    #[serde(default)]
    os: String,
    #[serde(default)]
    config: Option<RawConfig>,
    rootfs: RawRootfs,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
struct RawConfig {
    #[serde(default)]
    entrypoint: Option<Vec<String>>,
    #[serde(default)]
    cmd: Option<Vec<String>>,
    #[serde(default)]
    env: Option<Vec<String>>,
    #[serde(default)]
    working_dir: Option<String>,
    #[serde(default)]
    user: Option<String>,
    #[serde(default)]
    stop_signal: Option<String>,
    #[serde(default)]
    exposed_ports: Option<BTreeMap<String, serde_json::Value>>,
    #[serde(default)]
    labels: Option<BTreeMap<String, String>>,
}

#[derive(Deserialize)]
struct RawRootfs {
    #[serde(rename = "type")]
    kind: String,
    diff_ids: Vec<Digest>,
}

impl ImageConfig {
    pub fn parse(bytes: &[u8], what: &str) -> Result<Self> {
        let raw: Raw = serde_json::from_slice(bytes).map_err(Error::json(what))?;
        if raw.rootfs.kind != "layers" {
            return Err(Error::format(
                what,
                format!("rootfs.type {:?}", raw.rootfs.kind),
            ));
        }
        let c = raw.config.unwrap_or_default();
        let nonempty = |s: Option<String>| s.filter(|s| !s.is_empty());
        Ok(ImageConfig {
            entrypoint: c.entrypoint.unwrap_or_default(),
            cmd: c.cmd.unwrap_or_default(),
            env: c.env.unwrap_or_default(),
            working_dir: nonempty(c.working_dir),
            user: nonempty(c.user),
            stop_signal: nonempty(c.stop_signal),
            exposed_ports: c.exposed_ports.unwrap_or_default().into_keys().collect(),
            labels: c.labels.unwrap_or_default(),
            os: raw.os,
            architecture: raw.architecture,
            diff_ids: raw.rootfs.diff_ids,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_docker_style_config() {
        let j = br#"{"architecture":"amd64","os":"linux","config":{"Entrypoint":["/bin/sh","-c"],
          "Cmd":null,"Env":["PATH=/bin","A=b=c"],"WorkingDir":"/www","User":"app",
          "StopSignal":"SIGQUIT","ExposedPorts":{"8080/tcp":{},"53/udp":{}},
          "Labels":{"org.x":"y"}},
          "rootfs":{"type":"layers","diff_ids":["sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"]}}"#;
        let c = ImageConfig::parse(j, "config").unwrap();
        assert_eq!(c.entrypoint, vec!["/bin/sh", "-c"]);
        assert!(c.cmd.is_empty());
        assert_eq!(c.env[1], "A=b=c");
        assert_eq!(c.working_dir.as_deref(), Some("/www"));
        assert_eq!(c.user.as_deref(), Some("app"));
        assert_eq!(c.stop_signal.as_deref(), Some("SIGQUIT"));
        assert_eq!(c.exposed_ports, vec!["53/udp", "8080/tcp"]);
        assert_eq!(c.labels["org.x"], "y");
        assert_eq!(c.diff_ids.len(), 1);
        assert!(ImageConfig::parse(b"{}", "config").is_err());
    }
}
