// Goal: show that the source-side helpers see a tree exactly (order, kinds, hard links,
// holes) and that block comparison sends only what changed. Method: build real trees in
// temporary directories; check the scan order and entries; check data ranges and block
// diffs on files with known holes, edits, appends and truncations; and run a miniature
// mirror (scan → operations → `TargetRoot::apply` → scan of the target) whose result must
// match the source entry for entry, holes and hard links included.

#![allow(clippy::unwrap_used)] // test helpers should panic on anything unexpected

use std::collections::HashMap;
use std::fs::{self, File};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, MetadataExt, PermissionsExt, symlink};
use std::path::Path;

use understudy_adapters::fsops::{
    self, BLOCK_SIZE, EntryKind, Meta, Operation, RelPath, SpecialKind, TargetRoot, block_hashes,
    block_hashes_range, data_ranges, diff_blocks, read_at, scan,
};

fn names(root: &Path) -> Vec<String> {
    scan(root).map(|e| e.unwrap().path.to_string()).collect()
}

#[test]
fn scan_order_is_sorted_by_bytes_with_directories_before_their_contents() {
    let d = tempfile::tempdir().unwrap();
    let r = d.path();
    for dir in ["b", "a", "a/z", "a/y", "a.b"] {
        fs::create_dir(r.join(dir)).unwrap();
    }
    for file in ["a/z/1", "a/f", "B", "a.b/x", "b/k"] {
        fs::write(r.join(file), b"x").unwrap();
    }
    let expected = [".", "B", "a", "a/f", "a/y", "a/z", "a/z/1", "a.b", "a.b/x", "b", "b/k"];
    assert_eq!(names(r), expected);
    // Deterministic: the same on every run.
    assert_eq!(names(r), expected);

    // skip_dir leaves a directory's contents out.
    let mut s = scan(r);
    let mut seen = Vec::new();
    while let Some(e) = s.next() {
        let e = e.unwrap();
        if e.path.as_bytes() == b"a" {
            s.skip_dir();
        }
        seen.push(e.path.to_string());
    }
    assert_eq!(seen, [".", "B", "a", "a.b", "a.b/x", "b", "b/k"]);
}

#[test]
fn scan_reports_kinds_links_and_special_files() {
    let d = tempfile::tempdir().unwrap();
    let r = d.path();
    fs::write(r.join("f"), b"data").unwrap();
    fs::hard_link(r.join("f"), r.join("g")).unwrap();
    symlink("/etc", r.join("l")).unwrap();
    let fifo = std::process::Command::new("mkfifo").arg(r.join("p")).status();
    let _sock = std::os::unix::net::UnixListener::bind(r.join("s")).unwrap();
    fs::write(r.join(std::ffi::OsStr::from_bytes(b"\xff")), b"").unwrap();
    let entries: HashMap<Vec<u8>, _> =
        scan(r).map(|e| e.unwrap()).map(|e| (e.path.as_bytes().to_vec(), e)).collect();
    assert_eq!(entries[&b""[..]].kind, EntryKind::Dir);
    let (f, g) = (&entries[&b"f"[..]], &entries[&b"g"[..]]);
    assert_eq!((f.kind, f.nlink, f.meta.size_bytes), (EntryKind::File, 2, 4));
    assert_eq!((f.dev, f.ino), (g.dev, g.ino));
    assert_eq!(entries[&b"l"[..]].kind, EntryKind::Symlink);
    assert_eq!(entries[&b"l"[..]].link_target.as_deref(), Some(&b"/etc"[..]));
    assert_eq!(entries[&b"s"[..]].kind, EntryKind::Special(SpecialKind::Socket));
    if fifo.is_ok_and(|s| s.success()) {
        assert_eq!(entries[&b"p"[..]].kind, EntryKind::Special(SpecialKind::Fifo));
    }
    assert!(entries.contains_key(&b"\xff"[..]));
    // Not a directory: one error, then the end.
    let mut s = scan(r.join("f"));
    assert!(s.next().unwrap().is_err());
    assert!(s.next().is_none());
}

