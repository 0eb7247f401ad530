//! Image references with Docker's normalisation: `nginx` is `docker.io/library/nginx:latest`.

use std::fmt;

pub const DEFAULT_REGISTRY: &str = "docker.io";
/// Where Docker Hub's registry API actually lives.
pub const DOCKER_HUB_HOST: &str = "registry-1.docker.io";
pub const DEFAULT_TAG: &str = "latest";

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Reference {
    /// Registry host, with port if any (`docker.io`, `localhost:5000`).
    pub registry: String,
    /// Repository path (`library/nginx`).
    pub repository: String,
    /// Tag; `latest` when neither tag nor digest was given.
    pub tag: Option<String>,
    /// `algorithm:hex`.
    pub digest: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid image reference {input:?}: {reason}")]
pub struct ReferenceError {
    pub input: String,
    pub reason: String,
}

impl Reference {
    pub fn parse(input: &str) -> Result<Self, ReferenceError> {
        let err = |reason: &str| ReferenceError {
            input: input.to_string(),
            reason: reason.to_string(),
        };
        if input.is_empty() {
            return Err(err("empty reference"));
        }
        if input.len() > 4096 || input.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(err("references cannot contain whitespace"));
        }
        let (name_tag, digest) = match input.split_once('@') {
            Some((n, d)) => (n, Some(d)),
            None => (input, None),
        };
        if let Some(d) = digest {
            check_digest(d).map_err(|r| err(&r))?;
        }
        // A tag is what follows the last ':' after the last '/' (a ':' before it is a port).
        let last_slash = name_tag.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match name_tag[last_slash..].rfind(':') {
            Some(i) => (
                &name_tag[..last_slash + i],
                Some(&name_tag[last_slash + i + 1..]),
            ),
            None => (name_tag, None),
        };
        if let Some(t) = tag {
            let ok = !t.is_empty()
                && t.len() <= 128
                && t.bytes()
                    .next()
                    .is_some_and(|b| b.is_ascii_alphanumeric() || b == b'_')
                && t.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.' || b == b'-');
            if !ok {
                return Err(err("invalid tag"));
            }
        }
        let (registry, path) = match name.split_once('/') {
            Some((first, rest))
                if first.contains('.')
                    || first.contains(':')
                    || first == "localhost"
                    || first.bytes().any(|b| b.is_ascii_uppercase()) =>
            {
                (first.to_string(), rest.to_string())
            }
            _ => (DEFAULT_REGISTRY.to_string(), name.to_string()),
        };
        check_registry(&registry).map_err(|r| err(&r))?;
        let registry = if registry == "index.docker.io" || registry == DOCKER_HUB_HOST {
            DEFAULT_REGISTRY.to_string()
        } else {
            registry
        };
        if path.is_empty() {
            return Err(err("missing repository name"));
        }
        for component in path.split('/') {
            if !valid_component(component) {
                return Err(err(
                    "repository names use lowercase letters, digits and separators (. _ __ -)",
                ));
            }
        }
        let repository = if registry == DEFAULT_REGISTRY && !path.contains('/') {
            format!("library/{path}")
        } else {
            path
        };
        let tag = match (tag, digest) {
            (Some(t), _) => Some(t.to_string()),
            (None, None) => Some(DEFAULT_TAG.to_string()),
            (None, Some(_)) => None,
        };
        Ok(Reference {
            registry,
            repository,
            tag,
            digest: digest.map(str::to_string),
        })
    }

    /// Host to contact for the registry API.
    pub fn registry_host(&self) -> &str {
        if self.registry == DEFAULT_REGISTRY {
            DOCKER_HUB_HOST
        } else {
            &self.registry
        }
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

fn valid_component(c: &str) -> bool {
    // [a-z0-9]+ ((\.|_|__|-+)[a-z0-9]+)*
    if c.is_empty() || c.len() > 255 {
        return false;
    }
    let b = c.as_bytes();
    let alnum = |x: u8| x.is_ascii_lowercase() || x.is_ascii_digit();
    if !alnum(b[0]) || !alnum(b[b.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        if alnum(b[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < b.len() && !alnum(b[i]) {
            i += 1;
        }
        let sep = &c[start..i];
        let ok = sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|x| x == b'-');
        if !ok {
            return false;
        }
    }
    true
}

fn check_registry(r: &str) -> Result<(), String> {
    // An IPv6 host is bracketed: `[::1]:5000`.
    if let Some(rest) = r.strip_prefix('[') {
        let Some((ip, after)) = rest.split_once(']') else {
            return Err("invalid registry host".into());
        };
        if ip.is_empty() || !ip.bytes().all(|b| b.is_ascii_hexdigit() || b == b':') {
            return Err("invalid registry host".into());
        }
        return match after {
            "" => Ok(()),
            p if p
                .strip_prefix(':')
                .is_some_and(|p| p.parse::<u16>().is_ok()) =>
            {
                Ok(())
            }
            _ => Err("invalid registry port".into()),
        };
    }
    let (host, port) = match r.rsplit_once(':') {
        Some((h, p)) => (h, Some(p)),
        None => (r, None),
    };
    if host.is_empty()
        || !host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')
    {
        return Err("invalid registry host".into());
    }
    if let Some(p) = port {
        if p.parse::<u16>().is_err() {
            return Err("invalid registry port".into());
        }
    }
    Ok(())
}

fn check_digest(d: &str) -> Result<(), String> {
    let Some((algo, hex)) = d.split_once(':') else {
        return Err("digest must be algorithm:hex".into());
    };
    let len = match algo {
        "sha256" => 64,
        "sha384" => 96,
        "sha512" => 128,
        _ => return Err(format!("unsupported digest algorithm {algo:?}")),
    };
    if hex.len() != len
        || !hex
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        return Err("digest has the wrong length or is not lowercase hex".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn test_docker_normalisation() {
        let cases = [
            ("nginx", "docker.io/library/nginx:latest"),
            ("nginx:1.27", "docker.io/library/nginx:1.27"),
            ("user/app", "docker.io/user/app:latest"),
            ("localhost:5000/x", "localhost:5000/x:latest"),
            ("localhost/x:v1", "localhost/x:v1"),
            ("127.0.0.1:5000/a/b/c:t", "127.0.0.1:5000/a/b/c:t"),
            (
                "registry-1.docker.io/library/ubuntu:latest",
                "docker.io/library/ubuntu:latest",
            ),
            ("alpine", "docker.io/library/alpine:latest"),
            (
                "docker.io/library/nginx:latest",
                "docker.io/library/nginx:latest",
            ),
            ("docker.io/nginx", "docker.io/library/nginx:latest"),
            ("index.docker.io/user/app:v2", "docker.io/user/app:v2"),
            ("[::1]:5000/app:v1", "[::1]:5000/app:v1"),
            ("[fd00::1]/app", "[fd00::1]/app:latest"),
            ("Registry.Example/app", "Registry.Example/app:latest"),
            ("MyHost/app", "MyHost/app:latest"),
            (
                "a/b__c/d-e.f--g:Tag_1.0-x",
                "docker.io/a/b__c/d-e.f--g:Tag_1.0-x",
            ),
        ];
        for (input, want) in cases {
            assert_eq!(
                Reference::parse(input).unwrap().to_string(),
                want,
                "{input}"
            );
        }
        let r = Reference::parse(&format!("repo@{D}")).unwrap();
        assert_eq!(r.tag, None);
        assert_eq!(r.to_string(), format!("docker.io/library/repo@{D}"));
        let sha384 = format!("sha384:{}", "ab".repeat(48));
        assert!(Reference::parse(&format!("repo@{sha384}")).is_ok());
        let r = Reference::parse(&format!("repo:tag@{D}")).unwrap();
        assert_eq!(r.tag.as_deref(), Some("tag"));
        assert_eq!(r.registry_host(), DOCKER_HUB_HOST);
    }

    #[test]
    fn test_malformed() {
        for bad in [
            "",
            "UPPER",
            "a b",
            "repo:",
            "repo@sha256:abc",
            "repo@md5:0123",
            ":tag",
            "a//b",
            "-a",
            "host:99999/x",
            "repo:-bad",
            "[::1/app",
            "[]:5000/app",
            "[::1]:port/app",
            "[::1]x/app",
            "a___b",
        ] {
            assert!(Reference::parse(bad).is_err(), "{bad:?} should fail");
        }
    }
}
