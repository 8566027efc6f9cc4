//! Fuzz harnesses for the wire protocol, shared by the cargo-fuzz targets in `fuzz_targets/`
//! and by `cargo test` in this folder (which replays the seed corpus in `seeds/` through the
//! same checks on stable Rust).
//!
//! - [`frame_decoder`]: arbitrary bytes, cut at arbitrary points, go into
//!   [`FrameDecoder`] and [`decode_payload`]. Checked: no panic; the same messages and the
//!   same error however the stream is cut, and through `push` as through `next_message`; the
//!   decoder buffers no more than it was fed (no allocation from an unchecked length) and
//!   never sits on a whole undecoded frame; once failed it stays failed; every decoded message
//!   re-encodes and decodes to itself and is never a `Compressed` wrapper.
//! - [`handshake`]: [`accept_handshake`] runs against arbitrary bytes as the peer's side of a
//!   `tokio::io::duplex` pair, with and without a shared secret, on a current-thread runtime
//!   with a paused clock (a deadlock shows up at once as the harness's timeout). Checked: no
//!   panic, no hang; it succeeds only with a `Welcome` as the last thing it sent, never
//!   authenticates a peer that did not prove the secret, never challenges without a secret,
//!   and its own proof verifies over the peer's nonce.
//!
//! Run with cargo-fuzz (nightly): `cargo +nightly fuzz run frame_decoder` or
//! `cargo +nightly fuzz run handshake` from this folder; see `README.md`.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use understudy_adapters::WireError;
use understudy_adapters::wire::auth::{NONCE_BYTES, proof, verify};
use understudy_adapters::wire::{
    Compression, EncodedOp, FrameDecoder, HandshakeConfig, LENGTH_PREFIX_BYTES, MAX_FRAME_BYTES,
    Message, PROTOCOL_VERSION, Peer, Role, Secret, accept_handshake, decode_payload, encode_frame,
};

// ---------------------------------------------------------------------------------------------
// Frame decoder
// ---------------------------------------------------------------------------------------------

/// Splits a `frame_decoder` input into its cut lengths and its stream.
///
/// Byte 0 says how many cut-length bytes follow (modulo 16); each is the size of one feed
/// (0: an empty feed), used in turn and cyclically until the stream is used up; the rest of
/// the input is the stream. With no cut bytes, or only zeros, the stream goes in one feed.
pub fn split_frame_decoder_input(data: &[u8]) -> (&[u8], &[u8]) {
    let Some((&n, rest)) = data.split_first() else {
        return (&[], &[]);
    };
    rest.split_at(usize::from(n % 16).min(rest.len()))
}

/// Builds a `frame_decoder` input from cut lengths (at most 15) and a stream.
pub fn frame_decoder_input(cuts: &[u8], stream: &[u8]) -> Vec<u8> {
    assert!(cuts.len() < 16, "at most 15 cut lengths");
    let mut input = vec![cuts.len() as u8];
    input.extend_from_slice(cuts);
    input.extend_from_slice(stream);
    input
}

/// What a decoder made of a stream: the messages in order, then the error that stopped it.
#[derive(Debug, Default, PartialEq, Eq)]
struct Outcome {
    messages: Vec<Message>,
    error: Option<String>,
}

/// Takes every message the bytes fed so far complete; checks what stays buffered.
fn pull(decoder: &mut FrameDecoder, stream: &[u8], fed: usize, out: &mut Outcome) {
    loop {
        match decoder.next_message() {
            Ok(Some(message)) => out.messages.push(message),
            Ok(None) => {
                // Nothing more: what is left must not hold a whole frame.
                let buffered = decoder.buffered();
                assert!(buffered <= fed, "{buffered} bytes buffered, {fed} fed");
                let pending = &stream[fed - buffered..fed];
                if let Some(prefix) = pending.first_chunk::<LENGTH_PREFIX_BYTES>() {
                    let len = u32::from_be_bytes(*prefix);
                    assert!(len <= MAX_FRAME_BYTES, "an oversized prefix {len} was not refused");
                    assert!(
                        pending.len() < LENGTH_PREFIX_BYTES + len as usize,
                        "a whole frame of {len} bytes is buffered and not decoded"
                    );
                }
                return;
            }
            Err(e) => {
                out.error = Some(e.to_string());
                // The stream lost its framing: the decoder stays failed.
                assert!(decoder.next_message().is_err(), "a failed decoder recovered");
                assert!(decoder.push(&[0, 0, 0, 0]).is_err(), "a failed decoder recovered");
                return;
            }
        }
    }
}

