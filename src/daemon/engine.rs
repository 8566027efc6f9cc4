//! The engine thread: the one writer of the event log.
//!
//! Commands from the API, the adapters and the daemon itself arrive on a channel. The thread
//! takes whatever is waiting (up to a batch), runs it through the engine — decide, one durable
//! append for the whole batch (group commit), apply — and only then hands the effects to the
//! adapters, publishes the events to subscribers and answers the callers.

use std::collections::BTreeMap;
use std::sync::mpsc as std_mpsc;
use std::sync::{Arc, RwLock};
use std::thread::JoinHandle;

use chrono::Utc;
use serde::Serialize;
use tokio::sync::{broadcast, mpsc, oneshot};
use understudy_core::command::{Command, CommandEnvelope, CommandKind};
use understudy_core::effect::{Completion, EffectEnvelope};
use understudy_core::event::{Actor, EventEnvelope, EventMetadata};
use understudy_core::ids::{JobId, Seq};
use understudy_core::spec::JobSpec;
use understudy_core::status::{JobStatus, StateName};
use understudy_core::{Accepted, Engine, EngineError, JobMachine};
use understudy_states::Job;
use understudy_store::SledEventStore;

/// The most commands decided and appended together.
const BATCH: usize = 1024;
/// Checkpoint every this many events of a job.
pub const CHECKPOINT_EVERY: u64 = 1_000;

/// What the API shows of a job, kept current by the engine thread.
#[derive(Clone, Debug, Serialize)]
pub struct JobView {
    /// The id.
    pub id: JobId,
    /// The name.
    pub name: String,
    /// The spec.
    pub spec: Option<JobSpec>,
    /// The state.
    pub state: StateName,
    /// The status projections.
    pub status: JobStatus,
    /// Commands allowed now.
    pub allowed: Vec<CommandKind>,
    /// The last event's sequence number.
    pub seq: Seq,
    /// Why the job is quarantined, if it is.
    pub quarantine: Option<String>,
}

impl JobView {
    fn of(engine: &Engine<Job>, id: JobId) -> Option<JobView> {
        let job = engine.job(id)?;
        Some(JobView {
            id,
            name: job.spec().map(|s| s.name.clone()).unwrap_or_default(),
            spec: job.spec().cloned(),
            state: job.state(),
            status: job.status(),
            allowed: job.allowed(),
            seq: engine.head(id).unwrap_or(Seq::ZERO),
            quarantine: engine.quarantine(id).map(str::to_string),
        })
    }
}

/// The outcome of one command, for its caller.
pub type Outcome = Result<Accepted, EngineError>;

enum Request {
    Commands(Vec<CommandEnvelope>, Option<oneshot::Sender<Vec<Outcome>>>),
    Stop,
}

/// A handle on the engine thread.
#[derive(Clone)]
pub struct EngineHandle {
    requests: std_mpsc::Sender<Request>,
    views: Arc<RwLock<BTreeMap<JobId, JobView>>>,
    events: broadcast::Sender<EventEnvelope>,
    /// The event log (read side: audits, event streams).
    pub store: Arc<SledEventStore>,
}

impl EngineHandle {
    /// Runs commands; returns each one's outcome once its events are durable and applied.
    ///
    /// # Errors
    ///
    /// The engine has stopped.
    pub async fn execute(&self, commands: Vec<CommandEnvelope>) -> anyhow::Result<Vec<Outcome>> {
        let (tx, rx) = oneshot::channel();
        self.requests
            .send(Request::Commands(commands, Some(tx)))
            .map_err(|_| anyhow::anyhow!("the engine has stopped"))?;
        rx.await.map_err(|_| anyhow::anyhow!("the engine stopped before answering"))
    }

    /// Hands the engine an adapter's report (no answer is awaited).
    pub fn complete(&self, completion: Completion) {
        let metadata = EventMetadata {
            actor: Actor::Adapter { effect: completion.effect },
            correlation_id: None,
            idempotency_key: None,
        };
        let command = CommandEnvelope {
            job: completion.effect.job,
            command: Command::Complete(completion),
            metadata,
        };
        let _ = self.requests.send(Request::Commands(vec![command], None));
    }

