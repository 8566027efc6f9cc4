// Goal: show that the source queue returns exactly what was pushed, in order, across memory →
// disk → memory transitions, acknowledgements, rewinds and clean restarts; that it cleans up
// its segments; and that it refuses items at each of its limits. Method: a model-based
// property test (random pushes of random sizes, pops, acks and rewinds against a plain
// VecDeque model, with tiny limits so every transition happens often), plus example tests
// for segment sizes, exhaustion and reload, on real temporary directories.

#![allow(clippy::unwrap_used)] // test helpers should panic on anything unexpected

use std::collections::VecDeque;
use std::fs;
use std::path::Path;

use proptest::prelude::*;
use understudy_adapters::QueueError;
use understudy_adapters::error::FullReason;
use understudy_adapters::queue::{DiskLimit, QueueLimits, SEGMENT_BYTES, SourceQueue};

fn segments(dir: &Path) -> Vec<(String, u64)> {
    let mut out: Vec<_> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap())
        .filter(|e| e.file_name().to_string_lossy().ends_with(".seg"))
        .map(|e| (e.file_name().to_string_lossy().into_owned(), e.metadata().unwrap().len()))
        .collect();
    out.sort();
    out
}

fn item(seq: u64, len: usize) -> Vec<u8> {
    (0..len).map(|i| (seq as usize * 31 + i) as u8).collect()
}

fn small() -> QueueLimits {
    QueueLimits {
        memory_bytes: 4_000,
        disk: DiskLimit::Unlimited,
        min_free_bytes: 0,
        alert_percent: 50,
        segment_bytes: 3_000,
    }
}

#[derive(Clone, Debug)]
enum Step {
    Push(usize),
    Pop,
    Ack(u8),
    Rewind,
    Restart,
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        5 => (0_usize..2_500).prop_map(Step::Push),
        4 => Just(Step::Pop),
        1 => (0_u8..8).prop_map(Step::Ack),
        1 => Just(Step::Rewind),
        1 => Just(Step::Restart),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, .. ProptestConfig::default() })]

    #[test]
    fn order_is_preserved_across_memory_disk_and_restarts(steps in proptest::collection::vec(step(), 1..120)) {
        let dir = tempfile::tempdir().unwrap();
        let mut q = SourceQueue::open(dir.path(), "job-1", small()).unwrap();
        // The model: every unacknowledged item, and how many of them are in flight.
        let mut model: VecDeque<(u64, Vec<u8>)> = VecDeque::new();
        let mut sent = 0_usize;
        // Items sent at least once and not acknowledged: they stay in memory, even rewound.
        let mut ever_sent = 0_usize;
        let mut seq = 0_u64;
        for s in steps {
            match s {
                Step::Push(len) => {
                    seq += 1 + (len as u64 % 3); // gaps are allowed, order is not optional
                    q.push(seq, item(seq, len)).unwrap();
                    model.push_back((seq, item(seq, len)));
                }
                Step::Pop => {
                    let got = q.pop().unwrap().map(|(seq, data)| (seq, data.to_vec()));
                    let want = model.get(sent).cloned();
                    prop_assert_eq!(got.as_ref().map(|g| g.0), want.as_ref().map(|w| w.0));
                    prop_assert_eq!(got, want.clone());
                    if want.is_some() { sent += 1; ever_sent = ever_sent.max(sent); }
                }
                Step::Ack(k) => {
                    // Acknowledge up to somewhere among the in-flight items, or a bit past them
                    // (a target that applied more than this queue believes it sent).
                    let upto = model.get((sent + k as usize).saturating_sub(4)).map_or(seq, |m| m.0);
                    let dropped = q.ack(upto).unwrap();
                    let before = model.len();
                    while model.front().is_some_and(|m| m.0 <= upto) { model.pop_front(); }
                    prop_assert_eq!(dropped as usize, before - model.len());
                    sent = sent.saturating_sub(before - model.len());
                    ever_sent = ever_sent.saturating_sub(before - model.len());
                }
                Step::Rewind => {
                    q.rewind();
                    sent = 0;
                }
                Step::Restart => {
                    q.flush_to_disk().unwrap();
                    drop(q);
                    q = SourceQueue::open(dir.path(), "job-1", small()).unwrap();
                    prop_assert_eq!(q.recovery().reloaded_items as usize, model.len());
                    prop_assert_eq!(q.recovery().discarded_segments, 0);
                    sent = 0;
                    ever_sent = 0;
                }
            }
            prop_assert_eq!(q.len() as usize, model.len());
            prop_assert_eq!(q.in_flight() as usize, sent);
            let sent_bytes: u64 = model.iter().take(sent).map(|m| m.1.len() as u64).sum();
            prop_assert_eq!(q.held_bytes() - q.pending_bytes(), sent_bytes);
            let usage = q.usage().unwrap();
            let on_disk: u64 = segments(dir.path()).iter().map(|s| s.1).sum();
            prop_assert!(usage.disk_bytes >= on_disk, "{} < {}", usage.disk_bytes, on_disk);
            // Memory holds the items sent and not acknowledged plus at most the larger of its
            // limit and one segment read back (up to 3,000 bytes, or one larger item).
            let in_flight: u64 = model.iter().take(ever_sent).map(|m| m.1.len() as u64).sum();
            prop_assert!(usage.memory_bytes <= in_flight + 4_000, "{} > {} + 4000", usage.memory_bytes, in_flight);
        }
        // Drain: everything comes out in order, then no segment is left.
        q.rewind();
        let mut out = Vec::new();
        while let Some((seq, data)) = q.pop().unwrap() { out.push((seq, data.to_vec())); }
        prop_assert_eq!(out, Vec::from(model));
        q.ack(u64::MAX).unwrap();
        prop_assert!(q.is_empty());
        prop_assert!(segments(dir.path()).is_empty());
        prop_assert_eq!(q.usage().unwrap().disk_bytes, 0);
    }
}

