//! Fuzzes the frame decoder: arbitrary bytes, fed in arbitrary pieces, must never panic,
//! and whatever decodes must re-encode and decode to the same message.
#![no_main]

use libfuzzer_sys::fuzz_target;
use understudy_adapters::wire::{Compression, FrameDecoder, decode_payload, encode_frame};

fuzz_target!(|data: &[u8]| {
    // The first byte chooses a chunk size, the rest is the stream.
    let Some((&chunk, stream)) = data.split_first() else { return };
    let chunk = usize::from(chunk).max(1);
    let mut decoder = FrameDecoder::new();
    for piece in stream.chunks(chunk) {
        match decoder.push(piece) {
            Ok(messages) => {
                for message in messages {
                    // A peer may encode more compactly than we do (positional structs), so a
                    // message near the limit may not re-encode under it; skip those.
                    if let Ok(frame) = encode_frame(&message, Compression::None) {
                        let again = decode_payload(&frame.bytes[4..]).expect("a re-encoded message decodes");
                        assert_eq!(again, message);
                    }
                }
            }
            Err(_) => break,
        }
    }
    // The payload decoder on its own.
    let _ = decode_payload(stream);
});
