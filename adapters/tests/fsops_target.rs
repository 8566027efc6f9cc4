// Goal: show that `TargetRoot` applies every operation faithfully and never touches anything
// outside its root. Method: real temporary directories; for each escape attempt (a `..` or
// absolute path, a NUL byte, a symlink planted as an intermediate directory or as the final
// component) apply the operation with both resolution strategies (openat2 and the
// component walk) and check that it is refused as `Escapes` and that the world outside is
// byte-for-byte unchanged; then round-trip every operation type and check the result with
// `lstat` (modes, owners, times, inodes, st_blocks for holes).

#![allow(clippy::unwrap_used)] // test helpers should panic on anything unexpected

use bytes::Bytes;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};
use std::path::Path;

use serde::Serialize;
use understudy_adapters::ApplyError;
use understudy_adapters::fsops::{
    Applied, EntryKind, Meta, Operation, RelPath, Resolution, TargetRoot,
};
use understudy_core::Retry;

fn p(s: &str) -> RelPath {
    RelPath::new(s).unwrap()
}

fn meta(mode: u32) -> Meta {
    Meta {
        mode,
        uid: 0,
        gid: 0,
        atime_ns: 1_600_000_000_111_222_333,
        mtime_ns: 1_650_000_000_444_555_666,
        size_bytes: 0,
    }
}

fn owned_meta(mode: u32) -> Meta {
    // Owners are applied only as root; elsewhere keep our own so comparisons hold.
    Meta {
        uid: rustix::process::geteuid().as_raw(),
        gid: rustix::process::getegid().as_raw(),
        ..meta(mode)
    }
}

/// A workspace: `root` is the target root, `outside` a sibling that must never change.
struct World {
    _dir: tempfile::TempDir,
    root: std::path::PathBuf,
    outside: std::path::PathBuf,
}

fn world() -> World {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let outside = dir.path().join("outside");
    fs::create_dir_all(&root).unwrap();
    fs::create_dir_all(outside.join("sub")).unwrap();
    fs::write(outside.join("secret"), b"do not touch").unwrap();
    fs::set_permissions(outside.join("secret"), fs::Permissions::from_mode(0o600)).unwrap();
    World { _dir: dir, root, outside }
}

/// Every path under `dir` with its kind, mode, size, mtime and content: a fingerprint.
/// Path, mode, size, mtime and content of one entry.
type Fingerprint = (Vec<u8>, u32, u64, i64, Vec<u8>);

fn snapshot(dir: &Path) -> Vec<Fingerprint> {
    let mut out = Vec::new();
    for e in understudy_adapters::fsops::scan(dir) {
        let e = e.unwrap();
        let data = if e.kind == EntryKind::File {
            fs::read(e.path.to_local(dir)).unwrap()
        } else {
            Vec::new()
        };
        out.push((
            e.path.as_bytes().to_vec(),
            e.meta.mode,
            e.meta.size_bytes,
            e.meta.mtime_ns,
            data,
        ));
    }
    out
}

const BOTH: [Resolution; 2] = [Resolution::Auto, Resolution::Walk];

#[test]
fn openat2_is_used_where_the_kernel_has_it() {
    let w = world();
    let root = TargetRoot::open(&w.root).unwrap();
    // Informational: the walk is tested explicitly either way.
    eprintln!("openat2 in use: {}", root.uses_openat2());
    assert!(!TargetRoot::open_with(&w.root, Resolution::Walk).unwrap().uses_openat2());
}

