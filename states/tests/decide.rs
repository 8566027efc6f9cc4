//! Given / when / then for every (state, operator command) pair.
//!
//! Method: each leaf state is reached by its shortest ordinary event path; every operator
//! command is decided there. The outcome (the exact events, or the refusal's message) is
//! written into a table that is compared with `testdata/decide.txt`, a file a reviewer reads as
//! the machine's contract. `UNDERSTUDY_BLESS=1 cargo test -p understudy-states` rewrites it.
//! Separate tests pin the event contents of the important flows.

#![allow(clippy::unwrap_used)] // a test that cannot write its own table should panic

mod support;

use std::fmt::Write as _;

use support::{Given, at, connection, in_state, spec};
use understudy_core::effect::{Effect, Report, ScriptResult, ScriptStage};
use understudy_core::event::{JobEvent, MirrorKind, MirrorReason};
use understudy_core::spec::{BandwidthLimit, MirrorComparison, QueuePolicy, Script};
use understudy_core::status::{MirrorCounters, StateName};
use understudy_core::{Command, CommandKind, JobMachine, Rejection};
use understudy_states::Activity;

fn sample(kind: CommandKind) -> Command {
    match kind {
        CommandKind::Create => Command::Create { spec: Box::new(spec()) },
        CommandKind::Start => Command::Start,
        CommandKind::Pause => Command::Pause,
        CommandKind::Stop => Command::Stop,
        CommandKind::Delete => Command::Delete,
        CommandKind::StartMirror => Command::StartMirror { comparison: None, calculate_size: None },
        CommandKind::PauseMirror => Command::PauseMirror,
        CommandKind::ResumeMirror => Command::ResumeMirror,
        CommandKind::StopMirror => Command::StopMirror,
        CommandKind::Verify => Command::Verify { remirror: false },
        CommandKind::DeleteOrphans => Command::DeleteOrphans,
        CommandKind::Cutover => Command::Cutover { target_queue: None },
        CommandKind::Failover => Command::Failover { test: false, target_queue: None },
        CommandKind::UndoFailover => Command::UndoFailover,
        CommandKind::Reverse => Command::Reverse,
        CommandKind::SetBandwidth => {
            Command::SetBandwidth { limit: BandwidthLimit::Fixed { bytes_per_second: 1_000_000 } }
        }
        CommandKind::Complete | CommandKind::Recover => unreachable!("not an operator command"),
    }
}

fn table() -> String {
    let mut out = String::new();
    for state in StateName::leaves() {
        let given = in_state(state);
        writeln!(out, "== {state}  (allows: {})", names(&given.job.allowed())).unwrap();
        for kind in CommandKind::OPERATOR {
            let outcome = match given.when(sample(kind)) {
                Ok(events) if events.is_empty() => "accept, no events".to_string(),
                Ok(events) => format!(
                    "accept: {}",
                    events.iter().map(JobEvent::name).collect::<Vec<_>>().join(", ")
                ),
                Err(rejection) => format!("reject: {rejection}"),
            };
            writeln!(out, "{:<15} {outcome}", kind.as_str()).unwrap();
        }
    }
    out
}

fn names(kinds: &[CommandKind]) -> String {
    kinds.iter().map(|k| k.as_str()).collect::<Vec<_>>().join(", ")
}

#[test]
fn every_state_and_command_matches_the_contract() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/decide.txt");
    let actual = table();
    if std::env::var_os("UNDERSTUDY_BLESS").is_some() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, &actual).unwrap();
        return;
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_else(|_| {
        panic!("{} is missing: run with UNDERSTUDY_BLESS=1 to write it", path.display())
    });
    if expected != actual {
        let first = expected.lines().zip(actual.lines()).position(|(a, b)| a != b).unwrap_or(0);
        panic!(
            "the decide table changed at line {}:\n  expected: {}\n  actual:   {}\nrerun with UNDERSTUDY_BLESS=1 if the change is intended",
            first + 1,
            expected.lines().nth(first).unwrap_or(""),
            actual.lines().nth(first).unwrap_or("")
        );
    }
}

#[test]
fn rejections_name_the_state_and_what_it_allows() {
    let given = in_state(StateName::Stopped);
    let err = given.when(Command::Pause).unwrap_err();
    assert_eq!(
        err.to_string(),
        "cannot pause in Stopped: it allows start, delete, failover, set-bandwidth"
    );
    let Rejection::NotAllowed { allowed, .. } = err else { panic!("expected NotAllowed") };
    assert_eq!(allowed, given.job.allowed());
}

