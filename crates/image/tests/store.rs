//! Imports of every archive format, layer sharing, removal/prune, overlay rootfs with
//! whiteouts, and idmapped layers seen from inside a user namespace.

mod common;

use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;

use common::*;
use hangar_image::{
    mount_rootfs, remove_rootfs, unmount_rootfs, Digest, Error, IdRange, ImageStore, ImportOptions,
    InUse, Reference, Userns,
};
use serde_json::json;

fn base_layer() -> Vec<u8> {
    RawTar::new()
        .dir("a/")
        .file("a/keep", b"keep")
        .file("a/gone", b"gone")
        .dir("b/")
        .file("b/old", b"old")
        .file_owned("etc/passwd", b"root:x:0:0::/root:/bin/sh\n", 0o644, 0, 0)
        .finish()
}

fn top_layer() -> Vec<u8> {
    RawTar::new()
        .file("a/.wh.gone", b"")
        .dir("b/")
        .file("b/.wh..wh..opq", b"")
        .file("b/new", b"new")
        .finish()
}

fn two_layer_layout(dir: &Path) -> (Layout, BuiltImage) {
    let mut l = Layout::new(dir);
    let img = l.image(
        &[base_layer(), top_layer()],
        json!({"Entrypoint": ["/bin/sh"], "Cmd": ["-c", "true"], "Env": ["A=1"], "WorkingDir": "/a", "User": "1000:1000"}),
        host_arch(),
    );
    l.add(&img, "two");
    l.finish();
    (l, img)
}

fn import_dir(s: &ImageStore, dir: &Path, name: &str) -> hangar_image::ImageRecord {
    let opts = ImportOptions {
        reference: Some(Reference::parse(name).unwrap()),
        ..Default::default()
    };
    let mut v = s.import(dir, &opts).unwrap();
    assert_eq!(v.len(), 1);
    v.remove(0)
}

#[test]
#[ignore = "needs root (run as root: .ci/run passes --include-ignored)"]
fn oci_dir_import_inspect_and_overlay_whiteouts() {
    assert!(is_root(), "needs root");
    let t = tempfile::tempdir().unwrap();
    let (_, img) = two_layer_layout(&t.path().join("layout"));
    let s = ImageStore::open(t.path().join("store")).unwrap();
    let rec = import_dir(&s, &t.path().join("layout"), "test/two:v1");
    assert_eq!(rec.manifest_digest.to_string(), img.manifest_digest);
    assert_eq!(rec.references, vec!["docker.io/test/two:v1"]);
    let d = s.inspect("test/two:v1").unwrap();
    assert_eq!(d.config.entrypoint, vec!["/bin/sh"]);
    assert_eq!(d.config.cmd, vec!["-c", "true"]);
    assert_eq!(d.config.working_dir.as_deref(), Some("/a"));
    assert_eq!(d.config.user.as_deref(), Some("1000:1000"));
    assert_eq!(
        s.inspect(&img.manifest_digest[7..19]).unwrap().record,
        rec,
        "short digest"
    );
    assert_eq!(s.list().unwrap().len(), 1);

    let c = t.path().join("c1");
    let spec = s.prepare_rootfs(&rec.manifest_digest, &c, None).unwrap();
    assert_eq!(spec.lowerdirs.len(), 2);
    assert!(
        spec.lowerdirs[0].ends_with(&img.diff_ids[1][7..]),
        "top layer first"
    );
    let target = t.path().join("root");
    std::fs::create_dir(&target).unwrap();
    mount_rootfs(&spec, &target, None).unwrap();
    let res = std::panic::catch_unwind(|| {
        assert_eq!(std::fs::read(target.join("a/keep")).unwrap(), b"keep");
        assert!(
            !target.join("a/gone").exists(),
            "whiteout hides the lower file"
        );
        assert!(
            !target.join("b/old").exists(),
            "opaque dir hides lower contents"
        );
        assert_eq!(std::fs::read(target.join("b/new")).unwrap(), b"new");
        std::fs::write(target.join("a/written"), b"w").unwrap();
    });
    unmount_rootfs(&target).unwrap();
    res.unwrap();
    assert!(
        c.join("upper/a/written").exists(),
        "writes land in the upper dir"
    );
    assert!(!s.layer_dirs(&rec.manifest_digest).unwrap()[1]
        .join("a/written")
        .exists());
    remove_rootfs(&c).unwrap();
    assert!(!c.join("upper").exists());
}