#[test]
fn dot_dot_absolute_and_nul_paths_cannot_be_expressed_or_decoded() {
    for bad in [&b"../outside/secret"[..], b"a/../../x", b"/etc/passwd", b"a\0b", b"", b"./a"] {
        assert!(RelPath::new(bad).is_err());
    }
    // A hostile peer encodes the path by hand: decoding the operation fails, so it can never
    // reach `apply`.
    #[derive(Serialize)]
    enum Fake<'a> {
        Remove { path: Bin<'a> },
    }
    struct Bin<'a>(&'a [u8]);
    impl Serialize for Bin<'_> {
        fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            s.serialize_bytes(self.0)
        }
    }
    let good = rmp_serde::to_vec_named(&Fake::Remove { path: Bin(b"fine/name") }).unwrap();
    assert_eq!(
        rmp_serde::from_slice::<Operation>(&good).unwrap(),
        Operation::Remove { path: p("fine/name") }
    );
    for bad in [&b"../outside"[..], b"/etc", b"x\0y", b"a//b"] {
        let bytes = rmp_serde::to_vec_named(&Fake::Remove { path: Bin(bad) }).unwrap();
        assert!(
            rmp_serde::from_slice::<Operation>(&bytes).is_err(),
            "{:?}",
            bad.escape_ascii().to_string()
        );
    }
}

#[test]
fn a_symlink_planted_as_an_intermediate_directory_is_refused_for_every_operation() {
    for resolution in BOTH {
        let w = world();
        // A symlink to / and one to a sibling directory, planted inside the root.
        symlink("/", w.root.join("to_slash")).unwrap();
        symlink(&w.outside, w.root.join("to_outside")).unwrap();
        fs::create_dir(w.root.join("real")).unwrap();
        fs::create_dir(w.root.join("plain")).unwrap();
        symlink("../../outside", w.root.join("real/deeper")).unwrap();
        let before = snapshot(&w.outside);
        let unique = format!("understudy-escape-test-{}", std::process::id());
        let mut root = TargetRoot::open_with(&w.root, resolution).unwrap();
        for via in ["to_slash/tmp", "to_outside", "real/deeper", "real/deeper/sub"] {
            let t = |name: &str| p(&format!("{via}/{name}"));
            let ops = [
                Operation::MakeDir { path: t(&unique), meta: meta(0o755) },
                Operation::CreateFile { path: t(&unique), meta: meta(0o644) },
                Operation::CreateFile { path: t("secret"), meta: meta(0o644) },
                Operation::Write {
                    path: t("secret"),
                    offset: 0,
                    data: Bytes::from_static(b"pwned"),
                },
                Operation::Truncate { path: t("secret"), len: 0 },
                Operation::PunchHole { path: t("secret"), offset: 0, len: 4 },
                Operation::SetMeta { path: t("secret"), meta: meta(0o777) },
                Operation::Remove { path: t("secret") },
                Operation::Remove { path: t("sub") },
                Operation::Rename { from: t("secret"), to: p("stolen") },
                Operation::Rename { from: p("plain"), to: t(&unique) },
                Operation::Symlink { path: t(&unique), target: b"/".to_vec() },
                Operation::HardLink { path: p("stolen"), existing: t("secret") },
                Operation::HardLink { path: t(&unique), existing: p("real") },
            ];
            for op in &ops {
                let err = root
                    .apply(op)
                    .expect_err(&format!("{op:?} via {via} with {resolution:?} was applied"));
                assert!(matches!(err, ApplyError::Escapes { .. }), "{op:?}: {err}");
                assert_eq!(err.retry(), Retry::Permanent);
            }
            assert!(root.stat(&t("secret")).is_err());
            assert!(root.list_dir(&p(via)).is_err());
            assert!(root.open_file(&t("secret")).is_err());
        }
        assert_eq!(snapshot(&w.outside), before, "{resolution:?}");
        assert!(!Path::new("/tmp").join(&unique).exists());
        assert!(!w.root.join("stolen").exists());
        assert!(w.root.join("real").is_dir() && w.root.join("plain").is_dir());
    }
}

