//! The daemon's HTTP/JSON API: authentication, errors as JSON with the right status codes
//! (401, 400, 404, 409, 422), idempotency keys, and the NDJSON event stream, also through
//! `understudy events`.
//!
//! Method: a real `understudy serve` on loopback; raw HTTP requests with reqwest (with no
//! token, a wrong token, malformed bodies), and the real binary for `understudy events`.

#![allow(clippy::unwrap_used)] // a test fails by panicking, with the value in the message

mod support;

use std::io::BufRead as _;
use std::time::Duration;

use serde_json::{Value, json};
use support::{Daemon, Http, LONG, http};

/// A request body: its content type and bytes.
type Body = Option<(&'static str, Vec<u8>)>;

fn json_body(value: &Value) -> Body {
    Some(("application/json", serde_json::to_vec(value).unwrap()))
}

fn raw_body(text: &str) -> Body {
    Some(("application/json", text.as_bytes().to_vec()))
}

/// Asserts a JSON error answer with `status`; returns its body.
#[track_caller]
fn json_error(answer: &Http, status: u16) -> Value {
    assert_eq!(answer.status, status, "wanted {status}, got {}: {}", answer.status, answer.body);
    assert!(answer.content_type.starts_with("application/json"), "an error is JSON: {answer:?}");
    let body = answer.json();
    let error = body["error"].as_str().unwrap_or_else(|| panic!("an `error` string: {body}"));
    assert!(!error.trim().is_empty(), "{body}");
    body
}

fn setup(label: &str) -> (tempfile::TempDir, Daemon, String) {
    let dir = support::tempdir(label);
    let source = dir.path().join("source");
    support::write(&source.join("a.txt"), b"hello");
    support::write(&source.join("sub/b.txt"), b"world");
    let daemon = Daemon::start(&dir.path().join("data"));
    let id = daemon.create(&[
        "--name",
        "e2e",
        "--source",
        source.to_str().unwrap(),
        "--target",
        dir.path().join("target").to_str().unwrap(),
    ]);
    (dir, daemon, id)
}

#[test]
fn requests_without_the_right_token_get_401_json() {
    let (_dir, daemon, _) = setup("api-auth");
    let requests: [(&str, &str, Body); 6] = [
        ("GET", "/v1/jobs", None),
        ("GET", "/v1/jobs/e2e", None),
        ("POST", "/v1/jobs", json_body(&json!({"spec": {}}))),
        ("POST", "/v1/jobs/e2e/commands", json_body(&json!({"command": "start"}))),
        ("GET", "/v1/events?follow=false", None),
        ("GET", "/v1/health", None),
    ];
    let before = daemon.event_count();
    for (method, path, body) in requests {
        let url = daemon.url(path);
        let none = http(method, &url, None, body.clone()).unwrap();
        let body_json = json_error(&none, 401);
        assert!(body_json["error"].as_str().unwrap().contains("token"), "{body_json}");
        let wrong = http(method, &url, Some("not-the-token"), body.clone()).unwrap();
        json_error(&wrong, 401);
        // The right token with one character changed, and a prefix of it.
        let token = daemon.token();
        let mut altered = token.clone().into_bytes();
        altered[0] = if altered[0] == b'a' { b'b' } else { b'a' };
        json_error(
            &http(method, &url, Some(std::str::from_utf8(&altered).unwrap()), body.clone())
                .unwrap(),
            401,
        );
        json_error(
            &http(method, &url, Some(&token[..token.len() - 1]), body.clone()).unwrap(),
            401,
        );
    }
    assert_eq!(daemon.event_count(), before, "refused requests append nothing");
    assert_eq!(daemon.show("e2e")["state"], "Stopped", "the unauthenticated start did nothing");
    // The token file is private.
    use std::os::unix::fs::PermissionsExt as _;
    let mode =
        std::fs::metadata(daemon.data_dir.join("token")).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "DATA_DIR/token is mode 0600");
}

