//! Replays the seed corpus (and any inputs saved under `seeds/`) through the fuzz harnesses
//! on stable Rust, so the harnesses and seeds stay in step with the wire protocol.
//!
//! Run from `fuzz/`: `cargo test`; `cargo test -- --ignored regenerate_seeds` rewrites
//! `seeds/<target>/` from `understudy_fuzz::seeds()` after a protocol change.

use std::path::PathBuf;

use understudy_fuzz::{ANSWER_CHALLENGE, WITH_SECRET, frame_decoder, handshake, seeds};

fn seed_dir(target: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("seeds").join(target)
}

#[test]
fn generated_seeds_pass_the_harnesses() {
    for (target, name, input) in seeds() {
        match target {
            "frame_decoder" => {
                let _ = frame_decoder(&input);
            }
            "handshake" => {
                let result = handshake(&input);
                // The answered seeds must get all the way through, or the fuzzer never
                // reaches the end of the exchange.
                if name.starts_with("secret-answered") && !name.ends_with("ops") {
                    let peer = result.as_ref().unwrap_or_else(|e| panic!("{name}: {e}"));
                    assert!(peer.authenticated, "{name}");
                }
                if name == "hello-no-secret" {
                    assert!(result.is_ok(), "{name}: {result:?}");
                }
            }
            other => panic!("unknown target {other}"),
        }
    }
    // Sanity of the flag layout.
    assert_eq!(WITH_SECRET | ANSWER_CHALLENGE, 3);
}

#[test]
fn saved_inputs_pass_the_harnesses() {
    for target in ["frame_decoder", "handshake"] {
        let Ok(entries) = std::fs::read_dir(seed_dir(target)) else { continue };
        for entry in entries {
            let path = entry.expect("a directory entry").path();
            let input = std::fs::read(&path).expect("a readable seed");
            if target == "frame_decoder" {
                let _ = frame_decoder(&input);
            } else {
                let _ = handshake(&input);
            }
        }
    }
}

#[test]
#[ignore = "writes seeds/; run after a protocol change"]
fn regenerate_seeds() {
    for (target, name, input) in seeds() {
        let dir = seed_dir(target);
        std::fs::create_dir_all(&dir).expect("the seed folder");
        std::fs::write(dir.join(name), input).expect("a written seed");
    }
}
