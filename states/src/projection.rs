//! The status projections: what `job show` reports, derived from each event, the job's data and
//! the state the event left it in. Nothing here feeds back into decisions.

use understudy_core::effect::ScriptStage;
use understudy_core::event::{EventEnvelope, FaultSeverity, JobEvent};
use understudy_core::status::{
    Health, JobStatus, MirrorCounters, MirrorStatus, ReplicationStatus, StateName, TargetDataState,
    TransmitMode,
};

use crate::machine::{Activity, JobData};

/// Folds one event into the status.
pub fn observe(status: &mut JobStatus, data: &JobData, state: StateName, envelope: &EventEnvelope) {
    let at = envelope.recorded_at;
    match &envelope.event {
        JobEvent::StartSucceeded { connection } | JobEvent::Reconnected { connection } => {
            status.connection_id = Some(connection.id);
            status.encrypted = connection.encrypted;
            status.connected_since = Some(at);
        }
        JobEvent::MirrorStarted { .. } => {
            status.mirror_started_at = Some(at);
            status.mirror_ended_at = None;
            status.mirror_skipped_bytes = 0;
            status.mirror_percent = None;
            status.mirror_remaining_bytes = None;
            set_mirror_counters(status, &MirrorCounters::default(), data);
        }
        JobEvent::MirrorSizeCalculated { total_bytes, total_files } => {
            let counters = MirrorCounters {
                total_bytes: Some(*total_bytes),
                total_files: Some(*total_files),
                ..MirrorCounters::default()
            };
            status.mirror_percent = counters.percent();
            status.mirror_remaining_bytes = counters.remaining_bytes();
        }
        JobEvent::MirrorProgressed { counters } => set_mirror_counters(status, counters, data),
        JobEvent::MirrorCompleted { counters } => {
            set_mirror_counters(status, counters, data);
            status.mirror_ended_at = Some(at);
            status.last_mirror_duration_ms = status
                .mirror_started_at
                .map(|started| (at - started).num_milliseconds().max(0).unsigned_abs());
            if counters.total_bytes.is_some() {
                status.mirror_percent = Some(100.0);
                status.mirror_remaining_bytes = Some(0);
            }
        }
        JobEvent::MirrorStopped => status.mirror_ended_at = Some(at),
        JobEvent::ReplicationProgressed { counters } => {
            status.replication_queue_bytes = counters.queue_bytes;
            status.disk_queue_bytes = counters.disk_queue_bytes;
            status.bytes_sent = counters.bytes_sent;
            status.bytes_sent_compressed = counters.bytes_sent_compressed;
            status.recovery_point_latency_ms = counters.recovery_point_latency_ms;
            status.replication_data_bytes = counters.replication_data_bytes;
            status.replication_operations = counters.replication_operations;
        }
        JobEvent::VerificationCompleted { summary } => {
            status.last_verification = Some(summary.clone())
        }
        JobEvent::Stopped
        | JobEvent::ConnectionLost { .. }
        | JobEvent::QueueExhausted
        | JobEvent::Recovered { .. }
        | JobEvent::Failed { .. }
        | JobEvent::TargetReleased
        | JobEvent::Deleted => {
            status.connected_since = None;
            status.connection_id = None;
            if matches!(
                envelope.event,
                JobEvent::QueueExhausted
                    | JobEvent::Stopped
                    | JobEvent::TargetReleased
                    | JobEvent::Deleted
            ) {
                status.replication_queue_bytes = 0;
                status.disk_queue_bytes = 0;
            }
        }
        _ => {}
    }
    status.fault = data
        .faults
        .values()
        .max_by_key(|f| f.severity == FaultSeverity::Error)
        .map(|f| f.message.clone());
    if let JobEvent::Failed { failure } = &envelope.event {
        status.fault = Some(failure.message.clone());
    }
    derive_modes(status, data, state, &envelope.event);
}

fn set_mirror_counters(status: &mut JobStatus, counters: &MirrorCounters, data: &JobData) {
    status.mirror_counters = counters.clone();
    status.mirror_skipped_bytes = counters.bytes_skipped;
    // Without "calculate size" the seeds show no percentage and no bytes remaining.
    let calculated = data.mirror.as_ref().is_some_and(|m| m.calculate_size);
    if calculated && counters.total_bytes.is_some() {
        status.mirror_percent = counters.percent();
        status.mirror_remaining_bytes = counters.remaining_bytes();
    } else if !calculated {
        status.mirror_percent = None;
        status.mirror_remaining_bytes = None;
    }
}

