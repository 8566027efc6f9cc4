//! Shared helpers of the end-to-end tests: run the real `understudy` binary, start and kill
//! real daemons (a guard kills them on drop), talk HTTP to their API, build source trees and
//! compare trees byte for byte.
//!
//! Method: everything goes through the binary built by Cargo (`CARGO_BIN_EXE_understudy`),
//! real folders under temporary directories, and real loopback sockets. Waits poll with
//! generous timeouts (a loaded 2-core machine) instead of sleeping for fixed times.

#![allow(dead_code)] // each test file uses a different part of this module

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::Read as _;
use std::net::TcpListener;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::Value;

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_understudy");

/// The longest any single wait in these tests lasts.
pub const LONG: Duration = Duration::from_secs(60);

/// What a run of the binary gave.
#[derive(Debug)]
pub struct Out {
    /// The exit status (-1 when killed by a signal).
    pub code: i32,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
    /// The command line, for messages.
    pub command: String,
}

impl Out {
    /// Panics unless the command exited 0; returns self.
    #[track_caller]
    pub fn ok(self) -> Out {
        assert_eq!(
            self.code, 0,
            "`{}` failed with {}\nstdout: {}\nstderr: {}",
            self.command, self.code, self.stdout, self.stderr
        );
        self
    }

    /// Panics unless the command exited with `code`; returns self.
    #[track_caller]
    pub fn code(self, code: i32) -> Out {
        assert_eq!(
            self.code, code,
            "`{}` exited {} (wanted {code})\nstdout: {}\nstderr: {}",
            self.command, self.code, self.stdout, self.stderr
        );
        self
    }

    /// Standard output parsed as JSON.
    #[track_caller]
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| {
            panic!("`{}` did not print JSON: {e}\nstdout: {}", self.command, self.stdout)
        })
    }

    /// The non-empty lines of standard error.
    pub fn stderr_lines(&self) -> Vec<&str> {
        self.stderr.lines().filter(|l| !l.trim().is_empty()).collect()
    }
}

/// Asserts the command failed the way bad input must: exit 2, one line on stderr that starts
/// with "understudy: ", no panic, nothing on stdout; returns the line.
#[track_caller]
pub fn bad_input(out: &Out) -> String {
    assert_eq!(
        out.code, 2,
        "`{}` should exit 2 for bad input\nstdout: {}\nstderr: {}",
        out.command, out.stdout, out.stderr
    );
    let lines = out.stderr_lines();
    assert_eq!(
        lines.len(),
        1,
        "`{}` should say what is wrong in one line, said:\n{}",
        out.command,
        out.stderr
    );
    let line = lines[0].to_string();
    assert!(line.starts_with("understudy: "), "`{}`: {line}", out.command);
    assert!(!out.stderr.contains("panicked"), "`{}` panicked: {}", out.command, out.stderr);
    assert!(out.stdout.trim().is_empty(), "`{}` printed on stdout: {}", out.command, out.stdout);
    line
}

/// Whether the tests run as root.
pub fn is_root() -> bool {
    rustix::process::getuid().is_root()
}

/// A `Command` for the binary with no `UNDERSTUDY_*` variables or `RUST_LOG` inherited.
pub fn command(args: &[&str]) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .env_remove("UNDERSTUDY_API")
        .env_remove("UNDERSTUDY_DATA_DIR")
        .env_remove("UNDERSTUDY_TOKEN")
        .env_remove("RUST_LOG")
        .stdin(Stdio::null());
    cmd
}

/// Runs the binary to completion.
pub fn understudy(args: &[&str]) -> Out {
    let output = command(args).output().expect("the understudy binary runs");
    Out {
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        command: format!("understudy {}", args.join(" ")),
    }
}

/// A temporary directory (kept when `UNDERSTUDY_KEEP_TEST_DIRS` is set, for post-mortems).
pub fn tempdir(label: &str) -> tempfile::TempDir {
    let keep = std::env::var_os("UNDERSTUDY_KEEP_TEST_DIRS").is_some();
    let dir = tempfile::Builder::new()
        .prefix(&format!("understudy-e2e-{label}-"))
        .disable_cleanup(keep)
        .tempdir()
        .expect("a temporary directory");
    if keep {
        eprintln!("keeping {}", dir.path().display());
    }
    dir
}