#[test]
fn a_symlink_as_the_final_component_is_never_followed() {
    for resolution in BOTH {
        let w = world();
        symlink(w.outside.join("secret"), w.root.join("link")).unwrap();
        symlink(&w.outside, w.root.join("dirlink")).unwrap();
        let before = snapshot(&w.outside);
        let mut root = TargetRoot::open_with(&w.root, resolution).unwrap();
        for op in [
            Operation::Write { path: p("link"), offset: 0, data: Bytes::from_static(b"pwned") },
            Operation::CreateFile { path: p("link"), meta: meta(0o666) },
            Operation::Truncate { path: p("link"), len: 0 },
            Operation::PunchHole { path: p("link"), offset: 0, len: 4 },
            Operation::MakeDir { path: p("link"), meta: meta(0o777) },
            Operation::MakeDir { path: p("dirlink"), meta: meta(0o777) },
        ] {
            let err = root.apply(&op).expect_err(&format!("{op:?}"));
            assert!(matches!(err, ApplyError::Escapes { .. }), "{op:?}: {err}");
        }
        assert!(root.open_file(&p("link")).is_err());
        // Operations on the link itself act on the link, not on what it points to.
        root.apply(&Operation::SetMeta { path: p("link"), meta: owned_meta(0o777) }).unwrap();
        let lm = fs::symlink_metadata(w.root.join("link")).unwrap();
        assert_eq!(lm.mtime(), 1_650_000_000);
        root.apply(&Operation::Rename { from: p("link"), to: p("moved") }).unwrap();
        root.apply(&Operation::Remove { path: p("moved") }).unwrap();
        root.apply(&Operation::Remove { path: p("dirlink") }).unwrap();
        assert_eq!(snapshot(&w.outside), before, "{resolution:?}");
        assert_eq!(fs::read_dir(&w.root).unwrap().count(), 0);
    }
}

