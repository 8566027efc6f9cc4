//! Goal: the stored encoding of every event variant stays readable forever.
//!
//! Method: one sample per `JobEvent` variant, in a full envelope with fixed ids and times, is
//! encoded with the store's codec (rmp-serde, named) and compared with the committed bytes in
//! `tests/golden/<Variant>.hex`; every golden file must decode back to its sample; a golden
//! file with no sample (a renamed or removed variant) fails. `UNDERSTUDY_BLESS=1` (re)writes the
//! files instead of comparing. The sample table is a macro that also emits an exhaustive
//! `match` on `JobEvent`, so a new variant does not compile until it has a sample. A last test
//! feeds values with fields this build does not know and checks they are ignored.

mod common;

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};

use serde::Serialize;
use understudy_core::effect::{Failure, FaultKind, ScriptResult, ScriptStage, SkippedFile};
use understudy_core::event::{
    ConnectionInfo, Fault, FaultSeverity, MirrorKind, MirrorPlan, MirrorReason, SCHEMA_VERSION,
};
use understudy_core::spec::{
    BandwidthLimit, JobSpec, MirrorComparison, QueuePolicy, TargetEndpoint, TargetSpec,
};
use understudy_core::status::{MirrorCounters, ReplicationCounters, VerificationSummary};
use understudy_core::{
    Actor, ChainHash, ConnectionId, EventEnvelope, EventMetadata, JobEvent, JobId, Position, Seq,
};
use understudy_store::{decode_envelope, encode_envelope};
use uuid::Uuid;

/// Defines `samples()` (one event per variant, named) and `covers_every_variant`, whose
/// exhaustive `match` stops the build when `JobEvent` gains a variant without a row here.
macro_rules! samples {
    ($($variant:ident => $sample:expr,)+) => {
        fn samples() -> Vec<(&'static str, JobEvent)> {
            vec![$((stringify!($variant), $sample)),+]
        }

        #[allow(dead_code)]
        fn covers_every_variant(event: &JobEvent) {
            match event {
                $(JobEvent::$variant { .. } => {})+
            }
        }
    };
}

fn plan() -> MirrorPlan {
    MirrorPlan {
        kind: MirrorKind::Differential,
        comparison: MirrorComparison::ChecksumSendDifferences,
        calculate_size: true,
        reason: MirrorReason::AutoRemirror,
    }
}

fn connection() -> ConnectionInfo {
    ConnectionInfo {
        id: ConnectionId(3),
        peer: "198.51.100.7:6320".into(),
        encrypted: true,
        target_diverged: false,
    }
}

fn mirror_counters() -> MirrorCounters {
    MirrorCounters {
        total_bytes: Some(1_000_000),
        total_files: Some(120),
        directories_mirrored: 4,
        files_mirrored: 60,
        bytes_mirrored: 500_000,
        bytes_skipped: 2_048,
        ..MirrorCounters::default()
    }
}