#[test]
#[ignore = "needs root (run as root: .ci/run passes --include-ignored)"]
fn oci_archive_import() {
    assert!(is_root(), "needs root");
    let t = tempfile::tempdir().unwrap();
    let (_, img) = two_layer_layout(&t.path().join("layout"));
    let archive = t.path().join("img.tar");
    let st = Command::new("tar")
        .arg("-C")
        .arg(t.path().join("layout"))
        .arg("-cf")
        .arg(&archive)
        .arg(".")
        .status()
        .unwrap();
    assert!(st.success());
    let s = ImageStore::open(t.path().join("store")).unwrap();
    let recs = s
        .import(
            &archive,
            &ImportOptions {
                select: Some("two".into()),
                ..Default::default()
            },
        )
        .unwrap();
    assert_eq!(recs[0].manifest_digest.to_string(), img.manifest_digest);
    assert!(
        recs[0].references.is_empty(),
        "a bare tag name is not a reference"
    );
    // Named on a second import.
    let opts = ImportOptions {
        reference: Some(Reference::parse("localhost/two").unwrap()),
        ..Default::default()
    };
    let recs = s.import(&archive, &opts).unwrap();
    assert_eq!(recs[0].references, vec!["localhost/two:latest"]);
}

/// `docker save` before Docker 25: `<id>/layer.tar`, config `<hex>.json`, duplicate layers
/// as symlinks.
#[test]
#[ignore = "needs root (run as root: .ci/run passes --include-ignored)"]
fn docker_save_legacy_import() {
    assert!(is_root(), "needs root");
    let t = tempfile::tempdir().unwrap();
    let l1 = base_layer();
    let cfg = serde_json::to_vec(
        &json!({"architecture": host_arch(), "os": "linux", "config": {"Cmd": ["sh"]},
        "rootfs": {"type": "layers", "diff_ids": [sha(&l1), sha(&l1)]}}),
    )
    .unwrap();
    let cfg_name = format!("{}.json", &sha(&cfg)[7..]);
    let manifest = serde_json::to_vec(&json!([{"Config": cfg_name, "RepoTags": ["legacy/img:v1"],
        "Layers": ["aaa/layer.tar", "bbb/layer.tar"]}]))
    .unwrap();
    let mut tar = RawTar::new();
    tar.dir("aaa/")
        .file("aaa/VERSION", b"1.0")
        .file("aaa/json", b"{}")
        .file("aaa/layer.tar", &l1);
    tar.dir("bbb/").symlink("bbb/layer.tar", "../aaa/layer.tar");
    tar.file(&cfg_name, &cfg)
        .file("manifest.json", &manifest)
        .file("repositories", b"{}");
    let archive = t.path().join("save.tar");
    std::fs::write(&archive, gzip(&tar.finish())).unwrap();
    let s = ImageStore::open(t.path().join("store")).unwrap();
    let recs = s.import(&archive, &ImportOptions::default()).unwrap();
    assert_eq!(recs[0].references, vec!["docker.io/legacy/img:v1"]);
    assert_eq!(recs[0].layers.len(), 2);
    let dirs = s.layer_dirs(&recs[0].manifest_digest).unwrap();
    assert_eq!(dirs[0], dirs[1]);
    assert_eq!(std::fs::read(dirs[0].join("a/keep")).unwrap(), b"keep");
    assert_eq!(s.inspect("legacy/img:v1").unwrap().config.cmd, vec!["sh"]);
}

