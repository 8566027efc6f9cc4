//! The HTTP/JSON API: jobs, commands, the event stream, the audit. Every request carries the
//! data directory's bearer token; every error is JSON naming what was wrong.
//!
//! ```text
//! GET    /v1/jobs                       every job
//! POST   /v1/jobs                       create: {"spec": JobSpec, "idempotency_key"?}
//! GET    /v1/jobs/{job}                 one job (id or unique name)
//! POST   /v1/jobs/{job}/commands        {"command": "start" | "verify", "remirror": true | …}
//! DELETE /v1/jobs/{job}                 delete
//! GET    /v1/jobs/{job}/log             the job log (transition lines)
//! GET    /v1/jobs/{job}/replay?at=SEQ   the audit of one job (as `understudy replay JOB --json`)
//! GET    /v1/replay                     the audit's job list
//! GET    /v1/events?job=&after=&follow= events as NDJSON, one envelope per line
//! GET    /v1/health                     engine and target counters
//! ```

use std::sync::Arc;

use axum::body::Body;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::watch;
use understudy_adapters::target::TargetService;
use understudy_core::EngineError;
use understudy_core::command::{Command, CommandEnvelope, Rejection};
use understudy_core::event::{Actor, EventMetadata};
use understudy_core::ids::{JobId, Position, Seq};
use understudy_core::spec::{BandwidthLimit, JobRole, JobSpec, MirrorComparison, QueuePolicy};
use understudy_core::store::EventStore;
use uuid::Uuid;

use super::engine::{EngineHandle, JobView};
use crate::replay;

#[derive(Clone)]
struct Api {
    engine: EngineHandle,
    token: Arc<String>,
    target: Arc<TargetService>,
}

/// Serves the API until `shutdown` turns true.
pub async fn serve(
    listener: TcpListener,
    engine: EngineHandle,
    token: String,
    target: Arc<TargetService>,
    mut shutdown: watch::Receiver<bool>,
) {
    let api = Api { engine, token: Arc::new(token), target };
    let app = Router::new()
        .route("/v1/jobs", get(list_jobs).post(create_job))
        .route("/v1/jobs/{job}", get(show_job).delete(delete_job))
        .route("/v1/jobs/{job}/commands", post(command))
        .route("/v1/jobs/{job}/log", get(job_log))
        .route("/v1/jobs/{job}/replay", get(job_replay))
        .route("/v1/replay", get(replay_list))
        .route("/v1/events", get(events))
        .route("/v1/health", get(health))
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(api.clone(), authenticate))
        .with_state(api);
    let stop = async move {
        let _ = shutdown.changed().await;
    };
    if let Err(error) = axum::serve(listener, app).with_graceful_shutdown(stop).await {
        tracing::error!(%error, "the API server failed");
    }
}

/// An API error: a status and a JSON body saying what was wrong.
pub struct ApiError {
    status: StatusCode,
    body: serde_json::Value,
}

impl ApiError {
    fn new(status: StatusCode, kind: &str, message: impl Into<String>) -> Self {
        ApiError { status, body: json!({ "error": message.into(), "kind": kind }) }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(self.body)).into_response()
    }
}

impl From<EngineError> for ApiError {
    fn from(error: EngineError) -> Self {
        match &error {
            EngineError::UnknownJob(_) => {
                ApiError::new(StatusCode::NOT_FOUND, "unknown-job", error.to_string())
            }
            EngineError::JobExists(_) => {
                ApiError::new(StatusCode::CONFLICT, "job-exists", error.to_string())
            }
            EngineError::Rejected(Rejection::InvalidSpec(spec)) => ApiError {
                status: StatusCode::UNPROCESSABLE_ENTITY,
                body: json!({ "error": error.to_string(), "kind": "invalid-spec", "field": spec.field }),
            },
            EngineError::Rejected(Rejection::NotAllowed { state, allowed, .. }) => ApiError {
                status: StatusCode::CONFLICT,
                body: json!({ "error": error.to_string(), "kind": "not-allowed", "state": state, "allowed": allowed }),
            },
            EngineError::Rejected(Rejection::Refused { state, .. }) => ApiError {
                status: StatusCode::CONFLICT,
                body: json!({ "error": error.to_string(), "kind": "refused", "state": state }),
            },
            EngineError::Quarantined { .. } => {
                ApiError::new(StatusCode::CONFLICT, "quarantined", error.to_string())
            }
            _ => ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "engine", error.to_string()),
        }
    }
}