#[test]
fn allowed_lists_exactly_the_commands_that_would_be_accepted() {
    for state in StateName::leaves() {
        let given = in_state(state);
        for kind in CommandKind::OPERATOR {
            let accepted = given.when(sample(kind)).is_ok();
            assert_eq!(given.job.allowed().contains(&kind), accepted, "{state} {kind}");
        }
    }
}

#[test]
fn deciding_never_changes_the_job() {
    for state in StateName::leaves() {
        let given = in_state(state);
        let before = given.job.clone();
        for kind in CommandKind::OPERATOR {
            let _ = given.when(sample(kind));
        }
        assert_eq!(given.job, before, "{state}");
    }
}

#[test]
fn create_validates_the_spec_and_initializes() {
    let given = Given::new();
    let events = given.when(Command::Create { spec: Box::new(spec()) }).unwrap();
    assert_eq!(events, vec![JobEvent::Created { spec: Box::new(spec()) }, JobEvent::Initialized]);
    let mut bad = spec();
    bad.target.path = "/srv/alpha/inside".into();
    let err = given.when(Command::Create { spec: Box::new(bad) }).unwrap_err();
    assert!(matches!(err, Rejection::InvalidSpec(_)), "{err}");
}

#[test]
fn the_first_start_runs_a_full_mirror_and_logs_in_the_seeds_wording() {
    let mut given = Given::new();
    given.command(Command::Create { spec: Box::new(spec()) });
    let events = given.command(Command::Start);
    let JobEvent::StartRequested { mirror } = &events[0] else { panic!("{events:?}") };
    assert_eq!((mirror.kind, mirror.reason), (MirrorKind::Full, MirrorReason::Initial));

    let connected =
        given.report(Activity::Connection, Report::Connected { connection: connection(1) });
    let events = given.command(connected);
    assert_eq!(events[0], JobEvent::StartSucceeded { connection: connection(1) });
    assert!(matches!(events[1], JobEvent::MirrorStarted { .. }));
    assert_eq!(given.job.state(), StateName::Mirroring);

    let log = given.transitions.join("\n");
    assert!(log.starts_with("Entered TopState\nEntered UninitializedState\nChanging to StoppedState from UninitializedState in response to InitializedEvent\nExited UninitializedState\nEntered InitializedState\nEntered StoppedState"), "{log}");
    assert!(log.contains("Changing to MirroringState from ConnectedState in response to MirrorStartedEvent\nExited ConnectedState\nEntered MirroringState"), "{log}");
    assert!(log.contains("Changing to ConnectedState from StartingState in response to StartSucceededEvent\nExited StartingState\nEntered RunningState\nEntered ConnectedState"), "{log}");
}

#[test]
fn change_capture_is_installed_before_the_mirror_walks() {
    let mut given = in_state(StateName::Connected);
    let out = given.apply(JobEvent::MirrorStarted { mirror: support::full_mirror() });
    let names: Vec<&str> = out.effects.iter().map(|e| e.effect.name()).collect();
    let capture = names.iter().position(|n| *n == "StartChangeCapture").expect("capture started");
    let mirror = names.iter().position(|n| *n == "StartMirror").expect("mirror started");
    assert!(capture < mirror, "{names:?}");
}

#[test]
fn mirror_completion_then_catch_up_reaches_protecting() {
    let mut given = in_state(StateName::Mirroring);
    let done = given
        .report(Activity::Mirror, Report::MirrorFinished { counters: MirrorCounters::default() });
    assert_eq!(
        given.command(done),
        vec![JobEvent::MirrorCompleted { counters: MirrorCounters::default() }]
    );
    assert_eq!(given.job.state(), StateName::Synchronized);
    let caught_up = given.report(Activity::Capture, Report::ReplicationCaughtUp);
    assert_eq!(given.command(caught_up), vec![JobEvent::ReplicationCaughtUp]);
    assert_eq!(given.job.state(), StateName::Protecting);
    assert_eq!(given.job.status().target_data_state.as_str(), "OK");
}

#[test]
fn auto_cutover_follows_the_mirror_when_wait_for_user_is_off() {
    let mut s = spec();
    s.cutover.wait_for_user = false;
    let mut given = Given::with_spec(s)
        .then(JobEvent::StartRequested { mirror: support::full_mirror() })
        .then(JobEvent::StartSucceeded { connection: connection(1) })
        .then(JobEvent::MirrorStarted { mirror: support::full_mirror() });
    let done = given
        .report(Activity::Mirror, Report::MirrorFinished { counters: MirrorCounters::default() });
    let events = given.command(done);
    assert_eq!(events[1], JobEvent::CutoverRequested { target_queue: QueuePolicy::Apply });
    assert_eq!(given.job.state(), StateName::CutoverPending);
}

