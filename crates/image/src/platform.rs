//! Platform selection from image indexes: linux plus the host architecture in OCI's names.

use std::fmt;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Platform {
    pub os: String,
    pub architecture: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
}

impl Platform {
    /// The platform machines on this host run: always linux, architecture from the build target.
    pub fn host() -> Self {
        let architecture = oci_arch(std::env::consts::ARCH).to_string();
        // arm64 images are v8; 32-bit arm images carry a variant we cannot know at compile time.
        let variant = (architecture == "arm64").then(|| "v8".to_string());
        Platform {
            os: "linux".into(),
            architecture,
            variant,
        }
    }

    pub fn new(os: &str, architecture: &str) -> Self {
        Platform {
            os: os.into(),
            architecture: oci_arch(architecture).into(),
            variant: None,
        }
    }

    /// Whether an index entry for `candidate` can run here. A missing variant on either side
    /// matches (many indexes omit `v8` for arm64).
    pub fn matches(&self, candidate: &Platform) -> bool {
        self.os == candidate.os
            && self.architecture == oci_arch(&candidate.architecture)
            && match (&self.variant, &candidate.variant) {
                (Some(a), Some(b)) => a == b,
                _ => true,
            }
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

/// Rust's `std::env::consts::ARCH` (and a few common aliases) in OCI/GOARCH spelling.
pub fn oci_arch(arch: &str) -> &str {
    match arch {
        "x86_64" | "x86-64" => "amd64",
        "aarch64" => "arm64",
        "x86" | "i386" | "i686" => "386",
        "powerpc64" => "ppc64",
        "powerpc64le" => "ppc64le",
        "loongarch64" => "loong64",
        "riscv64gc" => "riscv64",
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_and_matching() {
        let h = Platform::host();
        assert_eq!(h.os, "linux");
        assert!(["amd64", "arm64", "386", "riscv64", "ppc64le", "s390x"]
            .contains(&h.architecture.as_str()));
        let amd = Platform::new("linux", "x86_64");
        assert_eq!(amd.architecture, "amd64");
        assert!(amd.matches(&Platform::new("linux", "amd64")));
        assert!(!amd.matches(&Platform::new("linux", "arm64")));
        assert!(!amd.matches(&Platform::new("windows", "amd64")));
        let mut arm = Platform::new("linux", "aarch64");
        arm.variant = Some("v8".into());
        assert!(arm.matches(&Platform::new("linux", "arm64")));
    }
}
