//! Test helpers: raw tar writing (so hostile headers can be made), gzip, OCI layouts.
#![allow(dead_code)]

use std::io::Write;
use std::path::{Path, PathBuf};

use serde_json::json;
use sha2::{Digest as _, Sha256};

pub fn sha(b: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(b)))
}

pub fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// A tar written header by header, with nothing validated.
#[derive(Default)]
pub struct RawTar {
    pub buf: Vec<u8>,
}

pub struct H<'a> {
    pub name: &'a [u8],
    pub kind: u8,
    pub size: u64,
    pub link: &'a [u8],
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime: u64,
    pub dev: (u32, u32),
}

impl Default for H<'_> {
    fn default() -> Self {
        H {
            name: b"",
            kind: b'0',
            size: 0,
            link: b"",
            mode: 0o644,
            uid: 0,
            gid: 0,
            mtime: 1_600_000_000,
            dev: (0, 0),
        }
    }
}

fn octal(field: &mut [u8], v: u64) {
    let s = format!("{:0width$o}\0", v, width = field.len() - 1);
    field.copy_from_slice(s.as_bytes());
}

pub fn header(h: &H) -> [u8; 512] {
    let mut b = [0u8; 512];
    b[..h.name.len()].copy_from_slice(h.name);
    octal(&mut b[100..108], h.mode as u64);
    octal(&mut b[108..116], h.uid as u64);
    octal(&mut b[116..124], h.gid as u64);
    octal(&mut b[124..136], h.size);
    octal(&mut b[136..148], h.mtime);
    b[156] = h.kind;
    b[157..157 + h.link.len()].copy_from_slice(h.link);
    b[257..263].copy_from_slice(b"ustar\0");
    b[263..265].copy_from_slice(b"00");
    octal(&mut b[329..337], h.dev.0 as u64);
    octal(&mut b[337..345], h.dev.1 as u64);
    checksum(&mut b);
    b
}

pub fn checksum(b: &mut [u8; 512]) {
    b[148..156].copy_from_slice(b"        ");
    let sum: u32 = b.iter().map(|&x| x as u32).sum();
    let s = format!("{sum:06o}\0 ");
    b[148..156].copy_from_slice(s.as_bytes());
}

impl RawTar {
    pub fn new() -> Self {
        Self::default()
    }
    pub fn raw(&mut self, hdr: [u8; 512], data: &[u8]) -> &mut Self {
        self.buf.extend_from_slice(&hdr);
        self.buf.extend_from_slice(data);
        let pad = (512 - data.len() % 512) % 512;
        self.buf.extend(std::iter::repeat_n(0u8, pad));
        self
    }
    pub fn entry(&mut self, h: H, data: &[u8]) -> &mut Self {
        let hdr = header(&H {
            size: data.len() as u64,
            ..h
        });
        self.raw(hdr, data)
    }
    pub fn file(&mut self, name: &str, data: &[u8]) -> &mut Self {
        self.entry(
            H {
                name: name.as_bytes(),
                ..H::default()
            },
            data,
        )
    }
    pub fn file_owned(
        &mut self,
        name: &str,
        data: &[u8],
        mode: u32,
        uid: u32,
        gid: u32,
    ) -> &mut Self {
        self.entry(
            H {
                name: name.as_bytes(),
                mode,
                uid,
                gid,
                ..H::default()
            },
            data,
        )
    }
    pub fn dir(&mut self, name: &str) -> &mut Self {
        self.entry(
            H {
                name: name.as_bytes(),
                kind: b'5',
                mode: 0o755,
                ..H::default()
            },
            b"",
        )
    }
    pub fn symlink(&mut self, name: &str, target: &str) -> &mut Self {
        self.entry(
            H {
                name: name.as_bytes(),
                kind: b'2',
                link: target.as_bytes(),
                mode: 0o777,
                ..H::default()
            },
            b"",
        )
    }
    pub fn hardlink(&mut self, name: &str, target: &str) -> &mut Self {
        self.entry(
            H {
                name: name.as_bytes(),
                kind: b'1',
                link: target.as_bytes(),
                ..H::default()
            },
            b"",
        )
    }
    pub fn device(&mut self, name: &str, kind: u8, maj: u32, min: u32) -> &mut Self {
        self.entry(
            H {
                name: name.as_bytes(),
                kind,
                dev: (maj, min),
                mode: 0o666,
                ..H::default()
            },
            b"",
        )
    }
    /// A PAX extended header applying to the next entry.
    pub fn pax(&mut self, records: &[(&str, &[u8])]) -> &mut Self {
        let mut data = Vec::new();
        for (k, v) in records {
            let body_len = 1 + k.len() + 1 + v.len() + 1;
            let mut n = body_len + 1;
            while format!("{n}").len() + body_len != n {
                n = format!("{n}").len() + body_len;
            }
            data.extend_from_slice(format!("{n} {k}=").as_bytes());
            data.extend_from_slice(v);
            data.push(b'\n');
        }
        self.entry(
            H {
                name: b"./PaxHeaders/x",
                kind: b'x',
                ..H::default()
            },
            &data,
        )
    }
    pub fn finish(&mut self) -> Vec<u8> {
        let mut b = std::mem::take(&mut self.buf);
        b.extend(std::iter::repeat_n(0u8, 1024));
        b
    }
}

