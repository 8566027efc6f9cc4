// Goal: show that the wire protocol round-trips every message, cannot be made to panic or to
// allocate from a hostile length, decodes a valid stream the same however it is split, and
// that the handshake refuses wrong versions, wrong secrets, replayed proofs and messages out
// of order clearly on both sides. Method: encode every variant and decode it back (plain and
// zstd); property tests feed arbitrary bytes and arbitrary splits of valid streams to
// `FrameDecoder`; hand-made frames probe the limits (oversized prefix, lying or nested
// compression, trailing bytes); the async helpers and the handshake (a scripted peer for
// replays and reordering) run over in-memory tokio duplex pipes.

#![allow(clippy::unwrap_used)] // test helpers should panic on anything unexpected

use proptest::prelude::*;
use understudy_adapters::WireError;
use understudy_adapters::fsops::{
    BlockHash, BlockHashes, Entry, EntryKind, Meta, Operation, RelPath,
};
use understudy_adapters::wire::{
    Codec, Compression, EncodedOp, FrameDecoder, HandshakeConfig, MAX_FRAME_BYTES, Message,
    PROTOCOL_VERSION, Role, Secret, accept_handshake, connect_handshake, decode_payload,
    decode_shared_payload, encode_frame, read_message, write_message,
};
use understudy_core::effect::{ScriptResult, ScriptStage};
use understudy_core::spec::{QueuePolicy, Script};
use understudy_core::{ConnectionId, Failure, JobId};

fn p(s: &str) -> RelPath {
    RelPath::new(s).unwrap()
}

fn meta() -> Meta {
    Meta {
        mode: 0o4755,
        uid: 1000,
        gid: 100,
        atime_ns: -5,
        mtime_ns: 1_700_000_000_123_456_789,
        size_bytes: 42,
    }
}

fn entry() -> Entry {
    Entry {
        path: RelPath::new(b"d/\xff".to_vec()).unwrap(),
        kind: EntryKind::Symlink,
        meta: meta(),
        ino: 7,
        dev: 8,
        nlink: 2,
        blocks: 0,
        link_target: Some(b"/x\xfe".to_vec()),
    }
}

fn every_operation() -> Vec<Operation> {
    vec![
        Operation::MakeDir { path: p("d"), meta: meta() },
        Operation::CreateFile { path: p("d/f"), meta: meta() },
        Operation::Write { path: p("d/f"), offset: 1 << 40, data: (0..=255).collect() },
        Operation::Truncate { path: p("d/f"), len: 9 },
        Operation::PunchHole { path: p("d/f"), offset: 4096, len: 8192 },
        Operation::SetMeta { path: RelPath::root(), meta: meta() },
        Operation::Rename { from: p("d"), to: p("e") },
        Operation::Remove { path: p("e") },
        Operation::Symlink {
            path: RelPath::new(b"\x80".to_vec()).unwrap(),
            target: b"../\xff".to_vec(),
        },
        Operation::HardLink { path: p("h"), existing: p("d/f") },
    ]
}