/// Ports handed out in this process, so two tests running at once never get the same one.
static PORTS: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());

/// A loopback port that was free a moment ago and has not been handed out in this process.
pub fn free_port() -> u16 {
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("binding 127.0.0.1:0")
            .port();
        if PORTS.lock().unwrap_or_else(|e| e.into_inner()).insert(port) {
            return port;
        }
    }
}

/// Polls `check` every `every` until it gives `Some`, or panics after `timeout` with `what`
/// and the last state `describe` gives.
#[track_caller]
pub fn poll<T>(
    what: &str,
    timeout: Duration,
    every: Duration,
    mut check: impl FnMut() -> Option<T>,
    describe: impl Fn() -> String,
) -> T {
    let started = Instant::now();
    loop {
        if let Some(value) = check() {
            return value;
        }
        if started.elapsed() > timeout {
            panic!(
                "timed out after {} s waiting for {what}; last seen: {}",
                timeout.as_secs(),
                describe()
            );
        }
        std::thread::sleep(every);
    }
}

// ----------------------------------------------------------------------------------------------
// HTTP

/// One HTTP answer.
#[derive(Debug)]
pub struct Http {
    /// Status code.
    pub status: u16,
    /// The `content-type` header, if any.
    pub content_type: String,
    /// The body as text.
    pub body: String,
}

impl Http {
    /// The body as JSON.
    #[track_caller]
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {} {}", self.status, self.body))
    }
}

/// Sends one HTTP request (a fresh client and a small runtime per call: simple and robust).
pub fn http(
    method: &str,
    url: &str,
    token: Option<&str>,
    body: Option<(&str, Vec<u8>)>,
) -> Result<Http, String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    runtime.block_on(async {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .map_err(|e| e.to_string())?;
        let method = reqwest::Method::from_bytes(method.as_bytes()).map_err(|e| e.to_string())?;
        let mut request = client.request(method, url);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some((content_type, bytes)) = body {
            request = request.header("content-type", content_type).body(bytes);
        }
        let response = request.send().await.map_err(|e| e.to_string())?;
        let status = response.status().as_u16();
        let content_type = response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        let body = response.text().await.map_err(|e| e.to_string())?;
        Ok(Http { status, content_type, body })
    })
}

// ----------------------------------------------------------------------------------------------
// Daemons

/// A running `understudy serve`, killed (SIGKILL) when dropped.
pub struct Daemon {
    child: Option<Child>,
    /// Its data directory.
    pub data_dir: PathBuf,
    /// `127.0.0.1:PORT` of the API.
    pub api: String,
    /// `127.0.0.1:PORT` of the replication listener.
    pub listen: String,
    /// Where its standard error goes (appended across restarts).
    pub log: PathBuf,
}

