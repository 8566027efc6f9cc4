//! The job's states and its status projections, with the seeds' names and values.
//!
//! [`StateName`] is the vocabulary of the job machine (the machine itself lives in
//! `understudy-states`); [`JobStatus`] is everything `job show` reports, derived from events.

use std::fmt;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::ids::ConnectionId;

/// Every state of the job machine, nested as in DESIGN.md §4 (see [`StateName::parent`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[allow(missing_docs)] // documented in DESIGN.md §4 and by `describe`
pub enum StateName {
    Top,
    Uninitialized,
    Initialized,
    Stopped,
    Starting,
    Running,
    Connected,
    Mirroring,
    Synchronized,
    Protecting,
    Paused,
    Disconnected,
    FailoverConditionMet,
    CutoverPending,
    CuttingOver,
    FailingOver,
    CutOver,
    FailedOver,
    TestFailedOver,
    Reversing,
    Error,
    Deleted,
}

impl StateName {
    /// Every state, superstates included, in the order of DESIGN.md §4.
    pub const ALL: [StateName; 22] = [
        StateName::Top,
        StateName::Uninitialized,
        StateName::Initialized,
        StateName::Stopped,
        StateName::Starting,
        StateName::Running,
        StateName::Connected,
        StateName::Mirroring,
        StateName::Synchronized,
        StateName::Protecting,
        StateName::Paused,
        StateName::Disconnected,
        StateName::FailoverConditionMet,
        StateName::CutoverPending,
        StateName::CuttingOver,
        StateName::FailingOver,
        StateName::CutOver,
        StateName::FailedOver,
        StateName::TestFailedOver,
        StateName::Reversing,
        StateName::Error,
        StateName::Deleted,
    ];

    /// The states a job can actually be in (the leaves of the hierarchy).
    pub fn leaves() -> impl Iterator<Item = StateName> {
        Self::ALL.into_iter().filter(|s| !s.is_superstate())
    }

    /// Whether this is a superstate (a job is never *only* in it).
    pub fn is_superstate(self) -> bool {
        matches!(self, StateName::Top | StateName::Initialized | StateName::Running)
    }

    /// The enclosing state; `None` for `Top`.
    pub fn parent(self) -> Option<StateName> {
        use StateName::*;
        match self {
            Top => None,
            Uninitialized | Initialized | Deleted => Some(Top),
            Connected | Mirroring | Synchronized | Protecting => Some(Running),
            _ => Some(Initialized),
        }
    }

    /// The name used in the API and on the command line ("Mirroring", "CutOver").
    pub fn as_str(self) -> &'static str {
        use StateName::*;
        match self {
            Top => "Top",
            Uninitialized => "Uninitialized",
            Initialized => "Initialized",
            Stopped => "Stopped",
            Starting => "Starting",
            Running => "Running",
            Connected => "Connected",
            Mirroring => "Mirroring",
            Synchronized => "Synchronized",
            Protecting => "Protecting",
            Paused => "Paused",
            Disconnected => "Disconnected",
            FailoverConditionMet => "FailoverConditionMet",
            CutoverPending => "CutoverPending",
            CuttingOver => "CuttingOver",
            FailingOver => "FailingOver",
            CutOver => "CutOver",
            FailedOver => "FailedOver",
            TestFailedOver => "TestFailedOver",
            Reversing => "Reversing",
            Error => "Error",
            Deleted => "Deleted",
        }
    }

    /// The name in the seeds' job log wording ("MirroringState").
    pub fn log_name(self) -> String {
        format!("{}State", self.as_str())
    }

    /// Parses an API / command-line name, case-insensitively, with or without "State".
    pub fn parse(name: &str) -> Option<StateName> {
        let name = name.strip_suffix("State").unwrap_or(name);
        Self::ALL.into_iter().find(|s| s.as_str().eq_ignore_ascii_case(name))
    }

    /// Whether no command leads out of this state any more except, for `CutOver`, delete.
    pub fn is_terminal(self) -> bool {
        matches!(self, StateName::CutOver | StateName::Deleted)
    }

    /// Whether this state is `other` or nested (at any depth) inside it.
    pub fn is_within(self, other: StateName) -> bool {
        let mut cursor = Some(self);
        while let Some(s) = cursor {
            if s == other {
                return true;
            }
            cursor = s.parent();
        }
        false
    }
}

impl fmt::Display for StateName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

macro_rules! seed_enum {
    ($(#[$meta:meta])* $name:ident { $($variant:ident => $text:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
        #[allow(missing_docs)] // the seeds' values, spelled as the seeds spell them
        pub enum $name { $(#[serde(rename = $text)] $variant),+ }

        impl $name {
            /// Every value, in the seeds' order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The seeds' spelling of the value.
            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text),+ }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.pad(self.as_str())
            }
        }
    };
}

seed_enum!(
    /// Mirror status, as the seeds define it.
    MirrorStatus {
        Calculating => "Calculating",
        InProgress => "In Progress",
        Waiting => "Waiting",
        Idle => "Idle",
        Paused => "Paused",
        Stopped => "Stopped",
        RemovingOrphans => "Removing Orphans",
        Verifying => "Verifying",
        Unknown => "Unknown",
    }
);