samples! {
    Created => JobEvent::Created {
        spec: Box::new(JobSpec {
            name: "alpha to beta".into(),
            source: "/srv/data".into(),
            target: TargetSpec {
                endpoint: TargetEndpoint::Remote { host: "198.51.100.7".into(), port: 6320 },
                path: "/replica".into(),
            },
            excludes: vec!["tmp".into()],
            ..JobSpec::default()
        }),
    },
    Initialized => JobEvent::Initialized,
    StartRequested => JobEvent::StartRequested { mirror: plan() },
    StartSucceeded => JobEvent::StartSucceeded { connection: connection() },
    StartFailed => JobEvent::StartFailed { failure: Failure::temporary("connection refused") },
    MirrorStarted => JobEvent::MirrorStarted { mirror: plan() },
    MirrorSizeCalculated => JobEvent::MirrorSizeCalculated { total_bytes: 1_000_000, total_files: 120 },
    MirrorProgressed => JobEvent::MirrorProgressed { counters: mirror_counters() },
    MirrorFilesSkipped => JobEvent::MirrorFilesSkipped {
        files: vec![SkippedFile { path: "a/b.txt".into(), reason: "vanished".into() }],
    },
    MirrorPaused => JobEvent::MirrorPaused,
    MirrorResumed => JobEvent::MirrorResumed,
    MirrorStopped => JobEvent::MirrorStopped,
    MirrorCompleted => JobEvent::MirrorCompleted { counters: mirror_counters() },
    ReplicationCaughtUp => JobEvent::ReplicationCaughtUp,
    ReplicationProgressed => JobEvent::ReplicationProgressed {
        counters: ReplicationCounters {
            queue_bytes: 4_096,
            disk_queue_bytes: 1_024,
            bytes_sent: 99_000,
            bytes_sent_compressed: 33_000,
            operations_applied: 17,
            recovery_point_latency_ms: Some(250),
            ..ReplicationCounters::default()
        },
    },
    QueueAlertRaised => JobEvent::QueueAlertRaised { percent: 55 },
    QueueExhausted => JobEvent::QueueExhausted,
    Paused => JobEvent::Paused,
    Resumed => JobEvent::Resumed { remirror: true },
    Stopped => JobEvent::Stopped,
    ConnectionLost => JobEvent::ConnectionLost { reason: "peer reset the connection".into() },
    ReconnectFailed => JobEvent::ReconnectFailed { attempt: 2, failure: Failure::persistent("no route to host") },
    Reconnected => JobEvent::Reconnected { connection: connection() },
    VerificationStarted => JobEvent::VerificationStarted {
        comparison: MirrorComparison::AttributesSendWhole,
        remirror: false,
    },
    VerificationCompleted => JobEvent::VerificationCompleted {
        summary: VerificationSummary {
            files_compared: 120,
            files_different: 2,
            bytes_compared: 1_000_000,
            log_path: Some("/var/log/understudy/verify.log".into()),
            ..VerificationSummary::default()
        },
    },
    OrphansProcessed => JobEvent::OrphansProcessed {
        found: 3,
        deleted: 2,
        bytes: 300,
        log_path: Some("/var/log/understudy/orphans.log".into()),
    },
    BandwidthChanged => JobEvent::BandwidthChanged { limit: BandwidthLimit::Fixed { bytes_per_second: 10_000 } },
    CutoverRequested => JobEvent::CutoverRequested { target_queue: QueuePolicy::Apply },
    FailoverRequested => JobEvent::FailoverRequested { test: true, target_queue: QueuePolicy::Discard },
    ScriptCompleted => JobEvent::ScriptCompleted {
        stage: ScriptStage::PreCutover,
        result: ScriptResult { exit_code: Some(0), timed_out: false, output: "ok\n".into(), failed_to_start: false },
    },
    TargetQueueSettled => JobEvent::TargetQueueSettled { policy: QueuePolicy::Apply, operations: 12 },
    TargetReleased => JobEvent::TargetReleased,
    CutoverCompleted => JobEvent::CutoverCompleted,
    FailoverConditionMet => JobEvent::FailoverConditionMet { reason: "20 consecutive failures".into() },
    FailoverCompleted => JobEvent::FailoverCompleted { test: false },
    FailoverUndone => JobEvent::FailoverUndone,
    ReverseStarted => JobEvent::ReverseStarted,
    ReverseCompleted => JobEvent::ReverseCompleted,
    Failed => JobEvent::Failed { failure: Failure::permanent("target rejected the handshake") },
    Recovered => JobEvent::Recovered { remirror: true },
    ReconnectRequested => JobEvent::ReconnectRequested,
    VerificationSkipped => JobEvent::VerificationSkipped,
    OrphanRemovalStarted => JobEvent::OrphanRemovalStarted,
    ReplicaActivated => JobEvent::ReplicaActivated,
    FaultRaised => JobEvent::FaultRaised {
        fault: Fault {
            kind: FaultKind::TargetDiskFull,
            severity: FaultSeverity::Error,
            message: "target disk full: free space on /replica".into(),
        },
    },
    FaultCleared => JobEvent::FaultCleared { kind: FaultKind::TargetDiskFull },
    Deleted => JobEvent::Deleted,
}