fn every_message() -> Vec<Message> {
    vec![
        Message::Hello {
            protocol_version: PROTOCOL_VERSION,
            engine_id: "src-1".into(),
            role: Role::Source,
        },
        Message::Welcome { protocol_version: PROTOCOL_VERSION, engine_id: "tgt-1".into() },
        Message::Refused { reason: "no".into(), protocol_version: 1 },
        Message::Challenge { nonce: vec![1; 32] },
        Message::Proof { hmac: vec![2; 32] },
        Message::Open {
            job_id: JobId::from_parts(1_700_000_000_000, [3; 10]),
            root: "/srv/replica".into(),
            session: ConnectionId(4),
            resume_from_seq: 5,
            spec: Some(Box::default()),
            source_address: Some("198.51.100.1:6320".into()),
        },
        Message::Opened { last_applied_seq: 6, diverged: true },
        Message::Ops {
            first_seq: 7,
            ops: every_operation().iter().map(|op| EncodedOp::encode(op).unwrap()).collect(),
        },
        Message::Ack { seq: u64::MAX },
        Message::Nack { seq: 8, error: Failure::persistent("disk full"), disk_full: true },
        Message::Heartbeat { at_ms: 9 },
        Message::Pause,
        Message::Resume,
        Message::QueryMeta { query_id: 10, paths: vec![p("a"), RelPath::root()] },
        Message::MetaReply { query_id: 10, entries: vec![Some(entry()), None] },
        Message::QueryBlockHashes {
            query_id: 11,
            path: p("a"),
            block_size: 65536,
            first_block: 3,
            max_blocks: 100,
        },
        Message::BlockHashes {
            query_id: 11,
            hashes: BlockHashes {
                block_size: 65536,
                len: 1 << 20,
                first_block: 3,
                hashes: vec![BlockHash(u128::MAX), BlockHash(0)],
            },
        },
        Message::QueryListDir { query_id: 12, path: RelPath::root() },
        Message::RunScript {
            request_id: 13,
            stage: ScriptStage::PreCutover,
            script: Script {
                path: "/bin/true".into(),
                args: vec!["a".into()],
                delay_until_complete: true,
                timeout_secs: 5,
            },
        },
        Message::ScriptFinished {
            request_id: 13,
            result: ScriptResult { exit_code: Some(0), ..ScriptResult::default() },
        },
        Message::Settle { policy: QueuePolicy::Discard },
        Message::Settled { operations: 14 },
        Message::Release,
        Message::Skip { through_seq: 15 },
        Message::Released,
        Message::ListDir { query_id: 12, entries: vec![entry()] },
        Message::QueryFailed { query_id: 13, error: Failure::permanent("escapes") },
        Message::Close { reason: "bye".into() },
    ]
}

/// Operations decoded in place share the frame's buffer; anything after the last one, or
/// operations not encoded as `bin`, sends the payload down the strict path.
#[test]
fn ops_decoded_in_place_are_checked_like_any_other() {
    let ops = Message::Ops {
        first_seq: 7,
        ops: vec![EncodedOp(vec![1, 2, 3].into()), EncodedOp(vec![0xc4; 300].into())],
    };
    let payload =
        bytes::Bytes::from(encode_frame(&ops, Compression::None).unwrap().bytes).slice(4..);
    let Message::Ops { ops: decoded, .. } = decode_shared_payload(payload.clone()).unwrap() else {
        panic!("not Ops");
    };
    assert!(payload.as_ptr_range().contains(&decoded[1].0.as_ptr()), "shared, not copied");
    assert_eq!(Message::Ops { first_seq: 7, ops: decoded }, ops);

    let mut trailing = payload.to_vec();
    trailing.push(0xc0);
    let error = decode_shared_payload(trailing.into()).unwrap_err().to_string();
    assert!(error.contains("1 bytes left over"), "{error}");

    // The same operations as arrays of integers, as a lenient peer might send them.
    #[derive(serde::Serialize)]
    enum Loose {
        Ops { first_seq: u64, ops: Vec<Vec<u8>> },
    }
    let loose = rmp_serde::to_vec_named(&Loose::Ops {
        first_seq: 7,
        ops: vec![vec![1, 2, 3], vec![0xc4; 300]],
    })
    .unwrap();
    assert_eq!(decode_shared_payload(loose.into()).unwrap(), ops);
}

#[test]
fn every_message_round_trips_plain_and_compressed() {
    // Compressed itself is made by the encoder; check the list covers every other variant.
    let kinds: std::collections::BTreeSet<_> = every_message().iter().map(Message::kind).collect();
    assert_eq!(kinds.len(), 28);
    for compression in [Compression::None, Compression::Zstd { level: 3 }] {
        let mut stream = Vec::new();
        for m in every_message() {
            let frame = encode_frame(&m, compression).unwrap();
            assert_eq!(
                u32::from_be_bytes(frame.bytes[..4].try_into().unwrap()) as usize,
                frame.bytes.len() - 4
            );
            assert_eq!(decode_payload(&frame.bytes[4..]).unwrap(), m, "{}", m.kind());
            let shared = bytes::Bytes::copy_from_slice(&frame.bytes[4..]);
            assert_eq!(decode_shared_payload(shared).unwrap(), m, "{} (shared)", m.kind());
            stream.extend_from_slice(&frame.bytes);
        }
        assert_eq!(FrameDecoder::new().push(&stream).unwrap(), every_message());
    }
}