seed_enum!(
    /// Replication status, as the seeds define it.
    ReplicationStatus {
        Replicating => "Replicating",
        Ready => "Ready",
        Pending => "Pending",
        Stopped => "Stopped",
        OutOfMemory => "Out of Memory",
        Failed => "Failed",
        Unknown => "Unknown",
    }
);

seed_enum!(
    /// Transmit mode, as the seeds define it.
    TransmitMode {
        Active => "Active",
        Paused => "Paused",
        Scheduled => "Scheduled",
        Stopped => "Stopped",
        Error => "Error",
        Unknown => "Unknown",
    }
);

seed_enum!(
    /// Target data state, as the seeds define it.
    TargetDataState {
        Ok => "OK",
        Mirroring => "Mirroring",
        MirrorRequired => "Mirror Required",
        SnapshotReverted => "Snapshot Reverted",
        RestoreRequired => "Restore Required",
        Busy => "Busy",
        NotLoaded => "Not Loaded",
        Unknown => "Unknown",
    }
);

seed_enum!(
    /// Job health, as the seeds define it.
    Health {
        Healthy => "Healthy",
        Warning => "Warning",
        Error => "Error",
        Unknown => "Unknown",
    }
);

/// Everything `job show` reports about a job, derived from its events alone.
///
/// Field names are the API's (`job show --json`); counters are as of the last recorded
/// progress checkpoint.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct JobStatus {
    /// Job health.
    pub health: Health,
    /// The most recent activity, in words.
    pub activity: String,
    /// Mirror status.
    pub mirror_status: MirrorStatus,
    /// Replication status.
    pub replication_status: ReplicationStatus,
    /// Transmit mode.
    pub transmit_mode: TransmitMode,
    /// Target data state.
    pub target_data_state: TargetDataState,
    /// The current connection's number, if connected.
    pub connection_id: Option<ConnectionId>,
    /// Whether the connection is encrypted.
    pub encrypted: bool,
    /// When the current connection was established (blank when no socket).
    pub connected_since: Option<DateTime<Utc>>,
    /// Mirror progress in percent, when the size is known.
    pub mirror_percent: Option<f64>,
    /// Bytes the mirror still has to send, when the size is known.
    pub mirror_remaining_bytes: Option<u64>,
    /// Bytes a difference mirror skipped because they were the same.
    pub mirror_skipped_bytes: u64,
    /// Bytes in the source's replication queue (memory and disk).
    pub replication_queue_bytes: u64,
    /// Bytes of the queue that are on disk.
    pub disk_queue_bytes: u64,
    /// Mirror and replication bytes sent.
    pub bytes_sent: u64,
    /// The same after compression.
    pub bytes_sent_compressed: u64,
    /// How far the target is behind the source for replication, in milliseconds.
    pub recovery_point_latency_ms: Option<u64>,
    /// File data change capture has read and queued since the job started.
    pub replication_data_bytes: u64,
    /// Operations change capture has queued since the job started.
    pub replication_operations: u64,
    /// When the current or last mirror started.
    pub mirror_started_at: Option<DateTime<Utc>>,
    /// When the last mirror ended.
    pub mirror_ended_at: Option<DateTime<Utc>>,
    /// Duration of the last complete mirror.
    pub last_mirror_duration_ms: Option<u64>,
    /// The current or last mirror's counters.
    pub mirror_counters: MirrorCounters,
    /// The last verification's result, if any.
    pub last_verification: Option<VerificationSummary>,
    /// Why the job is in Error or Warning, if it is.
    pub fault: Option<String>,
}

impl Default for JobStatus {
    fn default() -> Self {
        JobStatus {
            health: Health::Unknown,
            activity: String::new(),
            mirror_status: MirrorStatus::Idle,
            replication_status: ReplicationStatus::Stopped,
            transmit_mode: TransmitMode::Stopped,
            target_data_state: TargetDataState::Unknown,
            connection_id: None,
            encrypted: false,
            connected_since: None,
            mirror_percent: None,
            mirror_remaining_bytes: None,
            mirror_skipped_bytes: 0,
            replication_queue_bytes: 0,
            disk_queue_bytes: 0,
            bytes_sent: 0,
            bytes_sent_compressed: 0,
            recovery_point_latency_ms: None,
            replication_data_bytes: 0,
            replication_operations: 0,
            mirror_started_at: None,
            mirror_ended_at: None,
            last_mirror_duration_ms: None,
            mirror_counters: MirrorCounters::default(),
            last_verification: None,
            fault: None,
        }
    }
}