/// `docker save` from Docker 25+: an OCI layout plus manifest.json pointing into blobs/.
#[test]
#[ignore = "needs root (run as root: .ci/run passes --include-ignored)"]
fn docker_save_oci_import() {
    assert!(is_root(), "needs root");
    let t = tempfile::tempdir().unwrap();
    let (_, img) = two_layer_layout(&t.path().join("layout"));
    let m = &img.manifest;
    let blob = |d: &serde_json::Value| format!("blobs/sha256/{}", &d.as_str().unwrap()[7..]);
    let manifest = json!([{"Config": blob(&m["config"]["digest"]), "RepoTags": ["new/img:latest"],
        "Layers": m["layers"].as_array().unwrap().iter().map(|l| blob(&l["digest"])).collect::<Vec<_>>()}]);
    std::fs::write(
        t.path().join("layout/manifest.json"),
        serde_json::to_vec(&manifest).unwrap(),
    )
    .unwrap();
    let archive = t.path().join("save.tar");
    assert!(Command::new("tar")
        .arg("-C")
        .arg(t.path().join("layout"))
        .arg("-cf")
        .arg(&archive)
        .arg(".")
        .status()
        .unwrap()
        .success());
    let s = ImageStore::open(t.path().join("store")).unwrap();
    let recs = s.import(&archive, &ImportOptions::default()).unwrap();
    assert_eq!(recs[0].references, vec!["docker.io/new/img:latest"]);
    let d = s.inspect("new/img").unwrap();
    assert_eq!(d.config.entrypoint, vec!["/bin/sh"]);
    assert_eq!(
        d.record
            .layers
            .iter()
            .map(|l| l.diff_id.to_string())
            .collect::<Vec<_>>(),
        img.diff_ids
    );
}

#[test]
#[ignore = "needs root (run as root: .ci/run passes --include-ignored)"]
fn tampered_layout_blob_rejected() {
    assert!(is_root(), "needs root");
    let t = tempfile::tempdir().unwrap();
    let (_, img) = two_layer_layout(&t.path().join("layout"));
    let layer = img.manifest["layers"][1]["digest"].as_str().unwrap()[7..].to_string();
    let p = t.path().join("layout/blobs/sha256").join(&layer);
    let mut b = std::fs::read(&p).unwrap();
    let n = b.len();
    b[n - 10] ^= 0xff;
    std::fs::write(&p, b).unwrap();
    let s = ImageStore::open(t.path().join("store")).unwrap();
    let err = s
        .import(&t.path().join("layout"), &ImportOptions::default())
        .unwrap_err();
    assert!(matches!(err, Error::DigestMismatch { .. }), "{err}");
    assert!(!s.has_blob(&Digest::parse(&format!("sha256:{layer}")).unwrap()));
    assert!(s.list().unwrap().is_empty());
}