#[test]
fn pause_mirror_keeps_the_pointer_and_stop_mirror_requires_a_remirror() {
    let mut given = in_state(StateName::Mirroring);
    given.command(Command::PauseMirror);
    assert_eq!(given.job.status().mirror_status.as_str(), "Paused");
    assert!(given.when(Command::PauseMirror).is_err());
    given.command(Command::ResumeMirror);
    assert_eq!(given.job.state(), StateName::Mirroring);
    given.command(Command::StopMirror);
    assert_eq!(given.job.state(), StateName::Connected);
    assert_eq!(given.job.status().mirror_status.as_str(), "Stopped");
    assert_eq!(given.job.status().target_data_state.as_str(), "Mirror Required");
}

#[test]
fn a_paused_job_resumes_where_it_was_unless_the_queue_was_exhausted() {
    let mut given = in_state(StateName::Paused);
    assert_eq!(given.command(Command::Start), vec![JobEvent::Resumed { remirror: false }]);
    assert_eq!(given.job.state(), StateName::Protecting);

    let mut given = in_state(StateName::Paused);
    let exhausted = given.report(Activity::Capture, Report::QueueExhausted);
    given.command(exhausted);
    let events = given.command(Command::Start);
    assert_eq!(events[0], JobEvent::Resumed { remirror: true });
    let JobEvent::MirrorStarted { mirror } = &events[1] else { panic!("{events:?}") };
    assert_eq!(
        (mirror.kind, mirror.reason),
        (MirrorKind::Differential, MirrorReason::AutoRemirror)
    );
    assert_eq!(given.job.state(), StateName::Mirroring);
}

#[test]
fn queue_exhaustion_auto_disconnects_reconnects_and_remirrors() {
    let mut given = in_state(StateName::Protecting);
    let exhausted = given.report(Activity::Capture, Report::QueueExhausted);
    given.command(exhausted);
    assert_eq!(given.job.state(), StateName::Disconnected);
    let connected =
        given.report(Activity::Connection, Report::Connected { connection: connection(2) });
    let events = given.command(connected);
    assert_eq!(events[0], JobEvent::Reconnected { connection: connection(2) });
    let JobEvent::MirrorStarted { mirror } = &events[1] else { panic!("{events:?}") };
    assert_eq!(
        (mirror.kind, mirror.reason),
        (MirrorKind::Differential, MirrorReason::AutoRemirror)
    );
    assert_eq!(given.job.status().connection_id.map(|c| c.0), Some(2));
}

#[test]
fn a_lost_connection_with_the_queue_intact_drains_without_remirror() {
    let mut given = in_state(StateName::Disconnected);
    let connected =
        given.report(Activity::Connection, Report::Connected { connection: connection(2) });
    assert_eq!(given.command(connected), vec![JobEvent::Reconnected { connection: connection(2) }]);
    assert_eq!(given.job.state(), StateName::Synchronized);
}

#[test]
fn stale_completions_are_ignored() {
    let mut given = in_state(StateName::Mirroring);
    let old = given
        .report(Activity::Mirror, Report::MirrorFinished { counters: MirrorCounters::default() });
    given.command(Command::StopMirror);
    given.command(Command::StartMirror {
        comparison: Some(MirrorComparison::SendEverything),
        calculate_size: None,
    });
    assert_eq!(given.when(old).unwrap(), Vec::<JobEvent>::new());
}

#[test]
fn progress_is_recorded_at_most_every_interval() {
    let given = in_state(StateName::Mirroring);
    let progress = given
        .report(Activity::Mirror, Report::MirrorProgress { counters: MirrorCounters::default() });
    assert_eq!(given.when(progress.clone()).unwrap().len(), 1);
    let mut given = given;
    given.command(progress.clone());
    // The next report at the same moment is not recorded.
    assert!(
        given.job.decide(given.history.last().unwrap().recorded_at, &progress).unwrap().is_empty()
    );
    assert_eq!(given.job.decide(at(1000), &progress).unwrap().len(), 1);
}