#[test]
fn compression_shrinks_what_it_can_and_is_transparent() {
    let big = Message::Ops {
        first_seq: 1,
        ops: vec![
            EncodedOp::encode(&Operation::Write {
                path: p("f"),
                offset: 0,
                data: vec![b'a'; 1 << 20].into(),
            })
            .unwrap(),
        ],
    };
    let plain = encode_frame(&big, Compression::None).unwrap();
    let zstd = encode_frame(&big, Compression::Zstd { level: 1 }).unwrap();
    assert_eq!(plain.raw_len, zstd.raw_len);
    assert!(
        zstd.wire_len() * 100 < plain.wire_len(),
        "{} vs {}",
        zstd.wire_len(),
        plain.wire_len()
    );
    assert_eq!(FrameDecoder::new().push(&zstd.bytes).unwrap(), vec![big]);
    // Incompressible or tiny payloads go as they are.
    let small = Message::Ack { seq: 1 };
    assert_eq!(
        encode_frame(&small, Compression::Zstd { level: 19 }).unwrap(),
        encode_frame(&small, Compression::None).unwrap()
    );
}

fn frame_of(payload: &[u8]) -> Vec<u8> {
    let mut f = (payload.len() as u32).to_be_bytes().to_vec();
    f.extend_from_slice(payload);
    f
}

fn compressed(raw_len: u32, bytes: Vec<u8>) -> Vec<u8> {
    rmp_serde::to_vec_named(&Message::Compressed { codec: Codec::Zstd, raw_len, bytes }).unwrap()
}

#[test]
fn limits_are_enforced_before_allocation() {
    // An oversized length prefix is refused as soon as its four bytes are in.
    let mut d = FrameDecoder::new();
    let err = d.push(&(MAX_FRAME_BYTES + 1).to_be_bytes()).unwrap_err();
    assert!(matches!(err, WireError::FrameTooLarge { .. }), "{err}");
    assert!(d.memory_bytes() < 1024, "{}", d.memory_bytes());
    // …and the decoder stays failed.
    assert!(d.push(&frame_of(&rmp_serde::to_vec_named(&Message::Pause).unwrap())).is_err());

    // A valid maximum-length prefix with little behind it buffers only what arrived.
    let mut d = FrameDecoder::new();
    let mut partial = MAX_FRAME_BYTES.to_be_bytes().to_vec();
    partial.extend_from_slice(&[0; 100]);
    assert!(d.push(&partial).unwrap().is_empty());
    assert!(d.memory_bytes() < 4096, "{}", d.memory_bytes());

    // Compression cannot smuggle more than the frame limit.
    let raw = rmp_serde::to_vec_named(&Message::Pause).unwrap();
    let z = zstd::bulk::compress(&raw, 3).unwrap();
    let over = compressed(MAX_FRAME_BYTES + 1, z.clone());
    assert!(matches!(decode_payload(&over), Err(WireError::Compression { .. })));
    // A raw_len that lies (too small: the bomb case; too large: padding) is refused.
    let bomb = zstd::bulk::compress(&vec![0_u8; 10 << 20], 3).unwrap();
    assert!(matches!(decode_payload(&compressed(1000, bomb)), Err(WireError::Compression { .. })));
    assert!(matches!(
        decode_payload(&compressed(raw.len() as u32 + 5, z)),
        Err(WireError::Compression { .. })
    ));
    // Compressed inside compressed is refused.
    let inner = compressed(raw.len() as u32, zstd::bulk::compress(&raw, 3).unwrap());
    let nested = compressed(inner.len() as u32, zstd::bulk::compress(&inner, 3).unwrap());
    assert!(matches!(decode_payload(&nested), Err(WireError::Compression { .. })));
    // Deep nesting is refused by depth, not by overflowing the stack.
    let mut deep = vec![0x81, 0xa3, b'O', b'p', b's'];
    deep.extend(std::iter::repeat_n(0x91, 200_000));
    assert!(matches!(decode_payload(&deep), Err(WireError::Malformed { .. })));
    // A payload with bytes after its message is malformed.
    let mut trailing = raw.clone();
    trailing.push(0xc0);
    assert!(matches!(decode_payload(&trailing), Err(WireError::Malformed { .. })));

    // Sending: a message over the limit is refused so the caller splits the batch.
    let huge = Message::Ops {
        first_seq: 1,
        ops: vec![EncodedOp(vec![0; MAX_FRAME_BYTES as usize].into())],
    };
    assert!(matches!(
        encode_frame(&huge, Compression::Zstd { level: 1 }),
        Err(WireError::MessageTooLarge { .. })
    ));
}