impl From<anyhow::Error> for ApiError {
    fn from(error: anyhow::Error) -> Self {
        // A user's mistake found deeper down (e.g. `--at` past the end) is the caller's to fix.
        if let Some(user) = error.downcast_ref::<crate::UserError>() {
            return ApiError::new(StatusCode::BAD_REQUEST, "invalid-argument", user.0.clone());
        }
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", format!("{error:#}"))
    }
}

async fn authenticate(
    State(api): State<Api>,
    headers: HeaderMap,
    request: Request,
    next: Next,
) -> Response {
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    match given {
        Some(token) if constant_time_eq(token.as_bytes(), api.token.as_bytes()) => next.run(request).await,
        Some(_) => ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", "wrong API token: use the token in the daemon's data directory (DATA_DIR/token) or set UNDERSTUDY_TOKEN").into_response(),
        None => ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", "missing API token: send `Authorization: Bearer <token>` (the token is in DATA_DIR/token)").into_response(),
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn not_found() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not-found",
        "no such endpoint: see /v1/jobs, /v1/events, /v1/replay, /v1/health",
    )
}

/// Finds a job by id or unique name.
fn resolve(api: &Api, wanted: &str) -> Result<JobView, ApiError> {
    let jobs = api.engine.jobs();
    if let Ok(id) = wanted.parse::<JobId>()
        && let Some(view) = jobs.iter().find(|j| j.id == id)
    {
        return Ok(view.clone());
    }
    let named: Vec<&JobView> = jobs
        .iter()
        .filter(|j| j.name == wanted && j.state != understudy_core::StateName::Deleted)
        .collect();
    match named.as_slice() {
        [one] => Ok((*one).clone()),
        [] => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "unknown-job",
            format!("no job {wanted:?}: list jobs with `understudy job list`"),
        )),
        _ => Err(ApiError::new(
            StatusCode::CONFLICT,
            "ambiguous-job",
            format!("{} jobs are named {wanted:?}: give the job id", named.len()),
        )),
    }
}

fn body<T>(payload: Result<Json<T>, JsonRejection>) -> Result<T, ApiError> {
    payload.map(|Json(t)| t).map_err(|rejection| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "malformed-body",
            format!("the request body is not valid: {}", rejection.body_text()),
        )
    })
}

#[derive(Debug, Deserialize)]
struct Meta {
    #[serde(default)]
    idempotency_key: Option<String>,
    #[serde(default)]
    correlation_id: Option<Uuid>,
    #[serde(default)]
    operator: Option<String>,
}

impl Meta {
    fn metadata(&self) -> EventMetadata {
        EventMetadata {
            actor: match &self.operator {
                Some(name) => Actor::Operator { name: name.clone() },
                None => Actor::Api { client: "api".into() },
            },
            correlation_id: self.correlation_id,
            idempotency_key: self.idempotency_key.clone(),
        }
    }
}

#[derive(Debug, Deserialize)]
struct CreateJob {
    spec: JobSpec,
    #[serde(flatten)]
    meta: Meta,
}