#[test]
fn segments_respect_five_megabytes_and_are_deleted_when_drained() {
    let dir = tempfile::tempdir().unwrap();
    let limits = QueueLimits { memory_bytes: 1 << 20, min_free_bytes: 0, ..QueueLimits::default() };
    assert_eq!(limits.segment_bytes, SEGMENT_BYTES);
    let mut q = SourceQueue::open(dir.path(), "job-7.conn-2", limits).unwrap();
    // 1 MiB in memory, then 15 MiB of 100 KB items spill into segments.
    let mut seq = 0;
    while seq < 160 {
        seq += 1;
        q.push(seq, item(seq, 100_000)).unwrap();
    }
    // An item larger than a segment gets a segment of its own.
    seq += 1;
    q.push(seq, item(seq, 6 << 20)).unwrap();
    seq += 1;
    q.push(seq, item(seq, 10)).unwrap();
    let segs = segments(dir.path());
    assert!(segs.len() >= 4, "{segs:?}");
    for (name, _) in &segs {
        assert!(name.starts_with("job-7.conn-2-") && name.ends_with(".seg"), "{name}");
    }
    let (big, normal): (Vec<_>, Vec<_>) = segs.iter().partition(|s| s.1 > SEGMENT_BYTES);
    assert_eq!(big.len(), 1);
    assert!(big[0].1 < (6 << 20) + 100);
    // Every segment closed because the next item did not fit is filled to within one item of
    // the limit (the last two are the one before the big item and the one after it).
    for (_, size) in &normal[..normal.len() - 2] {
        assert!(*size <= SEGMENT_BYTES && *size > SEGMENT_BYTES - 100_100, "{size}");
    }
    let usage = q.usage().unwrap();
    // The open segment's last record (30 bytes) and header may still be buffered.
    let on_disk = segs.iter().map(|s| s.1).sum::<u64>();
    assert!(usage.disk_bytes >= on_disk && usage.disk_bytes - on_disk <= 38);
    assert!(usage.memory_bytes <= 1 << 20);

    // Segments are read back oldest first and deleted as they are reached.
    let mut expected = 1;
    let mut counts = Vec::new();
    while let Some((s, data)) = q.pop().unwrap() {
        assert_eq!(s, expected);
        assert_eq!(data, item(s, data.len()));
        expected += 1;
        counts.push(segments(dir.path()).len());
    }
    assert_eq!(expected, seq + 1);
    assert!(counts.windows(2).all(|w| w[1] <= w[0]));
    assert!(segments(dir.path()).is_empty());
    // Drained: new items go to memory again.
    q.ack(seq).unwrap();
    q.push(seq + 1, vec![1; 10]).unwrap();
    assert!(segments(dir.path()).is_empty());
    assert_eq!(q.usage().unwrap().memory_bytes, 10);
}