#[test]
#[ignore = "needs root (run as root: .ci/run passes --include-ignored)"]
fn layers_shared_between_images_and_remove_prune() {
    assert!(is_root(), "needs root");
    let t = tempfile::tempdir().unwrap();
    let mut l = Layout::new(&t.path().join("layout"));
    let a = l.image(&[base_layer(), top_layer()], json!({}), host_arch());
    let b = l.image(
        &[base_layer(), RawTar::new().file("only-b", b"b").finish()],
        json!({}),
        host_arch(),
    );
    l.add(&a, "a");
    l.add(&b, "b");
    l.finish();
    let s = ImageStore::open(t.path().join("store")).unwrap();
    let dir = t.path().join("layout");
    let ra = s
        .import(
            &dir,
            &ImportOptions {
                select: Some("a".into()),
                reference: Some(Reference::parse("img/a").unwrap()),
                ..Default::default()
            },
        )
        .unwrap()
        .remove(0);
    let base = s.layer_path(&ra.layers[0].diff_id);
    let ino = std::fs::metadata(&base).unwrap().ino();
    let rb = s
        .import(
            &dir,
            &ImportOptions {
                select: Some("b".into()),
                reference: Some(Reference::parse("img/b").unwrap()),
                ..Default::default()
            },
        )
        .unwrap()
        .remove(0);
    assert_eq!(ra.layers[0].diff_id, rb.layers[0].diff_id);
    assert_eq!(
        std::fs::metadata(&base).unwrap().ino(),
        ino,
        "shared layer unpacked once"
    );
    let layer_dirs = std::fs::read_dir(s.root().join("layers")).unwrap().count();
    assert_eq!(layer_dirs, 4, "3 distinct layers + empty");

    // In use: refused. Tag removal of a second name only untags.
    let in_use = InUse::new(["img/a"]);
    assert!(matches!(
        s.remove("img/a", &in_use),
        Err(Error::InUse { .. })
    ));
    assert!(matches!(
        s.remove(&ra.manifest_digest.to_string(), &in_use),
        Err(Error::InUse { .. })
    ));
    let rep = s.remove("img/b", &in_use).unwrap();
    assert_eq!(rep.deleted, Some(rb.manifest_digest.clone()));
    assert_eq!(rep.gc.layers_removed, 1, "only b's own layer goes");
    assert!(base.is_dir(), "shared layer kept for a");
    assert!(matches!(s.resolve("img/b"), Err(Error::NotFound(_))));
    // Prune keeps in-use images, then removes everything when nothing is in use.
    let rep = s.prune(&in_use, true).unwrap();
    assert!(rep.images_removed.is_empty());
    let rep = s.prune(&InUse::default(), true).unwrap();
    assert_eq!(rep.images_removed, vec![ra.manifest_digest.clone()]);
    assert_eq!(
        std::fs::read_dir(s.root().join("blobs/sha256"))
            .unwrap()
            .count(),
        0
    );
    assert_eq!(
        std::fs::read_dir(s.root().join("layers")).unwrap().count(),
        1
    );
}

#[test]
#[ignore = "needs root (run as root: .ci/run passes --include-ignored)"]
fn multi_platform_layout_selects_host() {
    assert!(is_root(), "needs root");
    let t = tempfile::tempdir().unwrap();
    let l = Layout::new(&t.path().join("layout"));
    let amd = l.image(
        &[RawTar::new().file("arch", b"amd64").finish()],
        json!({}),
        "amd64",
    );
    let arm = l.image(
        &[RawTar::new().file("arch", b"arm64").finish()],
        json!({}),
        "arm64",
    );
    let entry = |i: &BuiltImage, arch: &str| {
        json!({"mediaType": "application/vnd.oci.image.manifest.v1+json",
        "digest": i.manifest_digest, "size": i.manifest_size, "platform": {"os": "linux", "architecture": arch}})
    };
    let idx = serde_json::to_vec(
        &json!({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [entry(&amd, "amd64"), entry(&arm, "arm64")]}),
    )
    .unwrap();
    let (id, is) = l.blob(&idx);
    let mut l = l;
    l.index.push(
        json!({"mediaType": "application/vnd.oci.image.index.v1+json", "digest": id, "size": is,
        "annotations": {"io.containerd.image.name": "multi/arch:latest"}}),
    );
    l.finish();
    let s = ImageStore::open(t.path().join("store")).unwrap();
    let rec = s
        .import(&t.path().join("layout"), &ImportOptions::default())
        .unwrap()
        .remove(0);
    assert_eq!(rec.references, vec!["docker.io/multi/arch:latest"]);
    let dir = &s.layer_dirs(&rec.manifest_digest).unwrap()[0];
    assert_eq!(
        std::fs::read_to_string(dir.join("arch")).unwrap(),
        host_arch()
    );
    let opts = ImportOptions {
        platform: hangar_image::Platform::new("linux", "s390x"),
        ..Default::default()
    };
    let err = s.import(&t.path().join("layout"), &opts).unwrap_err();
    assert!(matches!(err, Error::NoMatchingPlatform { .. }), "{err}");
    assert!(err.to_string().contains("linux/arm64"), "{err}");
}