#[test]
fn every_operation_round_trips() {
    for resolution in BOTH {
        let w = world();
        let mut root = TargetRoot::open_with(&w.root, resolution).unwrap();
        let r = &w.root;
        // Parents are created on demand: mirror order may deliver a child first.
        assert_eq!(
            root.apply(&Operation::CreateFile { path: p("a/b/file"), meta: owned_meta(0o640) })
                .unwrap(),
            Applied::Changed
        );
        root.apply(&Operation::Write {
            path: p("a/b/file"),
            offset: 0,
            data: Bytes::from_static(b"hello world"),
        })
        .unwrap();
        root.apply(&Operation::Write {
            path: p("a/b/file"),
            offset: 6,
            data: Bytes::from_static(b"there"),
        })
        .unwrap();
        assert_eq!(fs::read(r.join("a/b/file")).unwrap(), b"hello there");
        root.apply(&Operation::Truncate { path: p("a/b/file"), len: 5 }).unwrap();
        assert_eq!(fs::read(r.join("a/b/file")).unwrap(), b"hello");
        root.apply(&Operation::SetMeta { path: p("a/b/file"), meta: owned_meta(0o4751) }).unwrap();
        let m = fs::symlink_metadata(r.join("a/b/file")).unwrap();
        assert_eq!(m.mode() & 0o7777, 0o4751);
        assert_eq!((m.mtime(), m.mtime_nsec()), (1_650_000_000, 444_555_666));
        assert_eq!((m.atime(), m.atime_nsec()), (1_600_000_000, 111_222_333));

        // CreateFile truncates an existing file.
        root.apply(&Operation::CreateFile { path: p("a/b/file"), meta: owned_meta(0o600) })
            .unwrap();
        assert_eq!(fs::read(r.join("a/b/file")).unwrap(), b"");

        // Directories: created (idempotently), empty ones preserved, attributes applied.
        assert_eq!(
            root.apply(&Operation::MakeDir { path: p("empty"), meta: owned_meta(0o750) }).unwrap(),
            Applied::Changed
        );
        assert_eq!(
            root.apply(&Operation::MakeDir { path: p("empty"), meta: owned_meta(0o750) }).unwrap(),
            Applied::Unchanged
        );
        root.apply(&Operation::SetMeta { path: p("empty"), meta: owned_meta(0o711) }).unwrap();
        let m = fs::metadata(r.join("empty")).unwrap();
        assert!(m.is_dir());
        assert_eq!(m.mode() & 0o7777, 0o711);
        assert_eq!(m.mtime(), 1_650_000_000);
        // The root's own attributes.
        root.apply(&Operation::SetMeta { path: RelPath::root(), meta: owned_meta(0o755) }).unwrap();
        assert_eq!(fs::metadata(r).unwrap().mtime(), 1_650_000_000);

        // Symlinks are stored as-is, dangling or absolute, and replaced when they change.
        root.apply(&Operation::Symlink {
            path: p("a/link"),
            target: b"/nonexistent/\xff".to_vec(),
        })
        .unwrap();
        assert_eq!(
            fs::read_link(r.join("a/link")).unwrap().as_os_str().as_bytes(),
            b"/nonexistent/\xff"
        );
        assert_eq!(
            root.apply(&Operation::Symlink {
                path: p("a/link"),
                target: b"/nonexistent/\xff".to_vec()
            })
            .unwrap(),
            Applied::Unchanged
        );
        root.apply(&Operation::Symlink { path: p("a/link"), target: b"b/file".to_vec() }).unwrap();
        assert_eq!(fs::read_link(r.join("a/link")).unwrap().as_os_str().as_bytes(), b"b/file");
        let entry = root.stat(&p("a/link")).unwrap().unwrap();
        assert_eq!(entry.kind, EntryKind::Symlink);
        assert_eq!(entry.link_target.as_deref(), Some(&b"b/file"[..]));

        // Hard links share the inode, idempotently.
        root.apply(&Operation::HardLink { path: p("hard"), existing: p("a/b/file") }).unwrap();
        assert_eq!(
            root.apply(&Operation::HardLink { path: p("hard"), existing: p("a/b/file") }).unwrap(),
            Applied::Unchanged
        );
        let (i1, i2) = (
            fs::metadata(r.join("hard")).unwrap().ino(),
            fs::metadata(r.join("a/b/file")).unwrap().ino(),
        );
        assert_eq!(i1, i2);
        // Re-creating one name gives it a new inode and leaves the other's data alone.
        root.apply(&Operation::Write {
            path: p("hard"),
            offset: 0,
            data: Bytes::from_static(b"shared"),
        })
        .unwrap();
        root.apply(&Operation::CreateFile { path: p("a/b/file"), meta: owned_meta(0o600) })
            .unwrap();
        assert_eq!(fs::read(r.join("hard")).unwrap(), b"shared");
        assert_ne!(fs::metadata(r.join("a/b/file")).unwrap().ino(), i1);

        // A directory rename moves the whole subtree in one operation, creating `to`'s parents.
        root.apply(&Operation::Rename { from: p("a"), to: p("x/y/a2") }).unwrap();
        assert!(!r.join("a").exists());
        assert!(fs::symlink_metadata(r.join("x/y/a2/link")).unwrap().file_type().is_symlink());
        assert!(r.join("x/y/a2/b/file").is_file());
        // Replayed after a reconnect: already done.
        assert_eq!(
            root.apply(&Operation::Rename { from: p("a"), to: p("x/y/a2") }).unwrap(),
            Applied::Unchanged
        );
        assert!(matches!(
            root.apply(&Operation::Rename { from: p("x"), to: p("x/inside") }),
            Err(ApplyError::Invalid { .. })
        ));

        // Remove: a file, a directory recursively (symlinks inside unlinked, not followed),
        // and what is absent.
        symlink(&w.outside, r.join("x/y/a2/b/out")).unwrap();
        root.apply(&Operation::Remove { path: p("hard") }).unwrap();
        assert_eq!(root.apply(&Operation::Remove { path: p("x") }).unwrap(), Applied::Changed);
        assert_eq!(root.apply(&Operation::Remove { path: p("x") }).unwrap(), Applied::Unchanged);
        assert_eq!(
            root.apply(&Operation::Remove { path: p("no/such/dir") }).unwrap(),
            Applied::Unchanged
        );
        assert!(w.outside.join("secret").exists() && w.outside.join("sub").exists());
        assert!(matches!(
            root.apply(&Operation::Remove { path: RelPath::root() }),
            Err(ApplyError::Invalid { .. })
        ));

        // Writes to what is missing are a (temporary) race, not a silent create.
        let err = root
            .apply(&Operation::Write { path: p("gone"), offset: 0, data: vec![1].into() })
            .unwrap_err();
        assert!(matches!(err, ApplyError::Missing { .. }));
        assert_eq!(err.retry(), Retry::Temporary);

        root.sync().unwrap();
        let names: Vec<_> =
            root.list_dir(&RelPath::root()).unwrap().into_iter().map(|e| e.path).collect();
        assert_eq!(names, vec![p("empty")]);
    }
}