/// The fixed envelope every sample is stored in.
fn envelope(event: JobEvent) -> EventEnvelope {
    EventEnvelope {
        job_id: JobId::from_parts(1_767_225_600_000, [0x11; 10]),
        seq: Seq(7),
        position: Position(42),
        recorded_at: common::at(3_723) + chrono::Duration::milliseconds(456),
        schema_version: SCHEMA_VERSION,
        metadata: EventMetadata {
            actor: Actor::Operator { name: "ops".into() },
            correlation_id: Some(Uuid::from_u128(0x0192_3456_789a_7bcd_8ef0_1234_5678_9abc)),
            idempotency_key: Some("key-1".into()),
        },
        event,
        prev_hash: ChainHash([0xab; 32]),
    }
}

fn golden_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden")
}

fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn from_hex(text: &str) -> Result<Vec<u8>, String> {
    let text: String = text.chars().filter(|c| !c.is_whitespace()).collect();
    if !text.len().is_multiple_of(2) {
        return Err("odd number of hex digits".into());
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).map_err(|e| format!("at {i}: {e}")))
        .collect()
}

fn blessing() -> bool {
    std::env::var("UNDERSTUDY_BLESS").is_ok_and(|v| v == "1")
}

const HOW_TO_BLESS: &str = "run `UNDERSTUDY_BLESS=1 cargo test -p understudy-store --test codec`, review the diff \
                            of store/tests/golden/ and commit it";

#[test]
fn every_sample_is_named_after_its_variant() {
    let samples = samples();
    for (name, event) in &samples {
        covers_every_variant(event);
        assert_eq!(*name, event.name(), "the sample in row {name} is a {} event", event.name());
    }
    let names: BTreeSet<_> = samples.iter().map(|(name, _)| *name).collect();
    assert_eq!(names.len(), samples.len(), "a variant has two rows");
}