/// Runs `stat -c %u:%g path` inside `ns`.
fn stat_in_userns(ns: &Userns, path: &Path) -> String {
    use std::os::fd::AsRawFd;
    let fd = ns.as_fd().as_raw_fd();
    let mut cmd = Command::new("stat");
    cmd.arg("-c").arg("%u:%g").arg(path);
    // SAFETY: setns is async-signal-safe; the forked child is single-threaded as it requires.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setns(fd, libc::CLONE_NEWUSER) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

#[test]
#[ignore = "needs root (run as root: .ci/run passes --include-ignored)"]
fn idmapped_layers_are_root_owned_inside_the_userns() {
    assert!(is_root(), "needs root");
    let t = tempfile::tempdir().unwrap();
    two_layer_layout(&t.path().join("layout"));
    let s = ImageStore::open(t.path().join("store")).unwrap();
    let rec = import_dir(&s, &t.path().join("layout"), "test/two");
    let map = [IdRange {
        inside: 0,
        outside: 100_000,
        count: 65_536,
    }];
    let ns = Userns::create(&map, &map).unwrap();
    let layer = s.layer_dirs(&rec.manifest_digest).unwrap()[1].clone();
    // Without idmapping, the layer's root-owned files are unmapped (overflow id) in the userns.
    assert_eq!(
        stat_in_userns(&ns, &layer.join("etc/passwd")),
        "65534:65534"
    );

    let bind = t.path().join("bind");
    std::fs::create_dir(&bind).unwrap();
    hangar_image::idmap::idmapped_bind(&layer, &bind, &ns).unwrap();
    let host = std::fs::metadata(bind.join("etc/passwd")).map(|m| (m.uid(), m.gid()));
    let inside = stat_in_userns(&ns, &bind.join("etc/passwd"));
    unmount_rootfs(&bind).unwrap();
    assert_eq!(host.unwrap(), (100_000, 100_000));
    assert_eq!(inside, "0:0");
    assert_eq!(
        std::fs::metadata(layer.join("etc/passwd")).unwrap().uid(),
        0,
        "store keeps real ids"
    );

    // The whole rootfs: overlay over idmapped layers, upper owned by the machine's root.
    let c = t.path().join("c");
    let spec = s
        .prepare_rootfs(&rec.manifest_digest, &c, Some((100_000, 100_000)))
        .unwrap();
    let target = t.path().join("root");
    std::fs::create_dir(&target).unwrap();
    mount_rootfs(&spec, &target, Some(&ns)).unwrap();
    let inside_passwd = stat_in_userns(&ns, &target.join("etc/passwd"));
    let inside_root = stat_in_userns(&ns, &target);
    let whiteout_hidden = !target.join("a/gone").exists();
    unmount_rootfs(&target).unwrap();
    assert_eq!(inside_passwd, "0:0");
    assert_eq!(inside_root, "0:0");
    assert!(whiteout_hidden);
}

#[test]
#[ignore = "needs root (run as root: .ci/run passes --include-ignored)"]
fn a_second_handle_sees_every_change_to_the_index() {
    // Two handles on one store stand for the daemon and a `hangar image` command: what one
    // records or removes, the other resolves at once, although it keeps the index it read.
    assert!(is_root(), "needs root");
    let t = tempfile::tempdir().unwrap();
    let (_l, _img) = two_layer_layout(&t.path().join("layout"));
    let writer = ImageStore::open(t.path().join("store")).unwrap();
    let reader = ImageStore::open(t.path().join("store")).unwrap();
    assert!(matches!(reader.resolve("one"), Err(Error::NotFound(_))));
    let one = import_dir(&writer, &t.path().join("layout"), "one");
    assert_eq!(
        reader.resolve("one").unwrap().manifest_digest,
        one.manifest_digest
    );
    assert_eq!(
        reader.inspect("one").unwrap().config.working_dir.as_deref(),
        Some("/a")
    );
    // Cached now; a tag made by the writer must still show.
    let two = import_dir(&writer, &t.path().join("layout"), "two");
    assert_eq!(
        reader.resolve("two").unwrap().manifest_digest,
        two.manifest_digest
    );
    writer.remove("one", &InUse::default()).unwrap();
    assert!(matches!(reader.resolve("one"), Err(Error::NotFound(_))));
    assert_eq!(
        reader.resolve("two").unwrap().manifest_digest,
        two.manifest_digest
    );
}