#[test]
fn owners_are_applied_when_running_as_root() {
    let w = world();
    let mut root = TargetRoot::open(&w.root).unwrap();
    let m = Meta { uid: 4242, gid: 4343, ..meta(0o644) };
    root.apply(&Operation::CreateFile { path: p("owned"), meta: m }).unwrap();
    root.apply(&Operation::SetMeta { path: p("owned"), meta: m }).unwrap();
    root.apply(&Operation::Symlink { path: p("l"), target: b"owned".to_vec() }).unwrap();
    root.apply(&Operation::SetMeta { path: p("l"), meta: m }).unwrap();
    let (fm, lm) = (
        fs::metadata(w.root.join("owned")).unwrap(),
        fs::symlink_metadata(w.root.join("l")).unwrap(),
    );
    if rustix::process::geteuid().is_root() {
        assert_eq!((fm.uid(), fm.gid()), (4242, 4343));
        assert_eq!((lm.uid(), lm.gid()), (4242, 4343));
    } else {
        // Not root: owners are skipped, nothing fails.
        assert_eq!(fm.uid(), rustix::process::geteuid().as_raw());
    }
}

#[test]
fn a_new_file_is_private_until_its_attributes_follow_its_data() {
    let w = world();
    let mut root = TargetRoot::open(&w.root).unwrap();
    let (f, m) = (p("new"), Meta { mtime_ns: 1_000_000_000, ..meta(0o4755) });
    root.apply(&Operation::CreateFile { path: f.clone(), meta: m }).unwrap();
    let mode = |name: &str| fs::metadata(w.root.join(name)).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode("new") & 0o077, 0, "no one else reads a file while it is written");
    root.apply(&Operation::Write { path: f.clone(), offset: 0, data: Bytes::from_static(b"data") })
        .unwrap();
    root.apply(&Operation::SetMeta { path: f.clone(), meta: m }).unwrap();
    let done = fs::metadata(w.root.join("new")).unwrap();
    assert_eq!((mode("new"), done.mtime()), (0o4755, 1), "SetMeta gives the exact attributes");

    // An existing file (truncated, same inode) gets the attributes at once, writable.
    root.apply(&Operation::CreateFile { path: f.clone(), meta: meta(0o444) }).unwrap();
    assert_eq!(mode("new"), 0o644);
    // Setting what is already there changes nothing and still sets the times.
    root.apply(&Operation::SetMeta { path: f, meta: m }).unwrap();
    let again = fs::metadata(w.root.join("new")).unwrap();
    assert_eq!((mode("new"), again.mtime(), again.len()), (0o4755, 1, 0));
}

#[test]
fn sparse_files_keep_their_holes() {
    for resolution in BOTH {
        let w = world();
        let mut root = TargetRoot::open_with(&w.root, resolution).unwrap();
        let f = p("sparse");
        root.apply(&Operation::CreateFile { path: f.clone(), meta: owned_meta(0o644) }).unwrap();
        root.apply(&Operation::Truncate { path: f.clone(), len: 64 << 20 }).unwrap();
        root.apply(&Operation::Write {
            path: f.clone(),
            offset: 32 << 20,
            data: vec![7; 4096].into(),
        })
        .unwrap();
        root.sync().unwrap();
        let m = fs::metadata(w.root.join("sparse")).unwrap();
        assert_eq!(m.len(), 64 << 20);
        // 64 MiB of size, at most a few hundred KiB allocated.
        assert!(m.blocks() * 512 < 1 << 20, "{} blocks allocated", m.blocks());

        // Punching a hole into written data deallocates it and reads back as zeros.
        root.apply(&Operation::CreateFile { path: p("dense"), meta: owned_meta(0o644) }).unwrap();
        root.apply(&Operation::Write {
            path: p("dense"),
            offset: 0,
            data: vec![9; 4 << 20].into(),
        })
        .unwrap();
        root.sync().unwrap();
        let before = fs::metadata(w.root.join("dense")).unwrap().blocks();
        root.apply(&Operation::PunchHole { path: p("dense"), offset: 1 << 20, len: 2 << 20 })
            .unwrap();
        root.sync().unwrap();
        let after = fs::metadata(w.root.join("dense")).unwrap();
        assert_eq!(after.len(), 4 << 20);
        assert!(after.blocks() < before, "{} >= {before}", after.blocks());
        let data = fs::read(w.root.join("dense")).unwrap();
        assert!(data[(1 << 20)..(3 << 20)].iter().all(|&b| b == 0));
        assert!(data[..(1 << 20)].iter().chain(&data[(3 << 20)..]).all(|&b| b == 9));
    }
}

