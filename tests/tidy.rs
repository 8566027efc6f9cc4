//! Tidy checks run with `cargo test`: the workspace's dependency rules and conventions.
//!
//! Method: read every member's Cargo.toml and source tree and fail on a forbidden dependency
//! edge (ARCHITECTURE.md's "Architecture Invariant" lines), a crate without a `//!` header, or
//! a missing lint inheritance.

use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn manifest(member: &str) -> toml::Table {
    let path = root().join(member).join("Cargo.toml");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    text.parse().unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Every dependency name of a member (normal, build and dev).
fn dependencies(member: &str) -> Vec<String> {
    let table = manifest(member);
    ["dependencies", "build-dependencies"]
        .iter()
        .filter_map(|section| table.get(*section).and_then(|d| d.as_table()))
        .flat_map(|deps| deps.keys().cloned())
        .collect()
}

/// (member folder, crates it must never depend on, with the reason).
const FORBIDDEN: &[(&str, &[&str], &str)] = &[
    (
        "core",
        &[
            "sled",
            "tokio",
            "rmp-serde",
            "understudy-states",
            "understudy-store",
            "understudy-adapters",
            "understudy-simulator",
            "rand",
        ],
        "core is pure: no storage, no runtime, no adapters, no randomness",
    ),
    (
        "states",
        &[
            "sled",
            "tokio",
            "rmp-serde",
            "understudy-store",
            "understudy-adapters",
            "understudy-simulator",
            "rand",
        ],
        "states is pure: no storage, no runtime, no adapters",
    ),
    (
        "store",
        &["understudy-states", "understudy-adapters", "understudy-simulator", "tokio", "statig"],
        "store knows nothing about the machine or the world",
    ),
    (
        "adapters",
        &["understudy-store", "understudy-states", "understudy-simulator", "sled", "statig"],
        "adapters never append events and never decide",
    ),
    (
        "simulator",
        &["understudy-store", "sled"],
        "the simulator runs on any EventStore; the binary hands it sled",
    ),
];

#[test]
fn no_forbidden_dependency_edges() {
    let mut broken = Vec::new();
    for (member, forbidden, why) in FORBIDDEN {
        for dep in dependencies(member) {
            if forbidden.contains(&dep.as_str()) {
                broken.push(format!("{member} depends on {dep}: {why}"));
            }
        }
    }
    assert!(broken.is_empty(), "forbidden dependency edges:\n{}", broken.join("\n"));
}

#[test]
fn every_member_is_listed_and_inherits_the_workspace_lints() {
    let workspace = manifest(".");
    let members: Vec<&str> = workspace["workspace"]["members"]
        .as_array()
        .expect("members is a list")
        .iter()
        .map(|m| m.as_str().expect("member names are strings"))
        .collect();
    for folder in ["core", "states", "store", "adapters", "simulator"] {
        assert!(members.contains(&folder), "{folder} is not a workspace member");
        let table = manifest(folder);
        let name = table["package"]["name"].as_str().expect("a package name");
        assert_eq!(name, format!("understudy-{folder}"), "package names are understudy-<folder>");
        assert_eq!(
            table.get("lints").and_then(|l| l.get("workspace")).and_then(|w| w.as_bool()),
            Some(true),
            "{folder} must set [lints] workspace = true"
        );
    }
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn every_crate_root_has_a_header() {
    for root_file in [
        "core/src/lib.rs",
        "states/src/lib.rs",
        "store/src/lib.rs",
        "adapters/src/lib.rs",
        "simulator/src/lib.rs",
        "src/main.rs",
    ] {
        let text = std::fs::read_to_string(root().join(root_file)).unwrap_or_default();
        assert!(
            text.starts_with("//!"),
            "{root_file} must start with a //! header saying what the crate is"
        );
    }
}

#[test]
fn pure_crates_do_not_read_the_clock_or_touch_files() {
    let mut offenders = Vec::new();
    for member in ["core", "states"] {
        let mut files = Vec::new();
        rust_files(&root().join(member).join("src"), &mut files);
        for file in files {
            let text = std::fs::read_to_string(&file).unwrap_or_default();
            for needle in [
                "Utc::now",
                "SystemTime::now",
                "Instant::now",
                "std::fs::",
                "std::net::",
                "thread::sleep",
            ] {
                if text.contains(needle) {
                    offenders.push(format!("{}: {needle}", file.display()));
                }
            }
        }
    }
    assert!(offenders.is_empty(), "core and states are pure:\n{}", offenders.join("\n"));
}