#[test]
fn malformed_bodies_unknown_jobs_and_refused_commands_get_json_errors() {
    let (dir, daemon, id) = setup("api-errors");
    let token = daemon.token();
    let post =
        |path: &str, body: Body| http("POST", &daemon.url(path), Some(&token), body).unwrap();
    let get = |path: &str| http("GET", &daemon.url(path), Some(&token), None).unwrap();
    let before = daemon.event_count();

    // Malformed JSON on POST /v1/jobs: 400 naming the problem.
    let answer = post("/v1/jobs", raw_body("{\"spec\": {\"name\": \"x\","));
    let body = json_error(&answer, 400);
    assert!(body["error"].as_str().unwrap().contains("not valid"), "{body}");
    let answer = post("/v1/jobs", raw_body("{\"name\": \"x\"}"));
    let body = json_error(&answer, 400);
    assert!(body["error"].as_str().unwrap().contains("spec"), "the missing field is named: {body}");
    let answer = post("/v1/jobs", raw_body("[1, 2, 3]"));
    json_error(&answer, 400);
    let answer = post("/v1/jobs", Some(("text/plain", b"{}".to_vec())));
    assert!(answer.status == 400 || answer.status == 415, "{answer:?}");
    json_error(&answer, answer.status);
    // A spec the engine refuses: 422 naming the field.
    let source = dir.path().join("source");
    let spec = json!({"spec": {
        "name": "same",
        "source": source.to_str().unwrap(),
        "target": {"endpoint": "local", "path": source.to_str().unwrap()},
    }});
    let answer = post("/v1/jobs", json_body(&spec));
    let body = json_error(&answer, 422);
    assert_eq!(body["field"], "target", "{body}");
    // A name already taken: 409.
    let mut taken = spec.clone();
    taken["spec"]["name"] = json!("e2e");
    taken["spec"]["target"]["path"] = json!(dir.path().join("t2").to_str().unwrap());
    json_error(&post("/v1/jobs", json_body(&taken)), 409);

    // Commands: malformed, unknown.
    let body = json_error(&post("/v1/jobs/e2e/commands", raw_body("{\"command\": ")), 400);
    assert!(body["error"].as_str().unwrap().contains("not valid"), "{body}");
    let body =
        json_error(&post("/v1/jobs/e2e/commands", json_body(&json!({"command": "dance"}))), 400);
    assert!(
        body["error"].as_str().unwrap().contains("dance"),
        "the unknown command is named: {body}"
    );

    // Unknown jobs: 404 everywhere.
    for path in [
        "/v1/jobs/nosuch",
        "/v1/jobs/nosuch/log",
        "/v1/jobs/nosuch/replay",
        "/v1/events?job=nosuch",
    ] {
        let body = json_error(&get(path), 404);
        assert!(body["error"].as_str().unwrap().contains("nosuch"), "{path}: {body}");
    }
    json_error(&post("/v1/jobs/nosuch/commands", json_body(&json!({"command": "start"}))), 404);
    json_error(&http("DELETE", &daemon.url("/v1/jobs/nosuch"), Some(&token), None).unwrap(), 404);
    json_error(&get("/v1/jobs/01a2089c-0000-7000-8000-000000000000"), 404);
    json_error(&get("/v1/no-such-endpoint"), 404);

    // A command the state does not allow: 409 with the state and the allowed commands.
    let answer = post(&format!("/v1/jobs/{id}/commands"), json_body(&json!({"command": "pause"})));
    let body = json_error(&answer, 409);
    assert_eq!(body["state"], "Stopped", "{body}");
    let allowed = body["allowed"].as_array().unwrap_or_else(|| panic!("an `allowed` list: {body}"));
    assert!(allowed.iter().any(|a| a == "Start"), "{body}");
    assert_eq!(
        Value::Array(allowed.clone()),
        daemon.show("e2e")["allowed"],
        "the same list `job show` gives"
    );

    assert_eq!(daemon.event_count(), before, "no error appended anything");
}

#[test]
fn idempotency_keys_make_a_retried_command_a_no_op() {
    let (_dir, daemon, _) = setup("api-idem");
    let token = daemon.token();
    let url = daemon.url("/v1/jobs/e2e/commands");
    let body = json!({"command": "start", "idempotency_key": "start-once-42"});
    let first = http("POST", &url, Some(&token), json_body(&body)).unwrap();
    assert_eq!(first.status, 200, "{}", first.body);
    let first = first.json();
    assert!(first["duplicate_of"].is_null(), "{first}");
    assert!(!first["events"].as_array().unwrap().is_empty(), "{first}");
    daemon.wait_state("e2e", "Protecting", LONG);
    let count = daemon.event_names("e2e").iter().filter(|n| *n == "StartRequested").count();
    let again = http("POST", &url, Some(&token), json_body(&body)).unwrap();
    assert_eq!(again.status, 200, "a retried command with the same key succeeds: {}", again.body);
    let again = again.json();
    assert!(again["duplicate_of"].is_array(), "the answer names the original events: {again}");
    let after = daemon.event_names("e2e").iter().filter(|n| *n == "StartRequested").count();
    assert_eq!(count, after, "the retry appended nothing");
}

fn ndjson(text: &str) -> Vec<Value> {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            serde_json::from_str(l)
                .unwrap_or_else(|e| panic!("not one JSON value per line ({e}): {l}"))
        })
        .collect()
}