    /// Every job's view.
    pub fn jobs(&self) -> Vec<JobView> {
        self.views
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .values()
            .cloned()
            .collect()
    }

    /// One job's view.
    pub fn job(&self, id: JobId) -> Option<JobView> {
        self.views.read().unwrap_or_else(std::sync::PoisonError::into_inner).get(&id).cloned()
    }

    /// Subscribes to events as they are committed.
    pub fn subscribe(&self) -> broadcast::Receiver<EventEnvelope> {
        self.events.subscribe()
    }

    /// Stops the engine thread after the commands already sent.
    pub fn stop(&self) {
        let _ = self.requests.send(Request::Stop);
    }
}

/// Starts the engine thread on a recovered engine. Effects go to `effects`.
pub fn start(
    mut engine: Engine<Job>,
    store: Arc<SledEventStore>,
    effects: mpsc::UnboundedSender<EffectEnvelope>,
    fatal: mpsc::UnboundedSender<String>,
) -> (EngineHandle, JoinHandle<()>) {
    let (requests, inbox) = std_mpsc::channel::<Request>();
    let views = Arc::new(RwLock::new(BTreeMap::new()));
    {
        let mut all = views.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        let ids: Vec<JobId> = engine.jobs().map(|(id, _)| id).collect();
        for id in ids {
            if let Some(view) = JobView::of(&engine, id) {
                all.insert(id, view);
            }
        }
    }
    let (events, _) = broadcast::channel(4096);
    let handle = EngineHandle {
        requests,
        views: Arc::clone(&views),
        events: events.clone(),
        store: Arc::clone(&store),
    };
    let thread = std::thread::Builder::new()
        .name("engine".into())
        .spawn(move || {
            while let Ok(first) = inbox.recv() {
                let mut batch = vec![first];
                while batch.len() < BATCH {
                    match inbox.try_recv() {
                        Ok(request) => batch.push(request),
                        Err(_) => break,
                    }
                }
                let stop = batch.iter().any(|r| matches!(r, Request::Stop));
                let mut commands = Vec::new();
                let mut replies = Vec::new();
                for request in batch {
                    if let Request::Commands(cmds, reply) = request {
                        replies.push((cmds.len(), reply));
                        commands.extend(cmds);
                    }
                }
                if !commands.is_empty() {
                    match engine.execute(&*store, Utc::now(), &commands) {
                        Ok(outcomes) => {
                            publish(&engine, &views, &events, &effects, &outcomes);
                            let mut outcomes = outcomes.into_iter();
                            for (count, reply) in replies {
                                let mine: Vec<Outcome> = outcomes.by_ref().take(count).collect();
                                if let Some(reply) = reply {
                                    let _ = reply.send(mine);
                                }
                            }
                        }
                        Err(error) => {
                            // The log can no longer promise durability: stop the daemon rather
                            // than act on events that may not be there after a crash.
                            let _ = fatal.send(format!("the event log failed: {error}"));
                            break;
                        }
                    }
                }
                if stop {
                    break;
                }
            }
            if let Err(error) = store.flush() {
                tracing::error!(%error, "flushing the event log at shutdown failed");
            }
        })
        .expect("the engine thread starts");
    (handle, thread)
}

fn publish(
    engine: &Engine<Job>,
    views: &RwLock<BTreeMap<JobId, JobView>>,
    events: &broadcast::Sender<EventEnvelope>,
    effects: &mpsc::UnboundedSender<EffectEnvelope>,
    outcomes: &[Outcome],
) {
    let changed: Vec<&Accepted> =
        outcomes.iter().flatten().filter(|outcome| !outcome.events.is_empty()).collect();
    if changed.is_empty() {
        return;
    }
    // Views first: whoever acts on an event or an effect must find the job as it now is.
    {
        let mut views = views.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        for outcome in &changed {
            if let Some(view) = JobView::of(engine, outcome.job) {
                views.insert(outcome.job, view);
            }
        }
    }
    for outcome in changed {
        for (seq, line) in &outcome.transitions {
            tracing::info!(job = %outcome.job, seq = seq.0, "{line}");
        }
        for envelope in &outcome.events {
            let _ = events.send(envelope.clone());
        }
        for effect in &outcome.effects {
            let _ = effects.send(effect.clone());
        }
    }
}