/// A mirror's counters, as the seeds' engine log reports them at "Mirror Ended".
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct MirrorCounters {
    /// Bytes the mirror has to consider in all, when calculated.
    pub total_bytes: Option<u64>,
    /// Files the mirror has to consider in all, when calculated.
    pub total_files: Option<u64>,
    /// Directories mirrored so far.
    pub directories_mirrored: u64,
    /// Files mirrored so far.
    pub files_mirrored: u64,
    /// Bytes sent so far.
    pub bytes_mirrored: u64,
    /// Bytes found identical and not sent.
    pub bytes_skipped: u64,
    /// Files whose data was compared by checksum.
    pub files_checksummed: u64,
    /// Files that vanished or could not be read, skipped.
    pub files_skipped: u64,
    /// Orphans found on the target.
    pub orphans_found: u64,
    /// Orphans deleted from the target.
    pub orphans_deleted: u64,
}

impl MirrorCounters {
    /// Bytes considered so far: sent or skipped.
    pub fn bytes_done(&self) -> u64 {
        self.bytes_mirrored + self.bytes_skipped
    }

    /// Percent complete, when the size is known.
    pub fn percent(&self) -> Option<f64> {
        let total = self.total_bytes?;
        if total == 0 {
            return Some(100.0);
        }
        // Precision loss is fine: this is a display value.
        #[allow(clippy::cast_precision_loss)]
        let percent = (self.bytes_done() as f64 / total as f64 * 100.0).min(100.0);
        Some((percent * 100.0).round() / 100.0)
    }

    /// Bytes still to go, when the size is known.
    pub fn remaining_bytes(&self) -> Option<u64> {
        self.total_bytes.map(|t| t.saturating_sub(self.bytes_done()))
    }
}

/// Replication counters, reported by the source side of a connection.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ReplicationCounters {
    /// Bytes waiting in the source queue, memory and disk.
    pub queue_bytes: u64,
    /// Of which on disk.
    pub disk_queue_bytes: u64,
    /// Total bytes sent on this job (mirror and replication).
    pub bytes_sent: u64,
    /// The same after compression.
    pub bytes_sent_compressed: u64,
    /// Replication operations acknowledged by the target.
    pub operations_applied: u64,
    /// Recovery point latency, when there is something to measure.
    pub recovery_point_latency_ms: Option<u64>,
    /// A bandwidth schedule window holds transmission at zero (transmit mode Scheduled).
    pub held_by_schedule: bool,
    /// File data change capture has read and queued (replication only, not mirrors).
    pub replication_data_bytes: u64,
    /// Operations change capture has queued, after coalescing.
    pub replication_operations: u64,
}

impl ReplicationCounters {
    /// Whether replication moved between the two: data queued, sent for changes or applied.
    /// Bytes on the wire alone (heartbeats of an idle job) do not count.
    pub fn moved_since(&self, before: &ReplicationCounters) -> bool {
        let key = |c: &ReplicationCounters| {
            (
                c.queue_bytes,
                c.disk_queue_bytes,
                c.operations_applied,
                c.held_by_schedule,
                c.replication_data_bytes,
                c.replication_operations,
            )
        };
        key(self) != key(before)
    }
}

/// The 13 counters of a verification, in the seeds' order, plus its outcome.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
#[allow(missing_docs)] // the seeds' counter names
pub struct VerificationSummary {
    pub directories_compared: u64,
    pub directories_missing: u64,
    pub directories_remirrored: u64,
    pub files_compared: u64,
    pub files_missing: u64,
    pub files_different: u64,
    pub files_encrypted: u64,
    pub files_remirrored: u64,
    pub bytes_skipped: u64,
    pub bytes_compared: u64,
    pub bytes_missing: u64,
    pub bytes_different: u64,
    pub bytes_remirrored: u64,
    /// Where the verification log was written.
    pub log_path: Option<String>,
}

impl VerificationSummary {
    /// Whether the target matched the source.
    pub fn in_sync(&self) -> bool {
        self.directories_missing == 0
            && self.files_missing == 0
            && self.files_different == 0
            && self.bytes_missing == 0
            && self.bytes_different == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nesting_follows_the_design() {
        assert_eq!(StateName::Mirroring.parent(), Some(StateName::Running));
        assert_eq!(StateName::Running.parent(), Some(StateName::Initialized));
        assert!(StateName::Protecting.is_within(StateName::Initialized));
        assert!(!StateName::Deleted.is_within(StateName::Initialized));
        assert_eq!(StateName::leaves().count(), 19);
    }

    #[test]
    fn names_round_trip_in_the_seeds_wording() {
        for s in StateName::ALL {
            assert_eq!(StateName::parse(&s.log_name()), Some(s));
            assert_eq!(StateName::parse(&s.as_str().to_lowercase()), Some(s));
        }
        assert_eq!(MirrorStatus::RemovingOrphans.as_str(), "Removing Orphans");
        assert_eq!(TargetDataState::MirrorRequired.to_string(), "Mirror Required");
    }

    #[test]
    fn mirror_percent_is_bytes_done_over_total() {
        let c = MirrorCounters {
            total_bytes: Some(200),
            bytes_mirrored: 50,
            bytes_skipped: 50,
            ..MirrorCounters::default()
        };
        assert_eq!(c.percent(), Some(50.0));
        assert_eq!(c.remaining_bytes(), Some(100));
        assert_eq!(MirrorCounters::default().percent(), None);
    }
}