#[test]
fn events_are_ndjson_through_the_api_and_the_cli() {
    let (dir, daemon, id) = setup("api-events");
    // A second job, so the filter has something to filter.
    let other_source = dir.path().join("other-source");
    support::write(&other_source.join("x"), b"x");
    daemon.create(&[
        "--name",
        "other",
        "--source",
        other_source.to_str().unwrap(),
        "--target",
        dir.path().join("other-target").to_str().unwrap(),
    ]);
    daemon.job(&["start", "e2e"]).ok();
    daemon.wait_state("e2e", "Protecting", LONG);

    let all = daemon.get("/v1/events?follow=false");
    assert_eq!(all.status, 200);
    assert!(all.content_type.starts_with("application/x-ndjson"), "{}", all.content_type);
    let envelopes = ndjson(&all.body);
    assert!(envelopes.len() >= 8, "{}", all.body);
    let mut last = 0;
    for e in &envelopes {
        for field in ["job_id", "seq", "position", "recorded_at", "event", "metadata", "prev_hash"]
        {
            assert!(e.get(field).is_some(), "an envelope has {field}: {e}");
        }
        let position = e["position"].as_u64().unwrap();
        assert!(position > last, "positions increase: {position} after {last}");
        last = position;
    }
    let jobs: std::collections::BTreeSet<&str> =
        envelopes.iter().map(|e| e["job_id"].as_str().unwrap()).collect();
    assert_eq!(jobs.len(), 2, "both jobs' events");

    let mine = ndjson(&daemon.get("/v1/events?follow=false&job=e2e").body);
    assert!(mine.iter().all(|e| e["job_id"] == id.as_str()));
    let seqs: Vec<u64> = mine.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert_eq!(
        seqs,
        (1..=seqs.len() as u64).collect::<Vec<_>>(),
        "one job's events are seqs 1, 2, 3, …"
    );
    let after = envelopes[3]["position"].as_u64().unwrap();
    let later = ndjson(&daemon.get(&format!("/v1/events?follow=false&after={after}")).body);
    assert!(later.iter().all(|e| e["position"].as_u64().unwrap() > after));

    // `understudy events --job e2e`: the same NDJSON (at least what the API gave before).
    let out = daemon.events(&["--job", "e2e"]).ok();
    let cli = ndjson(&out.stdout);
    assert!(cli.len() >= mine.len(), "{}", out.stdout);
    assert_eq!(cli[..mine.len()], mine[..], "the CLI prints the API's envelopes");
    let by_id = ndjson(&daemon.events(&["--job", &id]).ok().stdout);
    assert_eq!(by_id[..mine.len()], mine[..]);

    // `--follow` streams new events as they are committed.
    let mut child = support::command(&[
        "events",
        "--api",
        &daemon.api,
        "--data-dir",
        daemon.data_dir.to_str().unwrap(),
        "--job",
        "e2e",
        "--follow",
    ])
    .stdout(std::process::Stdio::piped())
    .stderr(std::process::Stdio::null())
    .spawn()
    .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let known = cli.len();
    let mut got = Vec::new();
    while got.len() < known {
        got.push(rx.recv_timeout(LONG).expect("the backlog streams first"));
    }
    daemon.job(&["pause", "e2e"]).ok();
    let deadline = std::time::Instant::now() + LONG;
    let mut seen_pause = false;
    while !seen_pause && std::time::Instant::now() < deadline {
        if let Ok(line) = rx.recv_timeout(Duration::from_secs(1)) {
            let e: Value = serde_json::from_str(&line).expect("a JSON line");
            assert_eq!(e["job_id"], id.as_str(), "--job filters the live stream too");
            seen_pause |= support::event_name(&e) == "PauseRequested"
                || support::event_name(&e).starts_with("Pause");
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(seen_pause, "`events --follow` shows the pause as it is committed");
}

#[test]
fn the_daemon_runs_with_malloc_arenas_limited_to_the_cores() {
    let dir = support::tempdir("api-arenas");
    let daemon = Daemon::start(&dir.path().join("data"));
    // Same process after the exec: its environment now holds the limit.
    let environ = std::fs::read(format!("/proc/{}/environ", daemon.pid())).unwrap();
    let limit = environ
        .split(|&b| b == 0)
        .find_map(|entry| entry.strip_prefix(b"MALLOC_ARENA_MAX="))
        .map(|value| String::from_utf8_lossy(value).into_owned());
    let expected = std::env::var("MALLOC_ARENA_MAX").unwrap_or_else(|_| {
        std::thread::available_parallelism().map_or(2, |n| n.get()).max(2).to_string()
    });
    assert_eq!(limit.as_deref(), Some(expected.as_str()));
    assert_eq!(daemon.get("/v1/jobs").status, 200, "and it serves its API as usual");
}