/// The activity `job show` reports after `event` left the job in `state`. Derived on demand
/// (see [`crate::Job`]): it depends on the last event alone.
pub fn activity(event: &JobEvent, state: StateName) -> String {
    if let JobEvent::Created { spec } = event {
        return format!("Created {} job {:?}", spec.job_type.label(), spec.name);
    }
    let summary = event.summary();
    match event {
        JobEvent::ScriptCompleted { stage: ScriptStage::PreCutover, result } => {
            format!("{state}: pre-cutover script {result}")
        }
        _ if summary.is_empty() => format!("{state}: {}", event.name()),
        _ => format!("{state}: {} ({summary})", event.name()),
    }
}

fn derive_modes(status: &mut JobStatus, data: &JobData, state: StateName, event: &JobEvent) {
    use StateName as S;
    let mirroring = data.activities.contains_key(&Activity::Mirror);
    let has_error_fault = data.faults.values().any(|f| f.severity == FaultSeverity::Error);
    let has_warning_fault = data.faults.values().any(|f| f.severity == FaultSeverity::Warning);

    status.health = match state {
        S::Uninitialized | S::Deleted => Health::Unknown,
        S::Error | S::FailoverConditionMet => Health::Error,
        _ if has_error_fault => Health::Error,
        S::Stopped | S::Disconnected | S::Paused => Health::Warning,
        S::Starting
            if data.reconnect_attempts > 0 || matches!(event, JobEvent::StartFailed { .. }) =>
        {
            Health::Warning
        }
        _ if has_warning_fault => Health::Warning,
        _ => Health::Healthy,
    };

    status.mirror_status = if data.activities.contains_key(&Activity::Verification) {
        MirrorStatus::Verifying
    } else if data.activities.contains_key(&Activity::Orphans) {
        MirrorStatus::RemovingOrphans
    } else if mirroring {
        if data.mirror_paused || state == S::Paused {
            MirrorStatus::Paused
        } else if data.mirror.as_ref().is_some_and(|m| m.calculate_size)
            && status.mirror_percent.is_none()
        {
            MirrorStatus::Calculating
        } else if status.mirror_remaining_bytes == Some(0) {
            // Everything sent; the target is still writing.
            MirrorStatus::Waiting
        } else {
            MirrorStatus::InProgress
        }
    } else if matches!(event, JobEvent::MirrorStopped)
        || status.mirror_status == MirrorStatus::Stopped
    {
        // A stopped mirror stays Stopped until the next mirror starts.
        MirrorStatus::Stopped
    } else {
        MirrorStatus::Idle
    };

    let capturing = data.activities.contains_key(&Activity::Capture);
    status.replication_status = match state {
        S::Connected
        | S::Mirroring
        | S::Synchronized
        | S::Protecting
        | S::Paused
        | S::Disconnected
        | S::Reversing
            if capturing =>
        {
            if data.remirror_needed
                && matches!(state, S::Disconnected | S::Paused)
                && data.replication.queue_bytes == 0
            {
                // The queue was exhausted: changes are no longer kept.
                ReplicationStatus::OutOfMemory
            } else if data.faults.contains_key(&understudy_core::effect::FaultKind::ChangeCapture) {
                ReplicationStatus::Failed
            } else if status.replication_queue_bytes > 0 {
                ReplicationStatus::Replicating
            } else {
                ReplicationStatus::Ready
            }
        }
        S::Starting | S::Connected => ReplicationStatus::Pending,
        _ => ReplicationStatus::Stopped,
    };

    status.transmit_mode = match state {
        S::Connected | S::Mirroring | S::Synchronized | S::Protecting | S::Reversing => {
            if data.replication.held_by_schedule {
                TransmitMode::Scheduled
            } else {
                TransmitMode::Active
            }
        }
        S::Paused => TransmitMode::Paused,
        S::Error => TransmitMode::Error,
        _ => TransmitMode::Stopped,
    };

    status.target_data_state = match state {
        S::Uninitialized | S::Deleted => TargetDataState::Unknown,
        S::FailedOver | S::TestFailedOver => TargetDataState::RestoreRequired,
        S::CutOver => TargetDataState::Ok,
        _ if data.faults.contains_key(&understudy_core::effect::FaultKind::TargetDiskFull) => {
            TargetDataState::MirrorRequired
        }
        _ if mirroring => TargetDataState::Mirroring,
        _ if data.target_consistent && !data.remirror_needed => TargetDataState::Ok,
        _ if data.mirrored_once
            || data.remirror_needed
            || matches!(event, JobEvent::MirrorStopped) =>
        {
            TargetDataState::MirrorRequired
        }
        _ if status.target_data_state == TargetDataState::MirrorRequired => {
            TargetDataState::MirrorRequired
        }
        _ => TargetDataState::Unknown,
    };
}
