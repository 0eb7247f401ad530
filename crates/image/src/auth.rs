//! Registry credentials (`~/.docker/config.json`) and the `WWW-Authenticate` challenge/token
//! flow of the distribution spec.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use serde::Deserialize;

use crate::error::{Error, Result};

#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Credentials({}, <redacted>)", self.username)
    }
}

impl Credentials {
    pub fn basic_header(&self) -> String {
        let raw = format!("{}:{}", self.username, self.password);
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(raw)
        )
    }
}

/// `$DOCKER_CONFIG/config.json`, else `~/.docker/config.json`.
pub fn default_docker_config() -> Option<PathBuf> {
    if let Some(d) = std::env::var_os("DOCKER_CONFIG") {
        return Some(PathBuf::from(d).join("config.json"));
    }
    std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".docker/config.json"))
}

/// Credentials for `registry` (`host[:port]`, as in a reference) from a docker config file.
/// A missing file means no credentials; an unreadable or malformed one is an error, so a typo
/// does not silently turn into anonymous pulls.
pub fn docker_config_credentials(path: &Path, registry: &str) -> Result<Option<Credentials>> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io("read docker config", path)(e)),
    };
    #[derive(Deserialize)]
    struct Config {
        #[serde(default)]
        auths: BTreeMap<String, Auth>,
    }
    #[derive(Deserialize)]
    struct Auth {
        #[serde(default)]
        auth: Option<String>,
        #[serde(default)]
        username: Option<String>,
        #[serde(default)]
        password: Option<String>,
    }
    let cfg: Config = serde_json::from_slice(&bytes)
        .map_err(Error::json(format!("docker config {}", path.display())))?;
    let wanted = aliases(registry);
    for (key, a) in cfg.auths {
        if !wanted.contains(&normalise_key(&key).as_str()) {
            continue;
        }
        if let Some(enc) = a.auth.filter(|s| !s.is_empty()) {
            let raw = base64::engine::general_purpose::STANDARD
                .decode(enc.trim())
                .map_err(|e| {
                    Error::format(
                        format!("docker config {} auth for {key}", path.display()),
                        e.to_string(),
                    )
                })?;
            let raw = String::from_utf8(raw)
                .map_err(|_| Error::format(format!("docker config auth for {key}"), "not UTF-8"))?;
            let (u, p) = raw.split_once(':').ok_or_else(|| {
                Error::format(
                    format!("docker config auth for {key}"),
                    "expected user:password",
                )
            })?;
            return Ok(Some(Credentials {
                username: u.into(),
                password: p.into(),
            }));
        }
        if let (Some(u), Some(p)) = (a.username, a.password) {
            return Ok(Some(Credentials {
                username: u,
                password: p,
            }));
        }
    }
    Ok(None)
}

/// Keys may be `host:port`, `https://host/v1/` and the like: keep only the host part.
fn normalise_key(key: &str) -> String {
    let k = key.trim();
    let k = k
        .strip_prefix("https://")
        .or_else(|| k.strip_prefix("http://"))
        .unwrap_or(k);
    k.split('/').next().unwrap_or("").to_ascii_lowercase()
}

fn aliases(registry: &str) -> Vec<&str> {
    match registry {
        "docker.io" | "index.docker.io" | "registry-1.docker.io" => {
            vec!["docker.io", "index.docker.io", "registry-1.docker.io"]
        }
        r => vec![r],
    }
}

/// A parsed `WWW-Authenticate` challenge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Challenge {
    Basic,
    Bearer {
        realm: String,
        service: Option<String>,
        scope: Option<String>,
    },
}

pub fn parse_challenge(header: &str) -> Option<Challenge> {
    let (scheme, rest) = header.trim().split_once(' ').unwrap_or((header.trim(), ""));
    if scheme.eq_ignore_ascii_case("basic") {
        return Some(Challenge::Basic);
    }
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let mut params = BTreeMap::new();
    let mut s = rest;
    // key="value" pairs separated by commas; values may contain commas (scopes do).
    while let Some(eq) = s.find('=') {
        let key = s[..eq]
            .trim()
            .trim_start_matches(',')
            .trim()
            .to_ascii_lowercase();
        let after = &s[eq + 1..];
        let (value, next) = if let Some(v) = after.strip_prefix('"') {
            let end = v.find('"')?;
            (&v[..end], &v[end + 1..])
        } else {
            let end = after.find(',').unwrap_or(after.len());
            (&after[..end], &after[end..])
        };
        params.insert(key, value.to_string());
        s = next;
    }
    Some(Challenge::Bearer {
        realm: params.remove("realm")?,
        service: params.remove("service"),
        scope: params.remove("scope"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenges() {
        assert_eq!(
            parse_challenge(
                r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/busybox:pull,push""#
            ),
            Some(Challenge::Bearer {
                realm: "https://auth.docker.io/token".into(),
                service: Some("registry.docker.io".into()),
                scope: Some("repository:library/busybox:pull,push".into()),
            })
        );
        assert_eq!(
            parse_challenge(r#"Basic realm="Registry Realm""#),
            Some(Challenge::Basic)
        );
        assert_eq!(parse_challenge("Negotiate"), None);
    }

    #[test]
    fn docker_config_lookup() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("config.json");
        let enc = base64::engine::general_purpose::STANDARD.encode("hangar:pa:ss");
        std::fs::write(
            &p,
            format!(r#"{{"auths":{{"127.0.0.1:5001":{{"auth":"{enc}"}},"https://index.docker.io/v1/":{{"auth":"{enc}"}},"http://reg.example:8080/":{{"username":"u","password":"p"}}}}}}"#),
        )
        .unwrap();
        let c = docker_config_credentials(&p, "127.0.0.1:5001")
            .unwrap()
            .unwrap();
        assert_eq!(
            (c.username.as_str(), c.password.as_str()),
            ("hangar", "pa:ss")
        );
        assert!(docker_config_credentials(&p, "docker.io")
            .unwrap()
            .is_some());
        assert_eq!(
            docker_config_credentials(&p, "reg.example:8080")
                .unwrap()
                .unwrap()
                .username,
            "u"
        );
        assert!(docker_config_credentials(&p, "127.0.0.1:5000")
            .unwrap()
            .is_none());
        assert!(docker_config_credentials(&d.path().join("none"), "x")
            .unwrap()
            .is_none());
    }
}