#[test]
fn names_need_not_be_utf8() {
    let w = world();
    let mut root = TargetRoot::open(&w.root).unwrap();
    let dir = RelPath::new(b"d\xe9j\xe0".to_vec()).unwrap();
    let file = dir.join(b"\xff\xfe name \x01").unwrap();
    root.apply(&Operation::CreateFile { path: file.clone(), meta: owned_meta(0o644) }).unwrap();
    root.apply(&Operation::Write {
        path: file.clone(),
        offset: 0,
        data: Bytes::from_static(b"bytes"),
    })
    .unwrap();
    let local = w.root.join(std::ffi::OsStr::from_bytes(b"d\xe9j\xe0/\xff\xfe name \x01"));
    assert_eq!(fs::read(local).unwrap(), b"bytes");
    let listed = root.list_dir(&dir).unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].path, file);
    root.apply(&Operation::Rename {
        from: file.clone(),
        to: RelPath::new(b"\x80".to_vec()).unwrap(),
    })
    .unwrap();
    assert!(root.stat(&file).unwrap().is_none());
}

#[test]
fn conflicts_and_invalid_operations_are_classified() {
    let w = world();
    let mut root = TargetRoot::open(&w.root).unwrap();
    root.apply(&Operation::CreateFile { path: p("file"), meta: owned_meta(0o644) }).unwrap();
    // A file where a directory is needed.
    let err = root
        .apply(&Operation::CreateFile { path: p("file/child"), meta: owned_meta(0o644) })
        .unwrap_err();
    assert_eq!(err.retry(), Retry::Persistent, "{err}");
    let err =
        root.apply(&Operation::MakeDir { path: p("file"), meta: owned_meta(0o755) }).unwrap_err();
    assert!(matches!(err, ApplyError::Conflict { .. }), "{err}");
    // A directory where a file is needed.
    root.apply(&Operation::MakeDir { path: p("dir"), meta: owned_meta(0o755) }).unwrap();
    let err = root
        .apply(&Operation::Write { path: p("dir"), offset: 0, data: vec![1].into() })
        .unwrap_err();
    assert!(matches!(err, ApplyError::Conflict { .. }), "{err}");
    let err = root.apply(&Operation::Symlink { path: p("s"), target: Vec::new() }).unwrap_err();
    assert_eq!(err.retry(), Retry::Permanent);
}

/// ENOSPC end to end, on a tiny tmpfs when this process may mount one (root in a namespace
/// that allows it); the errno classification itself is unit-tested in `error.rs`.
#[test]
fn a_full_disk_is_persistent() {
    let dir = tempfile::tempdir().unwrap();
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=256k", "tmpfs"])
        .arg(dir.path())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !mounted {
        eprintln!("cannot mount a tmpfs here; ENOSPC classification is covered by unit tests");
        return;
    }
    // No panics while mounted: every outcome reaches the umount below.
    let fill = |dir: &Path| -> Result<Applied, ApplyError> {
        let mut root = TargetRoot::open(dir)?;
        root.apply(&Operation::CreateFile { path: p("big"), meta: owned_meta(0o644) })?;
        root.apply(&Operation::Write { path: p("big"), offset: 0, data: vec![1; 1 << 20].into() })
    };
    let result = fill(dir.path());
    let _ = std::process::Command::new("umount").arg(dir.path()).status();
    let err = result.unwrap_err();
    assert!(matches!(err, ApplyError::DiskFull { .. }), "{err}");
    assert_eq!(err.retry(), Retry::Persistent);
}