#[test]
fn cutover_runs_the_pre_script_settles_the_queue_releases_then_the_post_script() {
    let mut s = spec();
    let script = Script {
        path: "/bin/true".into(),
        args: vec![],
        delay_until_complete: true,
        timeout_secs: 5,
    };
    s.cutover.pre_script = Some(script.clone());
    s.cutover.post_script = Some(script);
    let mut given = Given::with_spec(s)
        .then(JobEvent::StartRequested { mirror: support::full_mirror() })
        .then(JobEvent::StartSucceeded { connection: connection(1) })
        .then(JobEvent::MirrorStarted { mirror: support::full_mirror() })
        .then(JobEvent::MirrorCompleted { counters: MirrorCounters::default() })
        .then(JobEvent::ReplicationCaughtUp);
    given.command(Command::Cutover { target_queue: Some(QueuePolicy::Discard) });
    assert_eq!(given.job.state(), StateName::CutoverPending);
    let ok = ScriptResult { exit_code: Some(0), ..ScriptResult::default() };
    let pre = given.report(
        Activity::Script,
        Report::ScriptFinished { stage: ScriptStage::PreCutover, result: ok.clone() },
    );
    given.command(pre);
    let settle = &given.job.data().activities[&Activity::TargetQueue];
    assert_eq!(settle.effect, Effect::SettleTargetQueue { policy: QueuePolicy::Discard });
    let settled = given.report(
        Activity::TargetQueue,
        Report::TargetQueueSettled { policy: QueuePolicy::Discard, operations: 7 },
    );
    given.command(settled);
    assert_eq!(given.job.state(), StateName::CuttingOver);
    let released = given.report(Activity::Release, Report::TargetReleased);
    assert_eq!(given.command(released), vec![JobEvent::TargetReleased]);
    let post = given.report(
        Activity::Script,
        Report::ScriptFinished { stage: ScriptStage::PostCutover, result: ok },
    );
    given.command(post);
    assert_eq!(given.job.state(), StateName::CutOver);
    assert_eq!(given.job.allowed(), vec![CommandKind::Delete]);
}

#[test]
fn the_monitor_tripping_waits_for_the_user_or_fails_over() {
    let mut s = spec();
    s.failover_monitor.enabled = true;
    let given = Given::with_spec(s.clone());
    let tripped =
        given.report(Activity::Monitor, Report::SourceFailed { reason: "20 checks failed".into() });
    assert_eq!(
        given.when(tripped).unwrap(),
        vec![JobEvent::FailoverConditionMet { reason: "20 checks failed".into() }]
    );

    s.failover_monitor.wait_for_user = false;
    let mut given = Given::with_spec(s);
    let tripped = given.report(Activity::Monitor, Report::SourceFailed { reason: "gone".into() });
    let events = given.command(tripped);
    assert_eq!(
        events[1],
        JobEvent::FailoverRequested { test: false, target_queue: QueuePolicy::Apply }
    );
    assert_eq!(given.job.state(), StateName::CutoverPending);
}

#[test]
fn failover_undo_restarts_protection_with_a_differential_mirror() {
    let mut given = in_state(StateName::TestFailedOver);
    given.command(Command::UndoFailover);
    assert_eq!(given.job.state(), StateName::Starting);
    let connected =
        given.report(Activity::Connection, Report::Connected { connection: connection(3) });
    let events = given.command(connected);
    let JobEvent::MirrorStarted { mirror } = &events[1] else { panic!("{events:?}") };
    assert_eq!(
        (mirror.kind, mirror.reason),
        (MirrorKind::Differential, MirrorReason::UndoFailover)
    );
}

#[test]
fn reverse_mirrors_back_then_protects_the_other_way() {
    let mut given = in_state(StateName::Reversing);
    let connected =
        given.report(Activity::Connection, Report::Connected { connection: connection(4) });
    given.command(connected);
    let done = given
        .report(Activity::Mirror, Report::MirrorFinished { counters: MirrorCounters::default() });
    given.command(done);
    assert_eq!(given.job.state(), StateName::Synchronized);
    assert!(given.job.data().reversed);
}

#[test]
fn the_engine_restarting_mid_job_reconnects_and_remirrors_what_it_may_have_missed() {
    let mut given = in_state(StateName::Protecting);
    assert_eq!(given.command(Command::Recover), vec![JobEvent::Recovered { remirror: true }]);
    assert_eq!(given.job.state(), StateName::Disconnected);
    let connected =
        given.report(Activity::Connection, Report::Connected { connection: connection(2) });
    let events = given.command(connected);
    let JobEvent::MirrorStarted { mirror } = &events[1] else { panic!("{events:?}") };
    assert_eq!(mirror.kind, MirrorKind::Differential);
    // A stopped job has nothing in flight and records nothing.
    assert!(in_state(StateName::Stopped).when(Command::Recover).unwrap().is_empty());
}