/// The feed sizes for a stream: the cut lengths cyclically, or the whole stream at once.
fn feeds(cuts: &[u8], len: usize) -> Vec<usize> {
    if cuts.iter().all(|&c| c == 0) {
        return vec![len];
    }
    let mut sizes = Vec::new();
    let mut total = 0;
    for &cut in cuts.iter().cycle() {
        if total >= len {
            break;
        }
        let size = usize::from(cut).min(len - total);
        sizes.push(size);
        total += size;
    }
    sizes
}

/// Feeds `stream` in pieces of `sizes`, through `extend` and `next_message`.
fn decode_in_pieces(stream: &[u8], sizes: &[usize]) -> Outcome {
    let mut decoder = FrameDecoder::new();
    let mut out = Outcome::default();
    let mut fed = 0;
    for &size in sizes {
        decoder.extend(&stream[fed..fed + size]);
        fed += size;
        // The buffer grows only with what was fed (Vec doubling at most), never from a
        // length prefix.
        assert!(
            decoder.memory_bytes() <= (2 * fed).max(64),
            "the decoder holds {} bytes after being fed {fed}",
            decoder.memory_bytes()
        );
        pull(&mut decoder, stream, fed, &mut out);
        if out.error.is_some() {
            break;
        }
    }
    out
}

/// The `frame_decoder` target: see the crate documentation. Returns how many messages the
/// stream held before it ended or failed.
pub fn frame_decoder(data: &[u8]) -> usize {
    let (cuts, stream) = split_frame_decoder_input(data);

    let whole = decode_in_pieces(stream, &[stream.len()]);
    let pieces = decode_in_pieces(stream, &feeds(cuts, stream.len()));
    assert_eq!(pieces, whole, "the stream decodes differently when cut");

    // `push` gives the same messages (a failing push drops those completed in the same call,
    // so its messages are a prefix) and the same error.
    let mut decoder = FrameDecoder::new();
    let mut pushed = Vec::new();
    let mut push_error = None;
    let mut at = 0;
    for size in feeds(cuts, stream.len()) {
        match decoder.push(&stream[at..at + size]) {
            Ok(messages) => pushed.extend(messages),
            Err(e) => {
                push_error = Some(e.to_string());
                break;
            }
        }
        at += size;
    }
    assert!(whole.messages.starts_with(&pushed), "push returned other messages");
    assert_eq!(push_error, whole.error, "push failed differently");
    if push_error.is_none() {
        assert_eq!(pushed, whole.messages);
    }

    for message in &whole.messages {
        assert!(
            !matches!(message, Message::Compressed { .. }),
            "a Compressed wrapper came out of the decoder"
        );
        // A peer may encode more compactly than we do (positional structs), so a message near
        // the limit may not re-encode under it; those are skipped.
        if let Ok(frame) = encode_frame(message, Compression::None) {
            let again = decode_payload(&frame.bytes[LENGTH_PREFIX_BYTES..]);
            assert_eq!(again.as_ref().ok(), Some(message), "a decoded message does not round-trip");
        }
    }

    // The payload decoder on its own, on the whole stream, agrees with the frame decoder on
    // the same bytes behind a correct prefix.
    let direct = decode_payload(stream);
    if let Ok(len) = u32::try_from(stream.len())
        && len <= MAX_FRAME_BYTES
    {
        let mut framed = len.to_be_bytes().to_vec();
        framed.extend_from_slice(stream);
        let mut decoder = FrameDecoder::new();
        match (&direct, decoder.push(&framed)) {
            (Ok(message), Ok(messages)) => assert_eq!(messages, std::slice::from_ref(message)),
            (Err(a), Err(b)) => assert_eq!(a.to_string(), b.to_string()),
            (a, b) => panic!("decode_payload gave {a:?}, FrameDecoder gave {b:?}"),
        }
    }

    whole.messages.len()
}