pub fn gzip(b: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(b).unwrap();
    e.finish().unwrap()
}

/// Writes OCI layouts the way skopeo does.
pub struct Layout {
    pub dir: PathBuf,
    pub index: Vec<serde_json::Value>,
}

pub struct BuiltImage {
    pub manifest: serde_json::Value,
    pub manifest_digest: String,
    pub manifest_size: usize,
    pub diff_ids: Vec<String>,
}

impl Layout {
    pub fn new(dir: &Path) -> Self {
        std::fs::create_dir_all(dir.join("blobs/sha256")).unwrap();
        Layout {
            dir: dir.to_path_buf(),
            index: Vec::new(),
        }
    }

    pub fn blob(&self, b: &[u8]) -> (String, usize) {
        let d = sha(b);
        std::fs::write(self.dir.join("blobs/sha256").join(&d[7..]), b).unwrap();
        (d, b.len())
    }

    /// An image from uncompressed layer tars (stored gzipped), with `config` merged into the
    /// image config's `config` object.
    pub fn image(&self, layers: &[Vec<u8>], config: serde_json::Value, arch: &str) -> BuiltImage {
        let mut descs = Vec::new();
        let mut diff_ids = Vec::new();
        for l in layers {
            diff_ids.push(sha(l));
            let gz = gzip(l);
            let (d, s) = self.blob(&gz);
            descs.push(json!({"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": d, "size": s}));
        }
        let cfg = json!({"architecture": arch, "os": "linux", "config": config,
            "rootfs": {"type": "layers", "diff_ids": diff_ids}});
        let cfg_bytes = serde_json::to_vec(&cfg).unwrap();
        let (cd, cs) = self.blob(&cfg_bytes);
        let manifest = json!({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd, "size": cs},
            "layers": descs});
        let mb = serde_json::to_vec(&manifest).unwrap();
        let (md, ms) = self.blob(&mb);
        BuiltImage {
            manifest,
            manifest_digest: md,
            manifest_size: ms,
            diff_ids,
        }
    }

    pub fn add(&mut self, img: &BuiltImage, name: &str) {
        self.index.push(
            json!({"mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": img.manifest_digest, "size": img.manifest_size,
            "annotations": {"org.opencontainers.image.ref.name": name}}),
        );
    }

    pub fn finish(&self) {
        std::fs::write(
            self.dir.join("oci-layout"),
            br#"{"imageLayoutVersion":"1.0.0"}"#,
        )
        .unwrap();
        let idx = json!({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": self.index});
        std::fs::write(
            self.dir.join("index.json"),
            serde_json::to_vec(&idx).unwrap(),
        )
        .unwrap();
    }
}

pub fn host_arch() -> &'static str {
    hangar_image::platform::oci_arch(std::env::consts::ARCH)
}