#[test]
fn data_ranges_find_holes() {
    let d = tempfile::tempdir().unwrap();
    let path = d.path().join("sparse");
    let f = File::create(&path).unwrap();
    f.set_len(16 << 20).unwrap();
    f.write_all_at(&[1; 4096], 4 << 20).unwrap();
    f.write_all_at(&[2; 4096], 12 << 20).unwrap();
    f.sync_all().unwrap();
    let f = File::open(&path).unwrap();
    let ranges = data_ranges(&f).unwrap();
    // Two data regions (the file system may round them out to its block size).
    assert_eq!(ranges.len(), 2, "{ranges:?}");
    assert!(ranges[0].start <= 4 << 20 && ranges[0].end >= (4 << 20) + 4096);
    assert!(ranges[1].start <= 12 << 20 && ranges[1].end >= (12 << 20) + 4096);
    assert!(ranges[1].end - ranges[0].start < 16 << 20);
    // Hashing skips the holes but hashes them as zeros: same as a dense copy.
    let dense = d.path().join("dense");
    fs::write(&dense, fs::read(&path).unwrap()).unwrap();
    let a = block_hashes(&File::open(&path).unwrap(), BLOCK_SIZE).unwrap();
    let b = block_hashes(&File::open(&dense).unwrap(), BLOCK_SIZE).unwrap();
    assert_eq!(a, b);
    assert_eq!(a.hashes.len(), (16 << 20) / BLOCK_SIZE as usize);
}

#[test]
fn block_diffs_send_only_what_changed() {
    let d = tempfile::tempdir().unwrap();
    let bs = 4096_u32;
    let old: Vec<u8> = (0..40_000_u32).map(|i| (i * 7 % 251) as u8).collect();
    let path = d.path().join("f");
    fs::write(&path, &old).unwrap();
    let target = block_hashes(&File::open(&path).unwrap(), bs).unwrap();
    assert_eq!(target.hashes.len(), 10);
    let diff = |data: &[u8]| {
        fs::write(&path, data).unwrap();
        diff_blocks(&File::open(&path).unwrap(), &target).unwrap()
    };

    assert!(diff(&old).is_empty());

    // One byte changed in block 2, and two in adjacent blocks 5 and 6: coalesced.
    let mut edited = old.clone();
    edited[2 * 4096 + 10] ^= 1;
    edited[5 * 4096 + 4095] ^= 1;
    edited[6 * 4096] ^= 1;
    let d1 = diff(&edited);
    assert_eq!(d1.changed, vec![8192..12288, 20480..28672]);
    assert_eq!((d1.tail.clone(), d1.truncate_to), (None, None));

    // An append sends only the new bytes, even though the last block was partial.
    let mut appended = old.clone();
    appended.extend_from_slice(b"new tail");
    let d2 = diff(&appended);
    assert!(d2.changed.is_empty(), "{:?}", d2.changed);
    assert_eq!(d2.tail, Some(40_000..40_008));
    assert_eq!(d2.bytes_to_send(), 8);

    // A truncation inside block 3: the rest of that block differs by length, then truncate.
    let d3 = diff(&old[..13_000]);
    assert_eq!(d3.changed, vec![12288..13000]);
    assert_eq!(d3.truncate_to, Some(13_000));

    // Applying a diff to a copy of the old file reproduces the new one.
    let copy = d.path().join("copy");
    fs::write(&copy, &old).unwrap();
    fs::write(&path, &edited).unwrap();
    let src = File::open(&path).unwrap();
    let dst = fs::OpenOptions::new().write(true).open(&copy).unwrap();
    for r in d1.changed.iter().chain(d1.tail.iter()) {
        dst.write_all_at(&read(&src, r.start, (r.end - r.start) as usize), r.start).unwrap();
    }
    assert_eq!(fs::read(&copy).unwrap(), edited);

    // Ranged hashes compare only their blocks.
    fs::write(&path, &old).unwrap();
    let part = block_hashes_range(&File::open(&path).unwrap(), bs, 3, 2).unwrap();
    assert_eq!((part.first_block, part.hashes.len()), (3, 2));
    assert_eq!(part.hashes[..], target.hashes[3..5]);
    fs::write(&path, &edited).unwrap();
    let d4 = diff_blocks(&File::open(&path).unwrap(), &part).unwrap();
    assert!(d4.is_empty(), "{d4:?}");
}

#[test]
fn read_at_is_short_only_at_the_end() {
    let d = tempfile::tempdir().unwrap();
    let path = d.path().join("f");
    fs::write(&path, b"0123456789").unwrap();
    let f = File::open(&path).unwrap();
    assert_eq!(read(&f, 2, 3), b"234");
    assert_eq!(read(&f, 8, 100), b"89");
    assert!(read(&f, 100, 10).is_empty());
}

/// Up to `len` bytes at `offset`, through `read_at`.
fn read(file: &File, offset: u64, len: usize) -> Vec<u8> {
    let mut buf = vec![0; len];
    let n = read_at(file, &mut buf, offset).unwrap();
    buf.truncate(n);
    buf
}