fn arb_message() -> impl Strategy<Value = Message> {
    let all = every_message();
    (0..all.len(), any::<u64>(), proptest::collection::vec(any::<u8>(), 0..300)).prop_map(
        move |(i, n, data)| match all[i].clone() {
            Message::Ops { .. } => Message::Ops {
                first_seq: n,
                ops: vec![
                    EncodedOp::encode(&Operation::Write {
                        path: p("x"),
                        offset: n,
                        data: data.into(),
                    })
                    .unwrap(),
                ],
            },
            Message::Ack { .. } => Message::Ack { seq: n },
            Message::Proof { .. } => Message::Proof { hmac: data },
            other => other,
        },
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, .. ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic(chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..64), 0..16)) {
        let mut d = FrameDecoder::new();
        for c in &chunks {
            if d.push(c).is_err() { break; }
        }
        let whole: Vec<u8> = chunks.concat();
        let _ = decode_payload(&whole);
    }

    #[test]
    fn arbitrary_payloads_in_valid_frames_never_panic(payload in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = FrameDecoder::new().push(&frame_of(&payload));
        // Also behind a valid prefix of real msgpack: the variant map header and a known tag.
        let mut tagged = vec![0x81, 0xa3];
        tagged.extend_from_slice(b"Ops");
        tagged.extend_from_slice(&payload);
        let _ = FrameDecoder::new().push(&frame_of(&tagged));
    }

    #[test]
    fn valid_streams_decode_the_same_however_split(
        messages in proptest::collection::vec(arb_message(), 1..12),
        cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..20),
        zstd in any::<bool>(),
    ) {
        let compression = if zstd { Compression::Zstd { level: 1 } } else { Compression::None };
        let stream: Vec<u8> = messages.iter().flat_map(|m| encode_frame(m, compression).unwrap().bytes).collect();
        let mut cuts: Vec<usize> = cuts.iter().map(|i| i.index(stream.len() + 1)).collect();
        cuts.sort_unstable();
        let mut d = FrameDecoder::new();
        let mut out = Vec::new();
        let mut at = 0;
        for cut in cuts.into_iter().chain([stream.len()]) {
            out.extend(d.push(&stream[at..cut]).unwrap());
            at = cut;
        }
        prop_assert_eq!(out, messages);
        prop_assert_eq!(d.buffered(), 0);
    }
}

#[tokio::test]
async fn async_helpers_round_trip_and_report_sizes() {
    let (mut a, mut b) = tokio::io::duplex(1 << 16);
    let writer = tokio::spawn(async move {
        let mut total = 0;
        for m in every_message() {
            total +=
                write_message(&mut a, &m, Compression::Zstd { level: 3 }).await.unwrap().wire_bytes;
        }
        total
    });
    let mut got = Vec::new();
    for _ in 0..every_message().len() {
        got.push(read_message(&mut b).await.unwrap());
    }
    assert!(writer.await.unwrap() > 0);
    assert_eq!(got, every_message());
    // The writer is gone: a clean end of stream.
    assert!(matches!(read_message(&mut b).await, Err(WireError::Closed)));
}

#[tokio::test]
async fn read_message_refuses_oversized_and_truncated_frames() {
    use tokio::io::AsyncWriteExt;
    let (mut a, mut b) = tokio::io::duplex(1024);
    a.write_all(&u32::MAX.to_be_bytes()).await.unwrap();
    assert!(matches!(read_message(&mut b).await, Err(WireError::FrameTooLarge { .. })));
    // Announces the maximum, sends 10 bytes, hangs up.
    let (mut a, mut b) = tokio::io::duplex(1024);
    a.write_all(&MAX_FRAME_BYTES.to_be_bytes()).await.unwrap();
    a.write_all(&[0; 10]).await.unwrap();
    drop(a);
    assert!(matches!(read_message(&mut b).await, Err(WireError::Io(_))));
}

fn cfg(id: &str, role: Role, secret: Option<&str>) -> HandshakeConfig {
    HandshakeConfig { engine_id: id.into(), role, secret: secret.map(Secret::new) }
}

async fn handshake(
    client: HandshakeConfig,
    server: HandshakeConfig,
) -> (
    Result<understudy_adapters::wire::Peer, WireError>,
    Result<understudy_adapters::wire::Peer, WireError>,
) {
    let (mut a, mut b) = tokio::io::duplex(1 << 16);
    let server = tokio::spawn(async move { accept_handshake(&mut b, &server).await });
    let client = connect_handshake(&mut a, &client).await;
    drop(a);
    (client, server.await.unwrap())
}