#[test]
fn a_permanent_failure_stops_the_job_in_error_until_started_again() {
    let mut given = in_state(StateName::Starting);
    let failed = given.report(
        Activity::Connection,
        Report::ConnectFailed {
            failure: understudy_core::Failure::permanent("protocol version 9 is not 1"),
        },
    );
    given.command(failed);
    assert_eq!(given.job.state(), StateName::Error);
    assert_eq!(given.job.status().health.as_str(), "Error");
    given.command(Command::Start);
    assert_eq!(given.job.state(), StateName::Starting);
}

#[test]
fn starting_gives_up_after_the_endpoint_wait() {
    let given = in_state(StateName::Starting);
    let failed = given.report(
        Activity::Connection,
        Report::ConnectFailed { failure: understudy_core::Failure::temporary("refused") },
    );
    assert_eq!(given.when(failed.clone()).unwrap().len(), 1);
    let late = given.job.decide(at(3600), &failed).unwrap();
    assert!(matches!(late[1], JobEvent::Failed { .. }), "{late:?}");
}

#[test]
fn deleting_stops_everything_and_absorbs() {
    let mut given = in_state(StateName::Mirroring);
    given.command(Command::Delete);
    assert_eq!(given.job.state(), StateName::Deleted);
    assert!(given.job.data().activities.is_empty());
    assert!(given.job.allowed().is_empty());
}

#[test]
fn a_target_that_diverged_while_away_is_remirrored_on_reconnect() {
    let mut given = in_state(StateName::Disconnected);
    let mut info = connection(2);
    info.target_diverged = true;
    let connected = given.report(Activity::Connection, Report::Connected { connection: info });
    let events = given.command(connected);
    let JobEvent::MirrorStarted { mirror } = &events[1] else { panic!("{events:?}") };
    assert_eq!(
        (mirror.kind, mirror.reason),
        (MirrorKind::Differential, MirrorReason::AutoRemirror)
    );
    assert_eq!(given.job.state(), StateName::Mirroring);
}

#[test]
fn a_replica_refuses_source_work_and_says_where_to_run_it() {
    let replica = understudy_core::spec::JobSpec {
        role: understudy_core::spec::JobRole::Replica { source_address: "10.0.0.1:6320".into() },
        ..spec()
    };
    let given = Given::with_spec(replica)
        .then(JobEvent::StartRequested { mirror: support::full_mirror() })
        .then(JobEvent::StartSucceeded { connection: connection(1) })
        .then(JobEvent::MirrorStarted { mirror: support::full_mirror() })
        .then(JobEvent::MirrorCompleted { counters: MirrorCounters::default() })
        .then(JobEvent::ReplicationCaughtUp);
    assert_eq!(given.job.state(), StateName::Protecting);
    for command in [
        Command::Pause,
        Command::Verify { remirror: false },
        Command::Cutover { target_queue: None },
    ] {
        let refusal = given.when(command.clone()).unwrap_err().to_string();
        assert!(refusal.contains("run it on the source engine"), "{command:?}: {refusal}");
    }
    let allowed = given.job.allowed();
    assert!(allowed.contains(&CommandKind::Failover), "{allowed:?}");
    assert!(!allowed.contains(&CommandKind::Pause), "{allowed:?}");
    assert!(given.when(Command::Failover { test: false, target_queue: None }).is_ok());
}

#[test]
fn reversing_a_job_between_two_engines_is_refused_with_what_to_do() {
    let remote = understudy_core::spec::JobSpec {
        target: understudy_core::spec::TargetSpec {
            endpoint: understudy_core::spec::TargetEndpoint::Remote {
                host: "10.0.0.2".into(),
                port: 6320,
            },
            path: "/srv/beta".into(),
        },
        ..spec()
    };
    let mut given = Given::with_spec(remote);
    for event in in_state(StateName::FailedOver).history.into_iter().skip(2) {
        given.apply(event.event);
    }
    assert_eq!(given.job.state(), StateName::FailedOver);
    let refusal = given.when(Command::Reverse).unwrap_err().to_string();
    assert!(refusal.contains("not supported yet"), "{refusal}");
    assert!(given.when(Command::UndoFailover).is_ok());
}