/// A command as the API takes it.
#[derive(Debug, Deserialize, Serialize)]
#[serde(tag = "command", rename_all = "kebab-case")]
pub enum ApiCommand {
    /// Start or resume.
    Start,
    /// Pause.
    Pause,
    /// Stop.
    Stop,
    /// Delete.
    Delete,
    /// Start a mirror.
    StartMirror {
        /// Comparison.
        #[serde(default)]
        comparison: Option<MirrorComparison>,
        /// Calculate size first.
        #[serde(default)]
        calculate_size: Option<bool>,
    },
    /// Pause the mirror.
    PauseMirror,
    /// Resume the mirror.
    ResumeMirror,
    /// Stop the mirror.
    StopMirror,
    /// Verify.
    Verify {
        /// Remirror differences.
        #[serde(default)]
        remirror: bool,
    },
    /// Delete orphans now.
    DeleteOrphans,
    /// Cut over.
    Cutover {
        /// Target queue handling.
        #[serde(default)]
        target_queue: Option<QueuePolicy>,
    },
    /// Fail over.
    Failover {
        /// Test failover.
        #[serde(default)]
        test: bool,
        /// Target queue handling.
        #[serde(default)]
        target_queue: Option<QueuePolicy>,
    },
    /// Undo a failover.
    UndoFailover,
    /// Reverse protection.
    Reverse,
    /// Change the bandwidth limit.
    SetBandwidth {
        /// The limit.
        limit: BandwidthLimit,
    },
}

impl From<ApiCommand> for Command {
    fn from(command: ApiCommand) -> Command {
        match command {
            ApiCommand::Start => Command::Start,
            ApiCommand::Pause => Command::Pause,
            ApiCommand::Stop => Command::Stop,
            ApiCommand::Delete => Command::Delete,
            ApiCommand::StartMirror { comparison, calculate_size } => {
                Command::StartMirror { comparison, calculate_size }
            }
            ApiCommand::PauseMirror => Command::PauseMirror,
            ApiCommand::ResumeMirror => Command::ResumeMirror,
            ApiCommand::StopMirror => Command::StopMirror,
            ApiCommand::Verify { remirror } => Command::Verify { remirror },
            ApiCommand::DeleteOrphans => Command::DeleteOrphans,
            ApiCommand::Cutover { target_queue } => Command::Cutover { target_queue },
            ApiCommand::Failover { test, target_queue } => Command::Failover { test, target_queue },
            ApiCommand::UndoFailover => Command::UndoFailover,
            ApiCommand::Reverse => Command::Reverse,
            ApiCommand::SetBandwidth { limit } => Command::SetBandwidth { limit },
        }
    }
}

#[derive(Debug, Deserialize)]
struct CommandBody {
    #[serde(flatten)]
    command: ApiCommand,
    #[serde(flatten)]
    meta: Meta,
}

async fn run_one(api: &Api, command: CommandEnvelope) -> Result<Response, ApiError> {
    let job = command.job;
    let correlation = command.metadata.correlation_id;
    let mut outcomes = api.engine.execute(vec![command]).await?;
    let outcome = outcomes.pop().ok_or_else(|| anyhow::anyhow!("the engine gave no answer"))?;
    let accepted = outcome?;
    let view = api.engine.job(job);
    Ok(Json(json!({
        "job": job,
        "accepted": true,
        "events": accepted.events,
        "duplicate_of": accepted.duplicate_of.map(|(a, b)| [a, b]),
        "correlation_id": correlation,
        "state": view.map(|v| v.state),
    }))
    .into_response())
}

async fn list_jobs(State(api): State<Api>) -> Json<Vec<JobView>> {
    Json(
        api.engine
            .jobs()
            .into_iter()
            .filter(|j| j.state != understudy_core::StateName::Deleted)
            .collect(),
    )
}

async fn create_job(
    State(api): State<Api>,
    payload: Result<Json<CreateJob>, JsonRejection>,
) -> Result<Response, ApiError> {
    let create = body(payload)?;
    if api
        .engine
        .jobs()
        .iter()
        .any(|j| j.name == create.spec.name && j.state != understudy_core::StateName::Deleted)
    {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "name-taken",
            format!("a job named {:?} already exists: choose a unique name", create.spec.name),
        ));
    }
    let id = JobId::from_uuid(Uuid::now_v7());
    let metadata = create.meta.metadata();
    let command = CommandEnvelope {
        job: id,
        command: Command::Create { spec: Box::new(create.spec) },
        metadata,
    };
    let response = run_one(&api, command).await?;
    Ok((StatusCode::CREATED, response).into_response())
}