#[tokio::test]
async fn handshake_without_and_with_a_shared_secret() {
    let (c, s) = handshake(cfg("src", Role::Source, None), cfg("tgt", Role::Target, None)).await;
    let (c, s) = (c.unwrap(), s.unwrap());
    assert_eq!((c.engine_id.as_str(), c.role, c.authenticated), ("tgt", Role::Target, false));
    assert_eq!((s.engine_id.as_str(), s.role, s.authenticated), ("src", Role::Source, false));

    let (c, s) =
        handshake(cfg("src", Role::Source, Some("k")), cfg("tgt", Role::Target, Some("k"))).await;
    assert!(c.unwrap().authenticated && s.unwrap().authenticated);
}

#[tokio::test]
async fn handshake_refuses_wrong_or_missing_secrets_on_both_sides() {
    let (c, s) =
        handshake(cfg("src", Role::Source, Some("right")), cfg("tgt", Role::Target, Some("wrong")))
            .await;
    assert!(matches!(s, Err(WireError::AuthFailed { .. })), "{s:?}");
    assert!(matches!(c, Err(WireError::Refused { .. })), "{c:?}");

    let (c, s) =
        handshake(cfg("src", Role::Source, None), cfg("tgt", Role::Target, Some("k"))).await;
    assert!(matches!(c, Err(WireError::AuthFailed { .. })), "{c:?}");
    assert!(s.is_err());

    // A client with a secret does not accept a server that skips authentication.
    let (c, s) =
        handshake(cfg("src", Role::Source, Some("k")), cfg("tgt", Role::Target, None)).await;
    assert!(matches!(c, Err(WireError::AuthFailed { .. })), "{c:?}");
    let _ = s;
}

#[test]
fn proofs_bind_the_role_and_the_engine() {
    use understudy_adapters::wire::auth::{proof, verify};
    let k = Secret::new("k");
    let h = proof(&k, b"nonce", Role::Source, "a");
    assert!(verify(&k, b"nonce", Role::Source, "a", &h));
    assert!(!verify(&k, b"nonce", Role::Target, "a", &h)); // no reflection
    assert!(!verify(&k, b"nonce", Role::Source, "b", &h));
    assert!(!verify(&k, b"other", Role::Source, "a", &h));
    assert!(!verify(&Secret::new("j"), b"nonce", Role::Source, "a", &h));
    assert_eq!(format!("{k:?}"), "Secret(..)");
}

#[tokio::test]
async fn version_mismatch_is_refused_clearly_on_both_sides() {
    let (ours, newer) = (PROTOCOL_VERSION, PROTOCOL_VERSION + 1);
    // A newer client talks to this server.
    let (mut a, mut b) = tokio::io::duplex(4096);
    let server =
        tokio::spawn(
            async move { accept_handshake(&mut b, &cfg("tgt", Role::Target, None)).await },
        );
    write_message(
        &mut a,
        &Message::Hello { protocol_version: newer, engine_id: "new".into(), role: Role::Source },
        Compression::None,
    )
    .await
    .unwrap();
    let refused = read_message(&mut a).await.unwrap();
    let expected = format!(
        "peer speaks understudy protocol {newer}, this engine speaks {ours}: upgrade the older engine"
    );
    assert_eq!(refused, Message::Refused { reason: expected.clone(), protocol_version: ours });
    let err = server.await.unwrap().unwrap_err();
    assert_eq!(err.to_string(), expected);

    // This client talks to a newer server, which refuses it: worded from this side.
    let (mut a, mut b) = tokio::io::duplex(4096);
    let fake = tokio::spawn(async move {
        let _hello = read_message(&mut b).await.unwrap();
        let reason = format!(
            "peer speaks understudy protocol {ours}, this engine speaks {newer}: upgrade the older engine"
        );
        write_message(
            &mut b,
            &Message::Refused { reason, protocol_version: newer },
            Compression::None,
        )
        .await
        .unwrap();
    });
    let err = connect_handshake(&mut a, &cfg("src", Role::Source, None)).await.unwrap_err();
    fake.await.unwrap();
    assert_eq!(err.to_string(), expected);
    assert_eq!(err.retry(), understudy_core::Retry::Permanent);
}

