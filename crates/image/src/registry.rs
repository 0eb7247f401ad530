//! A small OCI distribution client on reqwest (rustls): manifests and blobs with the anonymous
//! token flow and basic credentials. `oci-client` was considered; we need our own temp-file +
//! verify + rename blob path, per-registry plain HTTP, docker config credentials and progress
//! per chunk, which left little of it to use.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Mutex;

use futures_util::StreamExt;
use reqwest::header::{HeaderValue, ACCEPT, AUTHORIZATION, WWW_AUTHENTICATE};
use reqwest::{Response, StatusCode};

use crate::auth::{self, Challenge, Credentials};
use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::oci::{Document, ACCEPT_MANIFESTS, MAX_DOCUMENT};
use crate::reference::Reference;

/// Per-registry settings the daemon fills from its config.
#[derive(Debug, Clone, Default)]
pub struct RegistryConfig {
    /// Plain HTTP (and no TLS). Registries on loopback use HTTP unless `insecure == Some(false)`.
    pub insecure: Option<bool>,
    /// Credentials overriding the docker config file.
    pub credentials: Option<Credentials>,
}

/// Settings for pulls; `Default` reads `~/.docker/config.json` and uses the host platform.
#[derive(Clone, Default)]
pub struct RegistryOptions {
    /// Keyed by registry as written in references (`host[:port]`, `docker.io`).
    pub registries: HashMap<String, RegistryConfig>,
    /// Docker config file to read credentials from; `None` = `$DOCKER_CONFIG` or `~/.docker`.
    pub docker_config: Option<PathBuf>,
    /// Skips the docker config file entirely.
    pub ignore_docker_config: bool,
}

impl std::fmt::Debug for RegistryOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryOptions")
            .field("registries", &self.registries)
            .finish()
    }
}