async fn show_job(
    State(api): State<Api>,
    Path(job): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let view = resolve(&api, &job)?;
    Ok(Json(show(&view)))
}

/// The `job show --json` document: the status fields at the top level, then the rest.
pub fn show(view: &JobView) -> serde_json::Value {
    let status = &view.status;
    json!({
        "id": view.id,
        "name": view.name,
        "state": view.state,
        "activity": status.activity,
        "health": status.health,
        "mirror_status": status.mirror_status,
        "replication_status": status.replication_status,
        "transmit_mode": status.transmit_mode,
        "target_data_state": status.target_data_state,
        "mirror_percent": status.mirror_percent,
        "mirror_remaining_bytes": status.mirror_remaining_bytes,
        "mirror_skipped_bytes": status.mirror_skipped_bytes,
        "replication_queue_bytes": status.replication_queue_bytes,
        "disk_queue_bytes": status.disk_queue_bytes,
        "bytes_sent": status.bytes_sent,
        "bytes_sent_compressed": status.bytes_sent_compressed,
        "recovery_point_latency_ms": status.recovery_point_latency_ms,
        "replication_data_bytes": status.replication_data_bytes,
        "replication_operations": status.replication_operations,
        "directories_mirrored": status.mirror_counters.directories_mirrored,
        "files_mirrored": status.mirror_counters.files_mirrored,
        "bytes_mirrored": status.mirror_counters.bytes_mirrored,
        "files_skipped": status.mirror_counters.files_skipped,
        "connected_since": status.connected_since,
        "connection_id": status.connection_id,
        "encryption": status.encrypted,
        "mirror_started_at": status.mirror_started_at,
        "mirror_ended_at": status.mirror_ended_at,
        "last_mirror_duration_ms": status.last_mirror_duration_ms,
        "last_verification": status.last_verification,
        "fault": status.fault,
        "compression": view.spec.as_ref().map(|s| s.compression),
        "bandwidth_limit": view.spec.as_ref().map(|s| s.bandwidth.to_string()),
        "role": view.spec.as_ref().map(|s| match &s.role {
            JobRole::Source => "source".to_string(),
            JobRole::Replica { source_address } => format!("replica (source engine {source_address})"),
        }),
        "source": view.spec.as_ref().map(|s| s.source.clone()),
        "target": view.spec.as_ref().map(|s| s.target.to_string()),
        "allowed": view.allowed,
        "seq": view.seq,
        "quarantine": view.quarantine,
    })
}

async fn command(
    State(api): State<Api>,
    Path(job): Path<String>,
    payload: Result<Json<CommandBody>, JsonRejection>,
) -> Result<Response, ApiError> {
    let body = body(payload)?;
    let view = resolve(&api, &job)?;
    let metadata = body.meta.metadata();
    run_one(&api, CommandEnvelope { job: view.id, command: body.command.into(), metadata }).await
}

async fn delete_job(State(api): State<Api>, Path(job): Path<String>) -> Result<Response, ApiError> {
    let view = resolve(&api, &job)?;
    run_one(
        &api,
        CommandEnvelope {
            job: view.id,
            command: Command::Delete,
            metadata: EventMetadata {
                actor: Actor::Api { client: "api".into() },
                correlation_id: None,
                idempotency_key: None,
            },
        },
    )
    .await
}

#[derive(Debug, Deserialize)]
struct AtQuery {
    at: Option<u64>,
}

async fn job_replay(
    State(api): State<Api>,
    Path(job): Path<String>,
    Query(query): Query<AtQuery>,
) -> Result<Json<replay::Audit>, ApiError> {
    let view = resolve(&api, &job)?;
    let store = Arc::clone(&api.engine.store);
    let audit =
        tokio::task::spawn_blocking(move || replay::audit_job(&*store, view.id, query.at.map(Seq)))
            .await
            .map_err(|e| anyhow::anyhow!("the audit failed: {e}"))??;
    Ok(Json(audit))
}

