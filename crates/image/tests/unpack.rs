//! Layer unpacking: metadata kept, whiteouts converted, hostile layers refused with nothing left.

mod common;

use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

use common::*;
use hangar_image::oci::Compression;
use hangar_image::{Digest, Error, ImageStore};

fn store(dir: &Path) -> ImageStore {
    ImageStore::open(dir.join("store")).unwrap()
}

/// Stores `blob` and unpacks it as a layer whose diff id is that of `tar`.
fn unpack(
    s: &ImageStore,
    blob: &[u8],
    tar: &[u8],
    c: Compression,
) -> hangar_image::Result<std::path::PathBuf> {
    let d = s.put_blob_bytes(blob)?;
    s.ensure_layer(&d, &Digest::of(tar), Some(c))
}

fn assert_nothing_kept(s: &ImageStore, tar: &[u8]) {
    assert!(!s.has_layer(&Digest::of(tar)), "refused layer was kept");
    let tmp: Vec<_> = std::fs::read_dir(s.root().join("tmp")).unwrap().collect();
    assert!(tmp.is_empty(), "temp data left behind: {tmp:?}");
    let layers: Vec<_> = std::fs::read_dir(s.root().join("layers"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(layers, vec!["empty"], "only the empty layer should exist");
}

fn expect_refused(name: &str, tar: Vec<u8>, outside: &Path) {
    assert!(is_root(), "needs root");
    let t = tempfile::tempdir().unwrap();
    let s = store(t.path());
    let err = unpack(&s, &tar, &tar, Compression::None).expect_err(name);
    eprintln!("{name}: {err}");
    assert_nothing_kept(&s, &tar);
    let leaked: Vec<_> = std::fs::read_dir(outside).unwrap().collect();
    assert!(
        leaked.is_empty(),
        "{name}: wrote outside the store: {leaked:?}"
    );
    // Nothing landed next to the store either (`..` from tmp/layer-x resolves there).
    for p in ["escape", "tmp/escape", "store/escape", "store/tmp/escape"] {
        assert!(!t.path().join(p).exists(), "{name}: {p} exists");
    }
}

#[test]
#[ignore = "needs root (run as root: .ci/run passes --include-ignored)"]
fn keeps_metadata_links_and_whiteouts() {
    assert!(is_root(), "needs root");
    let t = tempfile::tempdir().unwrap();
    let s = store(t.path());
    let mut tar = RawTar::new();
    tar.dir("etc/")
        .file_owned("etc/shadow", b"secret", 0o640, 0, 42)
        .file_owned("usr/bin/tool", b"#!/bin/sh\n", 0o4755, 1000, 1001)
        .hardlink("usr/bin/tool2", "usr/bin/tool")
        .symlink("bin", "usr/bin")
        .symlink("abs", "/etc/passwd")
        .pax(&[
            ("SCHILY.xattr.user.hangar", b"yes"),
            ("SCHILY.xattr.trusted.overlay.redirect", b"/x"),
        ])
        .file("withxattr", b"x")
        .pax(&[("uid", b"5000000"), ("mtime", b"1700000000.5")])
        .file("bigid", b"y")
        .file(".wh.gone", b"")
        .dir("opaque/")
        .file("opaque/.wh..wh..opq", b"")
        .entry(
            H {
                name: b"fifo",
                kind: b'6',
                ..H::default()
            },
            b"",
        )
        .entry(
            H {
                name: b"old/",
                kind: b'5',
                mode: 0o700,
                mtime: 1_000_000_000,
                ..H::default()
            },
            b"",
        );
    let tar = tar.finish();
    let gz = gzip(&tar);
    let dir = unpack(&s, &gz, &tar, Compression::Gzip).unwrap();
    let m = |p: &str| std::fs::symlink_metadata(dir.join(p)).unwrap();
    assert_eq!(m("etc/shadow").mode() & 0o7777, 0o640);
    assert_eq!(m("etc/shadow").gid(), 42);
    let tool = m("usr/bin/tool");
    assert_eq!(
        (tool.mode() & 0o7777, tool.uid(), tool.gid()),
        (0o4755, 1000, 1001)
    );
    assert_eq!(
        tool.ino(),
        m("usr/bin/tool2").ino(),
        "hardlink shares the inode"
    );
    assert_eq!(tool.mtime(), 1_600_000_000);
    assert_eq!(
        std::fs::read_link(dir.join("abs")).unwrap(),
        Path::new("/etc/passwd")
    );
    assert_eq!(
        std::fs::read_link(dir.join("bin")).unwrap(),
        Path::new("usr/bin")
    );
    let x = rustix::fs::lgetxattr(dir.join("withxattr"), "user.hangar", &mut [0u8; 16]).unwrap();
    assert_eq!(x, 3);
    assert!(rustix::fs::lgetxattr(
        dir.join("withxattr"),
        "trusted.overlay.redirect",
        &mut [0u8; 16]
    )
    .is_err());
    assert_eq!(m("bigid").uid(), 5_000_000);
    assert_eq!(
        (m("bigid").mtime(), m("bigid").mtime_nsec()),
        (1_700_000_000, 500_000_000)
    );
    let wh = m("gone");
    assert!(
        wh.file_type().is_char_device() && wh.rdev() == 0,
        "whiteout is a 0:0 char device"
    );
    assert!(!dir.join(".wh.gone").exists());
    let mut v = [0u8; 4];
    let n = rustix::fs::lgetxattr(dir.join("opaque"), "trusted.overlay.opaque", &mut v).unwrap();
    assert_eq!(&v[..n], b"y");
    assert!(m("fifo").file_type().is_fifo());
    assert_eq!(
        m("old").mtime(),
        1_000_000_000,
        "directory mtime set after its children"
    );
    assert_eq!(m("old").mode() & 0o777, 0o700);
    // Unpacked once: asking again reuses the directory.
    let ino = m(".").ino();
    let again = unpack(&s, &gz, &tar, Compression::Gzip).unwrap();
    assert_eq!(std::fs::metadata(again).unwrap().ino(), ino);
}

#[test]
#[ignore = "needs root (run as root: .ci/run passes --include-ignored)"]
fn diff_id_mismatch_rejected() {
    assert!(is_root(), "needs root");
    let t = tempfile::tempdir().unwrap();
    let s = store(t.path());
    let tar = RawTar::new().file("a", b"a").finish();
    let d = s.put_blob_bytes(&tar).unwrap();
    let err = s.ensure_layer(&d, &Digest::of(b"other"), None).unwrap_err();
    assert!(matches!(err, Error::DigestMismatch { .. }), "{err}");
    assert_nothing_kept(&s, &tar);
}

#[test]
#[ignore = "needs root (run as root: .ci/run passes --include-ignored)"]
fn hostile_path_traversal() {
    let out = tempfile::tempdir().unwrap();
    expect_refused(
        "dotdot",
        RawTar::new().file("../escape", b"x").finish(),
        out.path(),
    );
    expect_refused(
        "nested dotdot",
        RawTar::new().file("a/../../escape", b"x").finish(),
        out.path(),
    );
}

#[test]
#[ignore = "needs root (run as root: .ci/run passes --include-ignored)"]
fn hostile_absolute_symlink_then_write_through_it() {
    let out = tempfile::tempdir().unwrap();
    let target = out.path().to_str().unwrap().to_string();
    expect_refused(
        "abs symlink",
        RawTar::new()
            .symlink("evil", &target)
            .file("evil/pwned", b"x")
            .finish(),
        out.path(),
    );
    // Same trick with a relative symlink climbing out, and through a nested component.
    expect_refused(
        "rel symlink",
        RawTar::new()
            .symlink("up", "../../../../../../../../..")
            .file(&format!("up{target}/pwned"), b"x")
            .finish(),
        out.path(),
    );
    expect_refused(
        "dir through symlink",
        RawTar::new()
            .symlink("evil", &target)
            .dir("evil/sub/")
            .finish(),
        out.path(),
    );
}

#[test]
#[ignore = "needs root (run as root: .ci/run passes --include-ignored)"]
fn hostile_hardlink_escape() {
    let out = tempfile::tempdir().unwrap();
    let victim = out.path().join("victim");
    std::fs::write(&victim, b"host file").unwrap();
    let before = std::fs::metadata(&victim).unwrap().nlink();
    let v = victim.to_str().unwrap().to_string();
    let refused = |name: &str, tar: Vec<u8>| {
        assert!(is_root(), "needs root");
        let t = tempfile::tempdir().unwrap();
        let s = store(t.path());
        let err = unpack(&s, &tar, &tar, Compression::None).expect_err(name);
        eprintln!("{name}: {err}");
        assert_nothing_kept(&s, &tar);
        assert_eq!(
            std::fs::metadata(&victim).unwrap().nlink(),
            before,
            "{name}: host file got linked"
        );
    };
    refused(
        "hardlink dotdot",
        RawTar::new()
            .hardlink("h", "../../../../../../..//etc/passwd")
            .finish(),
    );
    refused(
        "hardlink absolute",
        RawTar::new().hardlink("h", &v).finish(),
    );
    refused(
        "hardlink via symlink",
        RawTar::new()
            .symlink("d", out.path().to_str().unwrap())
            .hardlink("h", "d/victim")
            .finish(),
    );
}

#[test]
#[ignore = "needs root (run as root: .ci/run passes --include-ignored)"]
fn device_nodes_are_skipped_as_rootless_runtimes_do() {
    // Debian-built root filesystems (debootstrap, mmdebstrap) carry /dev/console and friends.
    assert!(is_root(), "needs root");
    let t = tempfile::tempdir().unwrap();
    let s = store(t.path());
    let mut tar = RawTar::new();
    tar.dir("dev/")
        .device("dev/console", b'3', 5, 1)
        .device("dev/sda", b'4', 8, 0)
        .file("etc/hostname", b"debian\n");
    let tar = tar.finish();
    let dir = unpack(&s, &tar, &tar, Compression::None).expect("a layer with device nodes imports");
    assert!(dir.join("etc/hostname").is_file());
    assert!(dir.join("dev").is_dir());
    assert!(!dir.join("dev/console").exists(), "no device node was made");
    assert!(!dir.join("dev/sda").exists());
    // A device entry that would escape the layer is still refused.
    let out = tempfile::tempdir().unwrap();
    expect_refused(
        "escaping device",
        RawTar::new().device("../escape", b'3', 1, 3).finish(),
        out.path(),
    );
}

#[test]
#[ignore = "needs root (run as root: .ci/run passes --include-ignored)"]
fn hostile_huge_sizes_and_headers() {
    let out = tempfile::tempdir().unwrap();
    // base-256 size field claiming 2^60 bytes.
    let mut h = header(&H {
        name: b"huge",
        ..H::default()
    });
    h[124..136].copy_from_slice(&[0x80, 0, 0, 0x10, 0, 0, 0, 0, 0, 0, 0, 0]);
    checksum(&mut h);
    expect_refused(
        "base256 size overflow",
        RawTar::new().raw(h, b"").finish(),
        out.path(),
    );
    let mut h = header(&H {
        name: b"huge",
        ..H::default()
    });
    h[124..136].copy_from_slice(&[0x80, 0, 0, 0, 0x10, 0, 0, 0, 0, 0, 0, 0]);
    checksum(&mut h);
    expect_refused(
        "base256 size 2^60",
        RawTar::new().raw(h, b"").finish(),
        out.path(),
    );
    // An 8 GiB octal size with no data behind it.
    let h = header(&H {
        name: b"big",
        size: 0o77777777777,
        ..H::default()
    });
    expect_refused(
        "size without data",
        RawTar::new().raw(h, b"abc").finish(),
        out.path(),
    );
    // A corrupt header checksum.
    let mut h = header(&H {
        name: b"bad",
        ..H::default()
    });
    h[0] = b'c';
    expect_refused(
        "bad checksum",
        RawTar::new().raw(h, b"").finish(),
        out.path(),
    );
    // uid -1 would mean "leave unchanged" to chown.
    let mut t = RawTar::new();
    t.pax(&[("uid", b"4294967295")]).file("neg", b"x");
    expect_refused("uid out of range", t.finish(), out.path());
    // 300-character component.
    let long = "a".repeat(300);
    let mut t = RawTar::new();
    t.pax(&[("path", long.as_bytes())]).file("short", b"x");
    expect_refused("long name", t.finish(), out.path());
}

#[test]
#[ignore = "needs root (run as root: .ci/run passes --include-ignored)"]
fn hostile_truncated_gzip() {
    assert!(is_root(), "needs root");
    let t = tempfile::tempdir().unwrap();
    let s = store(t.path());
    let big: Vec<u8> = (0..200_000u32).flat_map(|i| i.to_le_bytes()).collect();
    let tar = RawTar::new().file("a", &big).file("b", b"b").finish();
    let gz = gzip(&tar);
    let cut = &gz[..gz.len() / 2];
    let err = unpack(&s, cut, &tar, Compression::Gzip).unwrap_err();
    eprintln!("truncated gzip: {err}");
    assert_nothing_kept(&s, &tar);
    // Truncated just before the gzip trailer: the tar is complete but the stream is not.
    let cut = &gz[..gz.len() - 4];
    let err = unpack(&s, cut, &tar, Compression::Gzip).unwrap_err();
    eprintln!("truncated gzip trailer: {err}");
    assert_nothing_kept(&s, &tar);
}