/// Plays the connecting side by hand against a fresh accepting engine with the secret "k":
/// sends `Hello` as engine "src", then `messages`, and returns the server's `Challenge`
/// nonce, what the server said after, and the server's result.
async fn scripted_peer(
    messages: impl FnOnce(&[u8]) -> Vec<Message>,
) -> (Vec<u8>, Vec<Message>, Result<understudy_adapters::wire::Peer, WireError>) {
    let (mut a, mut b) = tokio::io::duplex(1 << 16);
    let server = tokio::spawn(async move {
        accept_handshake(&mut b, &cfg("tgt", Role::Target, Some("k"))).await
    });
    let hello = Message::Hello {
        protocol_version: PROTOCOL_VERSION,
        engine_id: "src".into(),
        role: Role::Source,
    };
    write_message(&mut a, &hello, Compression::None).await.unwrap();
    let Message::Challenge { nonce } = read_message(&mut a).await.unwrap() else {
        panic!("a server with a secret challenges first")
    };
    for message in messages(&nonce) {
        if write_message(&mut a, &message, Compression::None).await.is_err() {
            break; // the server hung up
        }
    }
    let result = server.await.unwrap();
    let mut said = Vec::new();
    while let Ok(message) = read_message(&mut a).await {
        said.push(message);
    }
    (nonce, said, result)
}

#[tokio::test]
async fn a_replayed_proof_is_refused() {
    use understudy_adapters::wire::auth::proof;
    let k = Secret::new("k");
    // A genuine session, as an eavesdropper would record it.
    let mut recorded = Vec::new();
    let (first_nonce, said, result) = scripted_peer(|nonce| {
        recorded = proof(&k, nonce, Role::Source, "src");
        vec![Message::Proof { hmac: recorded.clone() }, Message::Challenge { nonce: vec![7; 32] }]
    })
    .await;
    assert!(result.unwrap().authenticated);
    assert!(matches!(said.last(), Some(Message::Welcome { .. })), "{said:?}");

    // The same bytes on a new connection: the server's nonce is fresh, so the proof is stale.
    let (second_nonce, said, result) =
        scripted_peer(|_| vec![Message::Proof { hmac: recorded.clone() }]).await;
    assert_ne!(first_nonce, second_nonce, "every connection gets its own challenge");
    assert!(matches!(result, Err(WireError::AuthFailed { .. })), "{result:?}");
    assert!(
        matches!(&said[..], [Message::Refused { reason, .. }] if reason.contains("authentication failed")),
        "the replaying peer is told, and gets nothing else: {said:?}"
    );
}

#[tokio::test]
async fn handshake_messages_out_of_order_are_refused() {
    use understudy_adapters::wire::auth::proof;
    let k = Secret::new("k");
    // Its own challenge before its proof.
    let (_, said, result) = scripted_peer(|nonce| {
        vec![
            Message::Challenge { nonce: vec![7; 32] },
            Message::Proof { hmac: proof(&k, nonce, Role::Source, "src") },
        ]
    })
    .await;
    assert!(
        matches!(result, Err(WireError::Unexpected { expected: "Proof", got: "Challenge" })),
        "{result:?}"
    );
    assert!(!said.iter().any(|m| matches!(m, Message::Welcome { .. } | Message::Proof { .. })));

    // Operations before the handshake is over.
    let (_, said, result) = scripted_peer(|_| {
        vec![Message::Ack { seq: 1 }, Message::Ops { first_seq: 1, ops: vec![] }]
    })
    .await;
    assert!(matches!(result, Err(WireError::Unexpected { expected: "Proof", .. })), "{result:?}");
    assert!(!said.iter().any(|m| matches!(m, Message::Welcome { .. })));

    // A proof with no Hello first.
    let (mut a, mut b) = tokio::io::duplex(1 << 16);
    let server = tokio::spawn(async move {
        accept_handshake(&mut b, &cfg("tgt", Role::Target, Some("k"))).await
    });
    write_message(&mut a, &Message::Proof { hmac: vec![0; 32] }, Compression::None).await.unwrap();
    let result = server.await.unwrap();
    assert!(matches!(result, Err(WireError::Unexpected { expected: "Hello", .. })), "{result:?}");
    assert!(matches!(read_message(&mut a).await, Ok(Message::Refused { .. })));
}