// ---------------------------------------------------------------------------------------------
// Handshake
// ---------------------------------------------------------------------------------------------

/// The accepting engine's id in the `handshake` harness.
pub const SERVER_ID: &str = "fuzz-target";

/// The shared secret in the `handshake` harness, when byte 0 asks for one.
pub const SECRET: &[u8] = b"fuzz-secret";

/// Input flag: the server has the shared secret.
pub const WITH_SECRET: u8 = 1;

/// Input flag: the harness answers the server's `Challenge` with a valid `Proof` for the
/// `Hello` the input starts with (so the fuzzer gets past the proof and reaches the
/// peer's `Challenge`; it cannot forge an HMAC itself).
pub const ANSWER_CHALLENGE: u8 = 2;

/// Bytes of the in-memory pipe: small, so both directions see back-pressure.
const PIPE_BYTES: usize = 512;

/// Builds a `handshake` input: the flags, the write size (0: all at once; at most 63), and
/// the peer's bytes.
pub fn handshake_input(flags: u8, write_size: u8, stream: &[u8]) -> Vec<u8> {
    assert!(write_size < 64, "write sizes are 0..=63");
    let mut input = vec![(flags & 3) | (write_size << 2)];
    input.extend_from_slice(stream);
    input
}

/// The first whole frame of `stream` and the rest, or all of it and nothing.
fn first_frame(stream: &[u8]) -> (&[u8], &[u8]) {
    match stream.first_chunk::<LENGTH_PREFIX_BYTES>() {
        Some(prefix) => {
            let end = LENGTH_PREFIX_BYTES.saturating_add(u32::from_be_bytes(*prefix) as usize);
            if end <= stream.len() { stream.split_at(end) } else { (stream, &[]) }
        }
        None => (stream, &[]),
    }
}

/// The first message of a stream, if it is one whole frame (within the limit) that decodes.
fn first_message(stream: &[u8]) -> Option<Message> {
    let (frame, _) = first_frame(stream);
    let len = u32::from_be_bytes(*frame.first_chunk::<LENGTH_PREFIX_BYTES>()?);
    if len > MAX_FRAME_BYTES || frame.len() != LENGTH_PREFIX_BYTES + len as usize {
        return None;
    }
    decode_payload(&frame[LENGTH_PREFIX_BYTES..]).ok()
}

async fn write_in_pieces<W: tokio::io::AsyncWrite + Unpin>(
    writer: &mut W,
    bytes: &[u8],
    size: usize,
) -> bool {
    for piece in bytes.chunks(if size == 0 { bytes.len().max(1) } else { size }) {
        if writer.write_all(piece).await.is_err() {
            return false; // the server hung up
        }
        tokio::task::yield_now().await;
    }
    true
}