impl Daemon {
    /// Starts a daemon on `data_dir` (created if needed) on fresh ports and waits until its API
    /// answers.
    #[track_caller]
    pub fn start(data_dir: &Path) -> Daemon {
        let log = PathBuf::from(format!("{}.serve.log", data_dir.display()));
        let mut last_error = String::new();
        for _attempt in 0..5 {
            let (listen, api) =
                (format!("127.0.0.1:{}", free_port()), format!("127.0.0.1:{}", free_port()));
            let stderr = fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&log)
                .expect("the daemon's log file");
            let stdout = stderr.try_clone().expect("the daemon's log file");
            let child = command(&[
                "serve",
                "--data-dir",
                data_dir.to_str().expect("UTF-8 path"),
                "--listen",
                &listen,
                "--api",
                &api,
            ])
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .expect("spawning understudy serve");
            let mut daemon = Daemon {
                child: Some(child),
                data_dir: data_dir.to_path_buf(),
                api,
                listen,
                log: log.clone(),
            };
            match daemon.wait_ready() {
                Ok(()) => return daemon,
                Err(error) => {
                    last_error = error;
                    // A port taken between choosing and binding it: try other ports.
                    if last_error.contains("cannot listen") || last_error.contains("cannot serve") {
                        continue;
                    }
                    panic!("the daemon did not start: {last_error}");
                }
            }
        }
        panic!("the daemon did not start after 5 attempts: {last_error}");
    }

    fn wait_ready(&mut self) -> Result<(), String> {
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                self.child = None;
                return Err(format!("it exited with {status}: {}", self.log_text()));
            }
            if let Ok(token) = fs::read_to_string(self.data_dir.join("token"))
                && let Ok(answer) = http("GET", &self.url("/v1/health"), Some(token.trim()), None)
                && answer.status == 200
            {
                return Ok(());
            }
            if started.elapsed() > LONG {
                return Err(format!("its API did not answer in 60 s: {}", self.log_text()));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The daemon's log so far.
    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("the daemon runs").id()
    }

    /// The API token.
    pub fn token(&self) -> String {
        fs::read_to_string(self.data_dir.join("token")).expect("the token").trim().to_string()
    }

    /// `http://API{path}`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.api)
    }

    /// GET with the token; panics on a transport error.
    #[track_caller]
    pub fn get(&self, path: &str) -> Http {
        http("GET", &self.url(path), Some(&self.token()), None)
            .unwrap_or_else(|e| panic!("GET {path}: {e}"))
    }

    /// `understudy job --api A --data-dir D ARGS…`.
    pub fn job(&self, args: &[&str]) -> Out {
        let mut all = vec!["job", "--api", &self.api, "--data-dir", self.dir_str()];
        all.extend_from_slice(args);
        understudy(&all)
    }

    /// `understudy events --api A --data-dir D ARGS…`.
    pub fn events(&self, args: &[&str]) -> Out {
        let mut all = vec!["events", "--api", &self.api, "--data-dir", self.dir_str()];
        all.extend_from_slice(args);
        understudy(&all)
    }

    /// `understudy replay --data-dir D --api A ARGS…`.
    pub fn replay(&self, args: &[&str]) -> Out {
        let mut all = vec!["replay", "--data-dir", self.dir_str(), "--api", &self.api];
        all.extend_from_slice(args);
        understudy(&all)
    }

    fn dir_str(&self) -> &str {
        self.data_dir.to_str().expect("UTF-8 path")
    }

    /// `job show JOB --json` through the API (cheap, for polling).
    #[track_caller]
    pub fn show(&self, job: &str) -> Value {
        let answer = self.get(&format!("/v1/jobs/{}", encode(job)));
        assert_eq!(answer.status, 200, "GET /v1/jobs/{job}: {}", answer.body);
        answer.json()
    }

    /// Creates a job through the CLI; returns its id.
    #[track_caller]
    pub fn create(&self, args: &[&str]) -> String {
        let mut all = vec!["create"];
        all.extend_from_slice(args);
        let out = self.job(&all).ok();
        out.stdout.trim().to_string()
    }

    /// Waits until the job is in `state` (polling the API).
    #[track_caller]
    pub fn wait_state(&self, job: &str, state: &str, timeout: Duration) -> Value {
        let last = std::cell::RefCell::new(Value::Null);
        poll(
            &format!("job {job} to reach {state}"),
            timeout,
            Duration::from_millis(100),
            || {
                let doc = self.show(job);
                let hit = doc["state"] == state;
                *last.borrow_mut() = doc.clone();
                hit.then_some(doc)
            },
            || format!("{}\n--- daemon log tail:\n{}", last.borrow(), self.log_tail(30)),
        )
    }

    /// Waits until `test` holds for the job's `show` document.
    #[track_caller]
    pub fn wait_show(
        &self,
        job: &str,
        what: &str,
        timeout: Duration,
        test: impl Fn(&Value) -> bool,
    ) -> Value {
        let last = std::cell::RefCell::new(Value::Null);
        poll(
            what,
            timeout,
            Duration::from_millis(100),
            || {
                let doc = self.show(job);
                let hit = test(&doc);
                *last.borrow_mut() = doc.clone();
                hit.then_some(doc)
            },
            || format!("{}\n--- daemon log tail:\n{}", last.borrow(), self.log_tail(30)),
        )
    }

    /// The job's event names, in order, through the events API.
    #[track_caller]
    pub fn event_names(&self, job: &str) -> Vec<String> {
        let answer = self.get(&format!("/v1/events?follow=false&job={}", encode(job)));
        assert_eq!(answer.status, 200, "{}", answer.body);
        answer
            .body
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| event_name(&serde_json::from_str::<Value>(l).expect("an NDJSON line")))
            .collect()
    }

    /// Every event of every job (count of NDJSON lines of the events API).
    #[track_caller]
    pub fn event_count(&self) -> usize {
        let answer = self.get("/v1/events?follow=false");
        assert_eq!(answer.status, 200, "{}", answer.body);
        answer.body.lines().filter(|l| !l.trim().is_empty()).count()
    }

    /// The last `n` lines of the daemon's log.
    pub fn log_tail(&self, n: usize) -> String {
        let text = self.log_text();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// SIGKILL, and wait for the process to be gone.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM, then wait (up to 60 s) for the exit status.
    #[track_caller]
    pub fn terminate(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("the daemon runs");
        let sent = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .expect("kill -TERM runs");
        assert!(sent.success(), "kill -TERM failed");
        let started = Instant::now();
        loop {
            if let Some(status) = child.try_wait().expect("waiting for the daemon") {
                return status;
            }
            if started.elapsed() > LONG {
                let _ = child.kill();
                let _ = child.wait();
                panic!("the daemon did not stop within 60 s of SIGTERM: {}", self.log_tail(40));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Whether the process is still running.
    pub fn running(&mut self) -> bool {
        self.child.as_mut().is_some_and(|c| c.try_wait().ok().flatten().is_none())
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// The name of an event envelope's event (`{"event": {"Name": …}}` or `{"event": "Name"}`).
pub fn event_name(envelope: &Value) -> String {
    match &envelope["event"] {
        Value::String(s) => s.clone(),
        Value::Object(map) => map.keys().next().cloned().unwrap_or_default(),
        other => other.to_string(),
    }
}

/// URL-encodes a path segment.
pub fn encode(segment: &str) -> String {
    segment
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

// ----------------------------------------------------------------------------------------------
// Trees

/// Deterministic pseudo-random bytes.
pub fn random_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        out.extend_from_slice(&state.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Writes a file, creating its parents.
pub fn write(path: &Path, bytes: &[u8]) {
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).expect("creating parents");
    }
    fs::write(path, bytes).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
}

/// Sets a path's permission bits.
pub fn chmod(path: &Path, mode: u32) {
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .unwrap_or_else(|e| panic!("chmod {}: {e}", path.display()));
}

/// The rich source tree of the files job: nested folders, unicode and space names, a symlink,
/// a hard link pair, an empty folder, a sparse file, a file with mode 0640 and a 5 MB file.
pub fn make_rich_tree(root: &Path) {
    fs::create_dir_all(root).expect("the source root");
    write(
        &root.join("docs/readme.md"),
        &b"The quick brown fox jumps over the lazy dog.\n".repeat(50),
    );
    write(&root.join("a/b/c/deep.txt"), b"deep inside\n");
    write(&root.join("a/b/sibling.txt"), b"a sibling\n");
    write(&root.join("photos/\u{e9}t\u{e9}/caf\u{e9} \u{2615}.txt"), "un caf\u{e9}\n".as_bytes());
    write(&root.join("my docs/read me.txt"), b"a name with spaces\n");
    write(
        &root.join("\u{65e5}\u{672c}\u{8a9e}/\u{30d5}\u{30a1}\u{30a4}\u{30eb}.txt"),
        &random_bytes(7, 3000),
    );
    std::os::unix::fs::symlink("my docs/read me.txt", root.join("link to readme"))
        .expect("a symlink");
    write(&root.join("links/one"), b"hard linked content\n");
    fs::hard_link(root.join("links/one"), root.join("links/two")).expect("a hard link");
    fs::create_dir_all(root.join("empty folder")).expect("an empty folder");
    // A 20 MB sparse file with data at 0, 8 MB and its last bytes.
    let sparse = fs::File::create(root.join("sparse.img")).expect("the sparse file");
    sparse.set_len(20 * 1024 * 1024).expect("set_len");
    {
        use std::os::unix::fs::FileExt;
        sparse.write_all_at(&random_bytes(11, 4096), 0).expect("write");
        sparse.write_all_at(&random_bytes(12, 4096), 8 * 1024 * 1024).expect("write");
        sparse.write_all_at(b"the end", 20 * 1024 * 1024 - 7).expect("write");
    }
    drop(sparse);
    write(&root.join("secret.txt"), b"only the owner and the group\n");
    chmod(&root.join("secret.txt"), 0o640);
    write(&root.join("big.bin"), &random_bytes(5, 5_000_000));
    for i in 0..20 {
        write(
            &root.join(format!("data/small-{i:02}.dat")),
            &random_bytes(100 + i, 100 + 997 * i as usize),
        );
    }
}

/// A tree of `files` files of about `total_bytes` in all, in nested folders.
pub fn make_bulk_tree(root: &Path, files: usize, total_bytes: usize, seed: u64) {
    let each = total_bytes / files.max(1);
    for i in 0..files {
        let size = each / 2 + (i * 7919) % each.max(1);
        write(
            &root.join(format!("d{:02}/e{:02}/file-{i:04}.bin", i % 10, (i / 10) % 7)),
            &random_bytes(seed + i as u64, size),
        );
    }
}

/// One node of a tree, as compared.
#[derive(Debug, PartialEq, Eq)]
enum Node {
    Dir { mode: u32 },
    File { mode: u32, len: u64, link_group: PathBuf },
    Symlink { target: PathBuf },
    Other { kind: String },
}

fn walk(root: &Path) -> std::io::Result<BTreeMap<PathBuf, Node>> {
    let mut nodes = BTreeMap::new();
    let mut inodes: BTreeMap<(u64, u64), PathBuf> = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in fs::read_dir(&dir)? {
            let entry = entry?;
            let path = entry.path();
            let rel = path.strip_prefix(root).expect("under the root").to_path_buf();
            let meta = fs::symlink_metadata(&path)?;
            let kind = meta.file_type();
            let node = if kind.is_symlink() {
                Node::Symlink { target: fs::read_link(&path)? }
            } else if kind.is_dir() {
                stack.push(path.clone());
                Node::Dir { mode: meta.mode() & 0o7777 }
            } else if kind.is_file() {
                // The smallest name of the inode stands for its hard link group.
                let group =
                    inodes.entry((meta.dev(), meta.ino())).or_insert_with(|| rel.clone()).clone();
                Node::File { mode: meta.mode() & 0o7777, len: meta.len(), link_group: group }
            } else {
                Node::Other { kind: format!("{kind:?}") }
            };
            nodes.insert(rel, node);
        }
    }
    // Link groups: name each by the smallest path of the group (the walk order is not sorted).
    let mut groups: BTreeMap<PathBuf, PathBuf> = BTreeMap::new();
    for (rel, node) in &nodes {
        if let Node::File { link_group, .. } = node {
            let smallest = groups.entry(link_group.clone()).or_insert_with(|| rel.clone());
            if rel < smallest {
                *smallest = rel.clone();
            }
        }
    }
    for node in nodes.values_mut() {
        if let Node::File { link_group, .. } = node {
            *link_group = groups[link_group].clone();
        }
    }
    Ok(nodes)
}

fn same_bytes(a: &Path, b: &Path) -> std::io::Result<bool> {
    let (mut fa, mut fb) = (fs::File::open(a)?, fs::File::open(b)?);
    let (mut ba, mut bb) = (vec![0u8; 1 << 20], vec![0u8; 1 << 20]);
    loop {
        let na = read_full(&mut fa, &mut ba)?;
        let nb = read_full(&mut fb, &mut bb)?;
        if na != nb || ba[..na] != bb[..nb] {
            return Ok(false);
        }
        if na == 0 {
            return Ok(true);
        }
    }
}

fn read_full(file: &mut fs::File, buffer: &mut [u8]) -> std::io::Result<usize> {
    let mut got = 0;
    while got < buffer.len() {
        let n = file.read(&mut buffer[got..])?;
        if n == 0 {
            break;
        }
        got += n;
    }
    Ok(got)
}

/// Compares two trees: names, kinds, modes, hard link groups, symlink targets and bytes.
/// `Err` describes the first difference.
pub fn compare_trees(a: &Path, b: &Path) -> Result<(), String> {
    let left = walk(a).map_err(|e| format!("walking {}: {e}", a.display()))?;
    let right = walk(b).map_err(|e| format!("walking {}: {e}", b.display()))?;
    for (path, node) in &left {
        match right.get(path) {
            None => return Err(format!("{} is missing from {}", path.display(), b.display())),
            Some(other) if other != node => {
                return Err(format!(
                    "{}: {node:?} in {} but {other:?} in {}",
                    path.display(),
                    a.display(),
                    b.display()
                ));
            }
            Some(_) => {}
        }
    }
    if let Some(extra) = right.keys().find(|p| !left.contains_key(*p)) {
        return Err(format!(
            "{} is in {} but not in {}",
            extra.display(),
            b.display(),
            a.display()
        ));
    }
    for (path, node) in &left {
        if let Node::File { .. } = node {
            let same = same_bytes(&a.join(path), &b.join(path))
                .map_err(|e| format!("reading {}: {e}", path.display()))?;
            if !same {
                return Err(format!("{} has different bytes", path.display()));
            }
        }
    }
    Ok(())
}

/// Waits until the trees are equal ([`compare_trees`]).
#[track_caller]
pub fn wait_equal(a: &Path, b: &Path, timeout: Duration, daemon: Option<&Daemon>) {
    let last = std::cell::RefCell::new(String::new());
    poll(
        &format!("{} to equal {}", b.display(), a.display()),
        timeout,
        Duration::from_millis(150),
        || match compare_trees(a, b) {
            Ok(()) => Some(()),
            Err(why) => {
                *last.borrow_mut() = why;
                None
            }
        },
        || {
            format!(
                "{}\n--- daemon log tail:\n{}",
                last.borrow(),
                daemon.map(|d| d.log_tail(30)).unwrap_or_default()
            )
        },
    );
}

/// Checks equality with the system's tools too: `diff -r` (when present) and `rsync -anci
/// --delete` (when installed; a directory whose only difference is its modification time is
/// tolerated). Returns what it could not run, for the test's output.
#[track_caller]
pub fn external_compare(a: &Path, b: &Path) -> Vec<String> {
    let mut skipped = Vec::new();
    match Command::new("diff").arg("-r").arg("--no-dereference").arg(a).arg(b).output() {
        Ok(out) => assert!(
            out.status.success(),
            "diff -r {} {} found differences:\n{}{}",
            a.display(),
            b.display(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
        Err(_) => skipped.push("diff is not installed".to_string()),
    }
    let from = format!("{}/", a.display());
    let to = format!("{}/", b.display());
    match Command::new("rsync").args(["-anci", "--delete", &from, &to]).output() {
        Ok(out) => {
            assert!(out.status.success(), "rsync failed: {}", String::from_utf8_lossy(&out.stderr));
            let text = String::from_utf8_lossy(&out.stdout);
            let differences: Vec<&str> = text
                .lines()
                .filter(|l| !l.trim().is_empty() && !l.starts_with(".d..t......"))
                .collect();
            assert!(
                differences.is_empty(),
                "rsync -anci --delete {from} {to} would change:\n{}",
                differences.join("\n")
            );
        }
        Err(_) => {
            skipped.push("rsync is not installed: the rsync comparison was skipped".to_string())
        }
    }
    for message in &skipped {
        eprintln!("note: {message}");
    }
    skipped
}

/// The allocated bytes of a file.
pub fn allocated_bytes(path: &Path) -> u64 {
    fs::metadata(path).expect("metadata").blocks() * 512
}