async fn job_log(State(api): State<Api>, Path(job): Path<String>) -> Result<Response, ApiError> {
    let view = resolve(&api, &job)?;
    let store = Arc::clone(&api.engine.store);
    let audit = tokio::task::spawn_blocking(move || replay::audit_job(&*store, view.id, None))
        .await
        .map_err(|e| anyhow::anyhow!("the job log failed: {e}"))??;
    Ok(([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], replay::render_log(&audit))
        .into_response())
}

async fn replay_list(State(api): State<Api>) -> Result<Json<Vec<replay::JobSummary>>, ApiError> {
    let store = Arc::clone(&api.engine.store);
    let jobs = tokio::task::spawn_blocking(move || replay::list_jobs(&*store))
        .await
        .map_err(|e| anyhow::anyhow!("the audit failed: {e}"))??;
    Ok(Json(jobs))
}

#[derive(Debug, Deserialize)]
struct EventsQuery {
    job: Option<String>,
    #[serde(default)]
    after: u64,
    #[serde(default)]
    follow: bool,
}

async fn events(
    State(api): State<Api>,
    Query(query): Query<EventsQuery>,
) -> Result<Response, ApiError> {
    let job = match &query.job {
        Some(job) => Some(resolve(&api, job)?.id),
        None => None,
    };
    // Subscribe first, then catch up from the log: nothing committed in between is missed,
    // and positions already sent are skipped.
    let live = api.engine.subscribe();
    let store = Arc::clone(&api.engine.store);
    let after = Position(query.after);
    let backlog = tokio::task::spawn_blocking(move || {
        let mut all = Vec::new();
        let mut cursor = after;
        loop {
            let page = store.read_all(cursor, 4096)?;
            let Some(last) = page.last() else { break };
            cursor = last.position;
            all.extend(page);
        }
        Ok::<_, understudy_core::StoreError>(all)
    })
    .await
    .map_err(|e| anyhow::anyhow!("reading events failed: {e}"))?
    .map_err(anyhow::Error::from)?;
    let last_sent = backlog.last().map_or(after, |e| e.position);
    let wanted = move |e: &understudy_core::EventEnvelope| job.is_none_or(|j| e.job_id == j);
    let lines: Vec<Result<String, std::io::Error>> = backlog
        .into_iter()
        .filter(|e| wanted(e))
        .map(|e| Ok(format!("{}\n", serde_json::to_string(&e).unwrap_or_default())))
        .collect();
    let head = futures::stream::iter(lines);
    if !query.follow {
        return Ok(([(header::CONTENT_TYPE, "application/x-ndjson")], Body::from_stream(head))
            .into_response());
    }
    let tail = tokio_stream_from(live).filter_map(move |e| async move {
        (e.position > last_sent && wanted(&e))
            .then(|| Ok(format!("{}\n", serde_json::to_string(&e).unwrap_or_default())))
    });
    Ok(([(header::CONTENT_TYPE, "application/x-ndjson")], Body::from_stream(head.chain(tail)))
        .into_response())
}

fn tokio_stream_from(
    mut rx: tokio::sync::broadcast::Receiver<understudy_core::EventEnvelope>,
) -> impl futures::Stream<Item = understudy_core::EventEnvelope> {
    async_stream(move |yield_tx| async move {
        loop {
            match rx.recv().await {
                Ok(envelope) => {
                    if yield_tx.send(envelope).await.is_err() {
                        break;
                    }
                }
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
            }
        }
    })
}

/// A stream fed by a task through a small channel.
fn async_stream<T, F, Fut>(body: F) -> impl futures::Stream<Item = T>
where
    T: Send + 'static,
    F: FnOnce(tokio::sync::mpsc::Sender<T>) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let (tx, mut rx) = tokio::sync::mpsc::channel(256);
    tokio::spawn(body(tx));
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

async fn health(State(api): State<Api>) -> Json<serde_json::Value> {
    let jobs = api.engine.jobs();
    Json(json!({
        "jobs": jobs.len(),
        "target": api.target.counters(),
    }))
}