/// The `handshake` target: see the crate documentation.
///
/// Byte 0 holds the flags ([`WITH_SECRET`], [`ANSWER_CHALLENGE`]) in bits 0–1 and the size
/// of each write in bits 2–7 (0: one write); the rest is what the peer sends, after which it
/// closes its sending side. Returns the server's result.
pub fn handshake(data: &[u8]) -> Result<Peer, WireError> {
    let Some((&flags, stream)) = data.split_first() else {
        return Err(WireError::Closed);
    };
    let with_secret = flags & WITH_SECRET != 0;
    let answer = flags & ANSWER_CHALLENGE != 0;
    let write_size = usize::from(flags >> 2);
    let secret = Secret::new(SECRET);
    let config = HandshakeConfig {
        engine_id: SERVER_ID.into(),
        role: Role::Target,
        secret: with_secret.then(|| secret.clone()),
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("a current-thread runtime");

    let (result, sent, peer_challenge) = runtime.block_on(async {
        let (peer, mut server) = tokio::io::duplex(PIPE_BYTES);
        let (mut peer_rd, mut peer_wr) = tokio::io::split(peer);
        let (first_tx, first_rx) = tokio::sync::oneshot::channel::<Option<Message>>();

        let server_side = async move {
            let result = accept_handshake(&mut server, &config).await;
            drop(server); // the connection closes with the handshake's end, as in the engine
            result
        };

        // What the server sends, all of it; the first message is handed to the writer.
        let reader = async move {
            let mut decoder = FrameDecoder::new();
            let mut sent = Vec::new();
            let mut first_tx = Some(first_tx);
            let mut buf = [0_u8; 256];
            loop {
                let n = peer_rd.read(&mut buf).await.unwrap_or(0);
                if n == 0 {
                    break;
                }
                let messages = decoder.push(&buf[..n]).expect("the server sends valid frames");
                sent.extend(messages);
                if !sent.is_empty()
                    && let Some(tx) = first_tx.take()
                {
                    let _ = tx.send(sent.first().cloned());
                }
            }
            assert_eq!(decoder.buffered(), 0, "the server left half a frame");
            if let Some(tx) = first_tx.take() {
                let _ = tx.send(None);
            }
            sent
        };

        let secret = &secret;
        let writer = async move {
            let (first, rest) = if answer { first_frame(stream) } else { (stream, &[][..]) };
            if !write_in_pieces(&mut peer_wr, first, write_size).await {
                return None;
            }
            let mut peer_challenge = None;
            if answer && let Some(Message::Hello { engine_id, role, .. }) = first_message(first) {
                // A whole Hello is in: the server speaks next (or hangs up).
                if let Ok(Some(Message::Challenge { nonce })) = first_rx.await {
                    let hmac = proof(secret, &nonce, role, &engine_id);
                    let frame = encode_frame(&Message::Proof { hmac }, Compression::None)
                        .expect("a proof encodes");
                    if !write_in_pieces(&mut peer_wr, &frame.bytes, write_size).await {
                        return None;
                    }
                    if let Some(Message::Challenge { nonce }) = first_message(rest) {
                        peer_challenge = Some(nonce);
                    }
                }
            }
            if write_in_pieces(&mut peer_wr, rest, write_size).await {
                let _ = peer_wr.shutdown().await;
            }
            peer_challenge
        };

        let all = async { tokio::join!(server_side, reader, writer) };
        // The paused clock jumps ahead only when every task is stuck, so this fires at once on
        // a deadlock and never on a slow machine.
        match tokio::time::timeout(Duration::from_secs(3600), all).await {
            Ok(done) => done,
            Err(_) => panic!("the handshake hung"),
        }
    });

    // What the server did must match what it returned.
    let last = sent.last();
    match &result {
        Ok(peer) => {
            assert_eq!(
                last,
                Some(&Message::Welcome {
                    protocol_version: PROTOCOL_VERSION,
                    engine_id: SERVER_ID.into()
                }),
                "accepted without a Welcome: {sent:?}"
            );
            assert_eq!(peer.protocol_version, PROTOCOL_VERSION);
            assert_eq!(peer.authenticated, with_secret, "authenticated mismatch");
            if with_secret {
                assert!(answer, "a peer that never saw a valid proof was authenticated");
                let [Message::Challenge { nonce }, Message::Proof { hmac }, _] = sent.as_slice()
                else {
                    panic!("authenticated with the wrong exchange: {sent:?}");
                };
                assert_eq!(nonce.len(), NONCE_BYTES);
                let theirs = peer_challenge.expect("the server answered a challenge it got");
                assert!(
                    verify(&secret, &theirs, Role::Target, SERVER_ID, hmac),
                    "bad server proof"
                );
            } else {
                assert_eq!(sent.len(), 1, "extra messages without a secret: {sent:?}");
            }
        }
        Err(_) => {
            assert!(
                !sent.iter().any(|m| matches!(m, Message::Welcome { .. })),
                "sent Welcome and failed: {sent:?}"
            );
        }
    }
    if !with_secret {
        assert!(
            !sent.iter().any(|m| matches!(m, Message::Challenge { .. } | Message::Proof { .. })),
            "authentication without a secret: {sent:?}"
        );
    }
    result
}

// ---------------------------------------------------------------------------------------------
// Seeds
// ---------------------------------------------------------------------------------------------

fn frame(message: &Message, compression: Compression) -> Vec<u8> {
    encode_frame(message, compression).expect("a seed message encodes").bytes
}

fn hello(version: u32) -> Message {
    Message::Hello {
        protocol_version: version,
        engine_id: "fuzz-source".into(),
        role: Role::Source,
    }
}

/// The seed corpus, generated from valid frames: `(target, file name, input)`.
/// `cargo test -- --ignored regenerate_seeds` writes it to `seeds/<target>/`.
pub fn seeds() -> Vec<(&'static str, &'static str, Vec<u8>)> {
    use understudy_adapters::fsops::{Operation, RelPath};
    let path = RelPath::new("dir/file").expect("a valid path");
    let write = Operation::Write { path: path.clone(), offset: 4096, data: b"abc".repeat(100).into() };
    let ops = Message::Ops {
        first_seq: 7,
        ops: vec![
            EncodedOp::encode(&write).expect("an operation encodes"),
            EncodedOp::encode(&Operation::Remove { path: path.clone() })
                .expect("an operation encodes"),
        ],
    };
    let messages = [
        hello(PROTOCOL_VERSION),
        Message::Welcome { protocol_version: PROTOCOL_VERSION, engine_id: "t".into() },
        Message::Refused { reason: "no".into(), protocol_version: PROTOCOL_VERSION },
        Message::Challenge { nonce: vec![7; NONCE_BYTES] },
        Message::Proof { hmac: vec![9; 32] },
        ops.clone(),
        Message::Ack { seq: 8 },
        Message::Applied { seq: 9 },
        Message::Heartbeat { at_ms: 1 },
        Message::Pause,
        Message::QueryMeta { query_id: 1, paths: vec![path, RelPath::root()] },
        Message::Close { reason: "bye".into() },
    ];
    let stream: Vec<u8> = messages.iter().flat_map(|m| frame(m, Compression::None)).collect();
    let zstd = frame(&ops, Compression::Zstd { level: 3 });

    let mut out = vec![
        ("frame_decoder", "stream-whole", frame_decoder_input(&[], &stream)),
        ("frame_decoder", "stream-cut", frame_decoder_input(&[1, 3, 0, 17, 200], &stream)),
        ("frame_decoder", "zstd-ops", frame_decoder_input(&[], &zstd)),
        ("frame_decoder", "zstd-ops-bytewise", frame_decoder_input(&[1], &zstd)),
        ("frame_decoder", "oversized-prefix", frame_decoder_input(&[2], &u32::MAX.to_be_bytes())),
    ];
    for (name, message) in [("hello", &messages[0]), ("ops", &ops), ("query-meta", &messages[9])] {
        out.push((
            "frame_decoder",
            name,
            frame_decoder_input(&[], &frame(message, Compression::None)),
        ));
    }

    let h = frame(&hello(PROTOCOL_VERSION), Compression::None);
    let challenge = frame(&Message::Challenge { nonce: vec![5; NONCE_BYTES] }, Compression::None);
    let bad_proof = frame(&Message::Proof { hmac: vec![0; 32] }, Compression::None);
    let ops = frame(&ops, Compression::None);
    let cat = |parts: &[&[u8]]| parts.concat();
    out.extend([
        ("handshake", "hello-no-secret", handshake_input(0, 0, &h)),
        (
            "handshake",
            "hello-newer-version",
            handshake_input(0, 0, &frame(&hello(2), Compression::None)),
        ),
        (
            "handshake",
            "secret-wrong-proof",
            handshake_input(WITH_SECRET, 0, &cat(&[&h, &bad_proof, &challenge])),
        ),
        (
            "handshake",
            "secret-answered",
            handshake_input(WITH_SECRET | ANSWER_CHALLENGE, 0, &cat(&[&h, &challenge])),
        ),
        (
            "handshake",
            "secret-answered-bytewise",
            handshake_input(WITH_SECRET | ANSWER_CHALLENGE, 1, &cat(&[&h, &challenge])),
        ),
        (
            "handshake",
            "secret-answered-then-ops",
            handshake_input(WITH_SECRET | ANSWER_CHALLENGE, 5, &cat(&[&h, &ops])),
        ),
        (
            "handshake",
            "proof-before-hello",
            handshake_input(WITH_SECRET, 0, &cat(&[&bad_proof, &h])),
        ),
        ("handshake", "two-hellos", handshake_input(WITH_SECRET, 3, &cat(&[&h, &h]))),
    ]);
    out
}
