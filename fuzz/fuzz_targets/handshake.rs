//! Fuzz target: the accepting side of the handshake (`accept_handshake`) against arbitrary
//! bytes as the peer, over a `tokio::io::duplex` pair on a current-thread runtime, with and
//! without a shared secret.
//!
//! Checks that it returns (an error or a peer) without panicking or hanging (bounded by a
//! timeout on a paused clock, so a deadlock is caught at once), never authenticates a peer
//! that did not prove the secret, and that what it sent matches what it returned; the
//! harness is `understudy_fuzz::handshake` (src/lib.rs), which documents the input layout.
//!
//! Run from `fuzz/`: `cargo +nightly fuzz run handshake corpus/handshake seeds/handshake --
//! -max_total_time=120 -malloc_limit_mb=64` (see README.md).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = understudy_fuzz::handshake(data);
});