#[test]
fn encoding_of_every_variant_matches_its_golden_bytes() {
    let dir = golden_dir();
    let mut problems = Vec::new();
    for (name, event) in samples() {
        let bytes = encode_envelope(&envelope(event)).expect("every event encodes");
        let path = dir.join(format!("{name}.hex"));
        if blessing() {
            fs::create_dir_all(&dir).expect("create the golden directory");
            fs::write(&path, to_hex(&bytes) + "\n").expect("write a golden file");
            continue;
        }
        match fs::read_to_string(&path) {
            Err(error) => problems.push(format!("{name}: no golden file {} ({error}): {HOW_TO_BLESS}", path.display())),
            Ok(text) if from_hex(&text).as_deref() != Ok(&bytes[..]) => problems.push(format!(
                "{name}: the encoding changed.\n  golden: {}\n  now:    {}\n  Old logs hold the golden bytes and must \
                 still decode (see the next test). Change an event only by adding fields with #[serde(default)]; if \
                 the change is intended and compatible, {HOW_TO_BLESS}",
                text.trim(),
                to_hex(&bytes)
            )),
            Ok(_) => {}
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn every_golden_file_decodes_to_its_sample_and_none_is_orphaned() {
    let samples = samples();
    let mut problems = Vec::new();
    for (name, event) in &samples {
        if blessing() {
            // The files are being rewritten by the test above, concurrently; the next plain run
            // checks them.
            break;
        }
        let path = golden_dir().join(format!("{name}.hex"));
        let Ok(text) = fs::read_to_string(&path) else {
            problems.push(format!("{name}: no golden file {}: {HOW_TO_BLESS}", path.display()));
            continue;
        };
        let decoded = from_hex(&text)
            .map_err(|e| e.to_string())
            .and_then(|b| decode_envelope(&b).map_err(|e| e.to_string()));
        match decoded {
            Ok(decoded) if decoded == envelope(event.clone()) => {}
            Ok(decoded) => problems
                .push(format!("{name}: golden bytes decode to a different value: {decoded:?}")),
            Err(error) => problems.push(format!("{name}: golden bytes no longer decode: {error}")),
        }
    }
    let known: BTreeSet<String> = samples.iter().map(|(name, _)| format!("{name}.hex")).collect();
    // A missing directory is already reported above, file by file.
    for entry in fs::read_dir(golden_dir()).into_iter().flatten() {
        let file =
            entry.expect("list the golden directory").file_name().to_string_lossy().into_owned();
        if !known.contains(&file) {
            problems.push(format!(
                "golden file {file} has no sample: a variant was renamed or removed, which breaks every log holding it \
                 (never rename a variant; keep the old one)"
            ));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// A future writer's envelope: every field of today's, one more at the top, and an event whose
/// inner struct also gained a field.
#[derive(Serialize)]
struct FutureEnvelope {
    job_id: JobId,
    seq: Seq,
    position: Position,
    recorded_at: chrono::DateTime<chrono::Utc>,
    schema_version: u16,
    metadata: EventMetadata,
    event: FutureEvent,
    prev_hash: ChainHash,
    shard: u32,
}

#[derive(Serialize)]
enum FutureEvent {
    StartSucceeded { connection: FutureConnection, negotiated_at_ms: u64 },
}

#[derive(Serialize)]
struct FutureConnection {
    id: ConnectionId,
    peer: String,
    encrypted: bool,
    cipher: String,
}

/// Today's connection without the `encrypted` field, as a build before it was added wrote it.
#[derive(Serialize)]
struct PastConnection {
    id: ConnectionId,
    peer: String,
}

#[derive(Serialize)]
enum PastEvent {
    StartSucceeded { connection: PastConnection },
}

#[derive(Serialize)]
struct PastEnvelope {
    job_id: JobId,
    seq: Seq,
    position: Position,
    recorded_at: chrono::DateTime<chrono::Utc>,
    schema_version: u16,
    metadata: EventMetadata,
    event: PastEvent,
    prev_hash: ChainHash,
}

#[test]
fn unknown_fields_are_ignored_and_missing_defaulted_ones_filled() {
    let expected = envelope(JobEvent::StartSucceeded { connection: connection() });
    let future = FutureEnvelope {
        job_id: expected.job_id,
        seq: expected.seq,
        position: expected.position,
        recorded_at: expected.recorded_at,
        schema_version: SCHEMA_VERSION,
        metadata: expected.metadata.clone(),
        event: FutureEvent::StartSucceeded {
            connection: FutureConnection {
                id: ConnectionId(3),
                peer: "198.51.100.7:6320".into(),
                encrypted: true,
                cipher: "aes".into(),
            },
            negotiated_at_ms: 12,
        },
        prev_hash: expected.prev_hash,
        shard: 9,
    };
    let bytes = rmp_serde::to_vec_named(&future).expect("encode");
    assert_eq!(decode_envelope(&bytes).expect("extra fields are ignored"), expected);

    // `encrypted` is `#[serde(default)]`: a value written before it existed reads as false.
    let past = PastEnvelope {
        job_id: expected.job_id,
        seq: expected.seq,
        position: expected.position,
        recorded_at: expected.recorded_at,
        schema_version: SCHEMA_VERSION,
        metadata: expected.metadata.clone(),
        event: PastEvent::StartSucceeded {
            connection: PastConnection { id: ConnectionId(3), peer: "198.51.100.7:6320".into() },
        },
        prev_hash: expected.prev_hash,
    };
    let decoded = decode_envelope(&rmp_serde::to_vec_named(&past).expect("encode"))
        .expect("a missing default field is filled");
    let JobEvent::StartSucceeded { connection } = decoded.event else {
        panic!("decoded {:?}", decoded.event)
    };
    assert!(!connection.encrypted);
    assert_eq!(connection.peer, "198.51.100.7:6320");
}

/// Bytes written before a compatible change to an event (fields added with defaults) still
/// decode to today's value: `golden-before-replicas/` holds the envelopes as they were before
/// `JobSpec.role` and `ConnectionInfo.target_diverged` were added.
#[test]
fn bytes_written_before_a_compatible_change_still_decode() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden-before-replicas");
    let samples = samples();
    let mut checked = 0;
    for entry in fs::read_dir(&dir).expect("the folder of older golden bytes") {
        let path = entry.expect("list the folder").path();
        let name = path.file_stem().expect("a file name").to_string_lossy().into_owned();
        let (_, event) = samples
            .iter()
            .find(|(sample, _)| *sample == name)
            .unwrap_or_else(|| panic!("{name}: no sample of that name"));
        let text = fs::read_to_string(&path).expect("readable golden bytes");
        let decoded = decode_envelope(&from_hex(&text).expect("hex")).expect("still decodes");
        assert_eq!(decoded, envelope(event.clone()), "{name}");
        checked += 1;
    }
    assert_eq!(checked, 3);
}