/// Whether `registry` (`host[:port]`) is on the loopback interface.
pub fn is_loopback(registry: &str) -> bool {
    let host = if let Some(rest) = registry.strip_prefix('[') {
        rest.split(']').next().unwrap_or("")
    } else {
        registry.rsplit_once(':').map_or(registry, |(h, p)| {
            if p.bytes().all(|b| b.is_ascii_digit()) {
                h
            } else {
                registry
            }
        })
    };
    host.eq_ignore_ascii_case("localhost")
        || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// A client for one repository on one registry.
pub struct RepoClient {
    http: reqwest::Client,
    registry: String,
    base: String,
    repository: String,
    credentials: Option<Credentials>,
    /// `Authorization` header value once a challenge has been answered.
    authorization: Mutex<Option<HeaderValue>>,
}

impl RepoClient {
    pub fn new(reference: &Reference, opts: &RegistryOptions) -> Result<Self> {
        let registry = reference.registry.clone();
        let cfg = opts.registries.get(&registry).cloned().unwrap_or_default();
        let plain = cfg.insecure.unwrap_or_else(|| is_loopback(&registry));
        let scheme = if plain { "http" } else { "https" };
        let base = format!("{scheme}://{}", reference.registry_host());
        let credentials = match cfg.credentials {
            Some(c) => Some(c),
            None if opts.ignore_docker_config => None,
            None => match opts
                .docker_config
                .clone()
                .or_else(auth::default_docker_config)
            {
                Some(p) => auth::docker_config_credentials(&p, &registry)?,
                None => None,
            },
        };
        let http = reqwest::Client::builder()
            .user_agent(concat!("hangar/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(std::time::Duration::from_secs(30))
            .build()
            .map_err(|e| Error::Http {
                url: base.clone(),
                source: e,
            })?;
        Ok(RepoClient {
            http,
            registry,
            base,
            repository: reference.repository.clone(),
            credentials,
            authorization: Mutex::new(None),
        })
    }

    fn reg_err(&self, message: impl Into<String>) -> Error {
        Error::Registry {
            registry: self.registry.clone(),
            message: message.into(),
        }
    }

    /// GET with the current authorization; on 401 answers the challenge once and retries.
    async fn get(&self, path: &str, accept: Option<&str>) -> Result<Response> {
        let url = format!("{}/v2/{}/{path}", self.base, self.repository);
        for attempt in 0..2 {
            let mut req = self.http.get(&url);
            if let Some(a) = accept {
                req = req.header(ACCEPT, a);
            }
            let auth = self
                .authorization
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone();
            if let Some(h) = auth {
                req = req.header(AUTHORIZATION, h);
            }
            let resp = req.send().await.map_err(|e| Error::Http {
                url: url.clone(),
                source: e,
            })?;
            if resp.status() == StatusCode::UNAUTHORIZED && attempt == 0 {
                let challenge = resp
                    .headers()
                    .get(WWW_AUTHENTICATE)
                    .and_then(|h| h.to_str().ok())
                    .and_then(auth::parse_challenge)
                    .ok_or_else(|| Error::Auth {
                        registry: self.registry.clone(),
                        message: "401 without a usable WWW-Authenticate challenge".into(),
                    })?;
                self.answer(challenge).await?;
                continue;
            }
            if resp.status() == StatusCode::UNAUTHORIZED || resp.status() == StatusCode::FORBIDDEN {
                return Err(Error::Auth {
                    registry: self.registry.clone(),
                    message: format!(
                        "{} for {url}{}",
                        resp.status(),
                        if self.credentials.is_some() {
                            ""
                        } else {
                            " (no credentials configured)"
                        }
                    ),
                });
            }
            if resp.status() == StatusCode::NOT_FOUND {
                return Err(Error::NotFound(format!(
                    "{}/{} {path}",
                    self.registry, self.repository
                )));
            }
            if !resp.status().is_success() {
                let status = resp.status();
                let body = resp.text().await.unwrap_or_default();
                return Err(self.reg_err(format!(
                    "{status} for {url}: {}",
                    body.chars().take(300).collect::<String>()
                )));
            }
            return Ok(resp);
        }
        Err(self.reg_err("authentication loop"))
    }

    async fn answer(&self, c: Challenge) -> Result<()> {
        let value = match c {
            Challenge::Basic => {
                let creds = self.credentials.as_ref().ok_or_else(|| Error::Auth {
                    registry: self.registry.clone(),
                    message: "registry wants basic credentials; none configured".into(),
                })?;
                creds.basic_header()
            }
            Challenge::Bearer {
                realm,
                service,
                scope,
            } => {
                let scope = scope.unwrap_or_else(|| format!("repository:{}:pull", self.repository));
                let mut req = self.http.get(&realm).query(&[("scope", scope.as_str())]);
                if let Some(s) = &service {
                    req = req.query(&[("service", s.as_str())]);
                }
                if let Some(c) = &self.credentials {
                    req = req.basic_auth(&c.username, Some(&c.password));
                }
                let resp = req.send().await.map_err(|e| Error::Http {
                    url: realm.clone(),
                    source: e,
                })?;
                if !resp.status().is_success() {
                    return Err(Error::Auth {
                        registry: self.registry.clone(),
                        message: format!("token endpoint {realm}: {}", resp.status()),
                    });
                }
                #[derive(serde::Deserialize)]
                struct Token {
                    #[serde(default)]
                    token: Option<String>,
                    #[serde(default)]
                    access_token: Option<String>,
                }
                let bytes = resp.bytes().await.map_err(|e| Error::Http {
                    url: realm.clone(),
                    source: e,
                })?;
                let t: Token = serde_json::from_slice(&bytes)
                    .map_err(Error::json(format!("token from {realm}")))?;
                let t = t.token.or(t.access_token).ok_or_else(|| Error::Auth {
                    registry: self.registry.clone(),
                    message: "token response without a token".into(),
                })?;
                format!("Bearer {t}")
            }
        };
        let h = HeaderValue::from_str(&value).map_err(|_| Error::Auth {
            registry: self.registry.clone(),
            message: "token is not a valid header value".into(),
        })?;
        *self.authorization.lock().unwrap_or_else(|e| e.into_inner()) = Some(h);
        Ok(())
    }

    /// Fetches a manifest or index by tag or digest. The returned digest is computed from the
    /// bytes; when fetched by digest it must match, and a `Docker-Content-Digest` header that
    /// disagrees is refused too.
    pub async fn manifest(&self, tag_or_digest: &str) -> Result<(Digest, Vec<u8>, Document)> {
        let resp = self
            .get(
                &format!("manifests/{tag_or_digest}"),
                Some(ACCEPT_MANIFESTS),
            )
            .await?;
        let ct = resp
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let header_digest = resp
            .headers()
            .get("docker-content-digest")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let body = self.read_limited(resp).await?;
        let actual = Digest::of(&body);
        let what = format!(
            "manifest {}/{}:{tag_or_digest}",
            self.registry, self.repository
        );
        if tag_or_digest.starts_with("sha256:") {
            Digest::parse(tag_or_digest)?.verify(&actual, &what)?;
        }
        if let Some(h) = header_digest.filter(|h| h.starts_with("sha256:")) {
            Digest::parse(&h)?.verify(&actual, &format!("{what} (Docker-Content-Digest)"))?;
        }
        let doc = Document::parse(&body, ct.as_deref(), &what)?;
        Ok((actual, body, doc))
    }

    async fn read_limited(&self, resp: Response) -> Result<Vec<u8>> {
        let url = resp.url().to_string();
        let mut body = Vec::new();
        let mut stream = resp.bytes_stream();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| Error::Http {
                url: url.clone(),
                source: e,
            })?;
            body.extend_from_slice(&chunk);
            if body.len() as u64 > MAX_DOCUMENT {
                return Err(
                    self.reg_err(format!("{url}: document larger than {MAX_DOCUMENT} bytes"))
                );
            }
        }
        Ok(body)
    }

    /// Fetches a small blob (a config) into memory, verified.
    pub async fn blob_bytes(&self, digest: &Digest) -> Result<Vec<u8>> {
        let resp = self.get(&format!("blobs/{digest}"), None).await?;
        let body = self.read_limited(resp).await?;
        digest.verify(
            &Digest::of(&body),
            &format!("blob {digest} from {}", self.registry),
        )?;
        Ok(body)
    }

    /// Streams a blob, calling `sink` with each chunk.
    pub async fn blob_stream(
        &self,
        digest: &Digest,
        mut sink: impl FnMut(&[u8]) -> Result<()>,
    ) -> Result<()> {
        let resp = self.get(&format!("blobs/{digest}"), None).await?;
        let url = resp.url().to_string();
        let mut stream = resp.bytes_stream();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| Error::Http {
                url: url.clone(),
                source: e,
            })?;
            sink(&chunk)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_detection() {
        for r in [
            "127.0.0.1:5000",
            "localhost",
            "localhost:5000",
            "[::1]:5000",
            "127.1.2.3",
        ] {
            assert!(is_loopback(r), "{r}");
        }
        for r in [
            "docker.io",
            "10.0.0.1:5000",
            "[2001:db8::1]:5000",
            "localhost.example.com",
        ] {
            assert!(!is_loopback(r), "{r}");
        }
    }
}