#[test]
fn exhaustion_at_each_limit() {
    // Memory full, no disk queue.
    let dir = tempfile::tempdir().unwrap();
    let mut q = SourceQueue::open(
        dir.path(),
        "q",
        QueueLimits { memory_bytes: 100, disk: DiskLimit::Disabled, ..small() },
    )
    .unwrap();
    q.push(1, vec![0; 100]).unwrap();
    let err = q.push(2, vec![0; 1]).unwrap_err();
    assert!(
        matches!(err, QueueError::Full { reason: FullReason::MemoryFullDiskDisabled { .. } }),
        "{err}"
    );
    assert_eq!(err.retry(), understudy_core::Retry::Persistent);
    // Still usable; the refused item was not queued.
    assert_eq!(q.pop().unwrap().unwrap().0, 1);
    assert!(q.pop().unwrap().is_none());
    assert!(matches!(q.flush_to_disk(), Err(QueueError::DiskDisabled)));

    // Disk at its limit.
    let dir = tempfile::tempdir().unwrap();
    let mut q = SourceQueue::open(
        dir.path(),
        "q",
        QueueLimits { memory_bytes: 100, disk: DiskLimit::Limited(1_000), ..small() },
    )
    .unwrap();
    q.push(1, vec![0; 100]).unwrap();
    q.push(2, vec![0; 500]).unwrap(); // 8 header + 20 + 500 on disk
    let usage = q.usage().unwrap();
    assert_eq!((usage.disk_bytes, usage.disk_percent, usage.alert), (528, 52, true));
    q.push(3, vec![0; 400]).unwrap(); // 948
    let err = q.push(4, vec![0; 40]).unwrap_err();
    assert!(
        matches!(
            err,
            QueueError::Full { reason: FullReason::DiskLimit { disk_limit_bytes: 1_000 } }
        ),
        "{err}"
    );
    // Acknowledging frees room.
    q.ack(2).unwrap();
    q.push(4, vec![0; 40]).unwrap();

    // Minimum free space: ask for more than any volume has.
    let dir = tempfile::tempdir().unwrap();
    let mut q = SourceQueue::open(
        dir.path(),
        "q",
        QueueLimits { memory_bytes: 100, min_free_bytes: u64::MAX / 4, ..small() },
    )
    .unwrap();
    q.push(1, vec![0; 100]).unwrap();
    let err = q.push(2, vec![0; 1]).unwrap_err();
    assert!(matches!(err, QueueError::Full { reason: FullReason::MinFree { .. } }), "{err}");
    assert!(segments(dir.path()).is_empty());

    // Unlimited: the percentage is of what the free space allows.
    let dir = tempfile::tempdir().unwrap();
    let mut q =
        SourceQueue::open(dir.path(), "q", QueueLimits { memory_bytes: 0, ..small() }).unwrap();
    q.push(1, vec![0; 10]).unwrap();
    let usage = q.usage().unwrap();
    assert!(usage.disk_bytes > 0 && usage.disk_percent < 50 && !usage.alert);
}

#[test]
fn a_clean_shutdown_reloads_everything_and_a_crash_discards_the_tail() {
    let dir = tempfile::tempdir().unwrap();
    let limits = QueueLimits { memory_bytes: 1_000, ..small() };
    let mut q = SourceQueue::open(dir.path(), "job", limits).unwrap();
    for seq in 1..=20 {
        q.push(seq, item(seq, 300)).unwrap();
    }
    // Three in flight, one acknowledged.
    for _ in 0..3 {
        q.pop().unwrap();
    }
    q.ack(1).unwrap();
    q.flush_to_disk().unwrap();
    drop(q);

    let mut q = SourceQueue::open(dir.path(), "job", limits).unwrap();
    assert_eq!(q.recovery().reloaded_items, 19);
    // The target says it has 4: resume after it.
    q.ack(4).unwrap();
    q.rewind();
    let seqs: Vec<u64> = std::iter::from_fn(|| q.pop().unwrap().map(|i| i.0)).collect();
    assert_eq!(seqs, (5..=20).collect::<Vec<_>>());
    // Pushing continues after the reloaded items, and refuses going backwards.
    assert!(matches!(q.push(20, vec![]), Err(QueueError::OutOfOrder { .. })));
    q.push(21, vec![]).unwrap();

    // Usable after a flush, but a change after it withdraws the flush.
    q.flush_to_disk().unwrap();
    assert_eq!(q.pop().unwrap().unwrap().0, 5);
    drop(q);
    let mut q = SourceQueue::open(dir.path(), "job", limits).unwrap();
    assert!(q.is_empty() && q.recovery().discarded_segments > 0);
    q.push(21, vec![]).unwrap();

    // Now stop without flushing: memory is lost, so what spilled is discarded, not resent
    // with a gap before it.
    for seq in 22..=40 {
        q.push(seq, item(seq, 300)).unwrap();
    }
    assert!(!segments(dir.path()).is_empty());
    drop(q);
    let q = SourceQueue::open(dir.path(), "job", limits).unwrap();
    assert!(q.recovery().discarded_segments > 0);
    assert_eq!(q.recovery().reloaded_items, 0);
    assert!(q.is_empty());
    assert!(segments(dir.path()).is_empty());
}

#[test]
fn one_queue_per_label_at_a_time() {
    let dir = tempfile::tempdir().unwrap();
    let a = SourceQueue::open(dir.path(), "job", small()).unwrap();
    let started = std::time::Instant::now();
    assert!(matches!(SourceQueue::open(dir.path(), "job", small()), Err(QueueError::Io { .. })));
    assert!(started.elapsed() >= std::time::Duration::from_secs(1), "it waited for the holder");
    // A holder that lets go while the next one waits (a stopping task dropping it) hands over.
    let letting_go = std::thread::spawn(move || {
        std::thread::sleep(std::time::Duration::from_millis(200));
        drop(a);
    });
    let _a = SourceQueue::open(dir.path(), "job", small()).unwrap();
    letting_go.join().unwrap();
    let _b = SourceQueue::open(dir.path(), "other", small()).unwrap();
    for bad in ["", "../x", "a/b", ".hidden", "sp ace"] {
        assert!(matches!(
            SourceQueue::open(dir.path(), bad, small()),
            Err(QueueError::InvalidLabel { .. })
        ));
    }
}
