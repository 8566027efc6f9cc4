//! Fuzz target: the streaming frame decoder (`FrameDecoder`) and `decode_payload` on
//! arbitrary bytes cut at arbitrary points.
//!
//! Checks no panic, the same messages and error however the stream is cut, no buffering
//! beyond what was fed (no allocation from an unchecked length), a failed decoder stays
//! failed, and decoded messages round-trip; the harness is `understudy_fuzz::frame_decoder`
//! (src/lib.rs), which documents the input layout.
//!
//! Run from `fuzz/`: `cargo +nightly fuzz run frame_decoder corpus/frame_decoder seeds/frame_decoder --
//! -max_total_time=120 -malloc_limit_mb=64` (see README.md).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = understudy_fuzz::frame_decoder(data);
});