/// A miniature mirror, the way the engine will drive these modules.
fn mirror(source: &Path, target: &mut TargetRoot) {
    let mut links: HashMap<(u64, u64), RelPath> = HashMap::new();
    let mut dirs = Vec::new();
    for entry in scan(source) {
        let e = entry.unwrap();
        let mut ops = Vec::new();
        match e.kind {
            EntryKind::Dir => {
                ops.push(Operation::MakeDir { path: e.path.clone(), meta: e.meta });
                dirs.push((e.path.clone(), e.meta));
            }
            EntryKind::Symlink => {
                ops.push(Operation::Symlink {
                    path: e.path.clone(),
                    target: e.link_target.clone().unwrap(),
                });
                ops.push(Operation::SetMeta { path: e.path.clone(), meta: e.meta });
            }
            EntryKind::File => {
                if e.nlink > 1 {
                    if let Some(first) = links.get(&(e.dev, e.ino)) {
                        target
                            .apply(&Operation::HardLink {
                                path: e.path.clone(),
                                existing: first.clone(),
                            })
                            .unwrap();
                        continue;
                    }
                    links.insert((e.dev, e.ino), e.path.clone());
                }
                let f = File::open(e.path.to_local(source)).unwrap();
                ops.push(Operation::CreateFile { path: e.path.clone(), meta: e.meta });
                ops.push(Operation::Truncate { path: e.path.clone(), len: e.meta.size_bytes });
                for r in data_ranges(&f).unwrap() {
                    let mut at = r.start;
                    while at < r.end {
                        let n = (r.end - at).min(u64::from(BLOCK_SIZE));
                        let data = read(&f, at, n as usize);
                        ops.push(Operation::Write {
                            path: e.path.clone(),
                            offset: at,
                            data: data.into(),
                        });
                        at += n;
                    }
                }
                ops.push(Operation::SetMeta { path: e.path.clone(), meta: e.meta });
            }
            EntryKind::Special(_) => continue,
        }
        for op in ops {
            // Through the wire codec, as it would travel.
            let op: Operation =
                rmp_serde::from_slice(&rmp_serde::to_vec_named(&op).unwrap()).unwrap();
            target.apply(&op).unwrap();
        }
    }
    // Directory attributes last, deepest first, as their contents changed their mtimes.
    for (path, meta) in dirs.into_iter().rev() {
        target.apply(&Operation::SetMeta { path, meta }).unwrap();
    }
    target.sync().unwrap();
}

#[test]
fn a_miniature_mirror_reproduces_the_tree() {
    let d = tempfile::tempdir().unwrap();
    let src = d.path().join("src");
    fs::create_dir_all(src.join("docs/empty")).unwrap();
    fs::create_dir_all(src.join(std::ffi::OsStr::from_bytes(b"caf\xe9"))).unwrap();
    fs::write(src.join("docs/a.txt"), b"alpha").unwrap();
    fs::write(src.join(std::ffi::OsStr::from_bytes(b"caf\xe9/\x01\xfe")), vec![3; 200_000])
        .unwrap();
    fs::hard_link(src.join("docs/a.txt"), src.join("hard")).unwrap();
    symlink("docs/a.txt", src.join("rel")).unwrap();
    symlink("/nowhere", src.join("dangling")).unwrap();
    let sparse = File::create(src.join("sparse")).unwrap();
    sparse.set_len(8 << 20).unwrap();
    sparse.write_all_at(b"middle", 4 << 20).unwrap();
    fs::set_permissions(src.join("docs/a.txt"), fs::Permissions::from_mode(0o4750)).unwrap();
    fs::set_permissions(src.join("docs/empty"), fs::Permissions::from_mode(0o700)).unwrap();

    let mut target = TargetRoot::open(d.path().join("dst")).unwrap();
    mirror(&src, &mut target);

    let strip =
        |e: fsops::Entry| (e.path, e.kind, Meta { atime_ns: 0, ..e.meta }, e.nlink, e.link_target);
    let mut source_entries: Vec<_> = scan(&src).map(|e| strip(e.unwrap())).collect();
    let mut target_entries: Vec<_> =
        scan(d.path().join("dst")).map(|e| strip(e.unwrap())).collect();
    // Directory sizes depend on the file system's bookkeeping, not on content.
    for (_, kind, meta, _, _) in source_entries.iter_mut().chain(target_entries.iter_mut()) {
        if *kind == EntryKind::Dir {
            meta.size_bytes = 0;
        }
    }
    assert_eq!(source_entries, target_entries);
    let dst = d.path().join("dst");
    assert_eq!(fs::read(dst.join("sparse")).unwrap(), fs::read(src.join("sparse")).unwrap());
    assert!(fs::metadata(dst.join("sparse")).unwrap().blocks() < 1024);
    assert_eq!(
        fs::metadata(dst.join("hard")).unwrap().ino(),
        fs::metadata(dst.join("docs/a.txt")).unwrap().ino()
    );
}
