//! Shared helpers of the network end-to-end tests: two hosts made of Linux network namespaces,
//! the link between them (a veth pair, or a userspace wire between two TUN devices where the
//! kernel has no netem), the two `understudy serve` daemons, the command line run inside a
//! host, source trees, a continuous writer, and a byte-for-byte tree comparison.
//!
//! Method: everything goes through `ip` and `tc` (iproute2), `ip netns exec NS …` and the real
//! binary (`CARGO_BIN_EXE_understudy`). The test hosts only ever get addresses in
//! 198.51.100.0/24 (TEST-NET-2), are named uniquely per run (`us-src-<pid>-<n>`), and are
//! removed by a guard on drop — after every process started in them is killed by its id —
//! also when a test panics. Every command sent into a host first checks that the host's
//! namespace exists (`ip netns list`) and fails otherwise, so nothing is ever sent from the
//! machine's own namespace or over its own interfaces.
//!
//! Link shaping: `tc netem` on the veth when the kernel has it (delay, loss, rate). A kernel
//! built without `CONFIG_NET_SCH_NETEM` (as on the Firecracker VMs this project runs on) answers
//! "Specified qdisc kind is unknown"; then the link is rebuilt as two TUN devices, one in each
//! namespace with the same names and addresses, joined by a wire in this process that delays,
//! drops and paces every packet the way netem does (FIFO, a 1000-packet limit, serialisation at
//! the rate counting an Ethernet header, then the delay). Cuts are the same either way:
//! `ip link set IF down`, then `up`.

#![allow(dead_code)] // each test uses a different part of this module
#![allow(clippy::unwrap_used)] // a test fails by panicking, with the value in the message

use std::collections::BTreeMap;
use std::fs;
use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::Value;

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_understudy");
/// The source host's address (TEST-NET-2 only).
pub const SRC_ADDR: &str = "198.51.100.1";
/// The target host's address (TEST-NET-2 only).
pub const TGT_ADDR: &str = "198.51.100.2";
/// The prefix both addresses share.
pub const PREFIX_LEN: u8 = 24;
/// The replication port of both daemons (each host has its own network stack).
pub const REPLICATION_PORT: u16 = 6320;
/// The API port of both daemons, on each host's own loopback.
pub const API_PORT: u16 = 6325;

/// Whether the long variants run (`UNDERSTUDY_LONG_TESTS=1`).
pub fn long() -> bool {
    std::env::var("UNDERSTUDY_LONG_TESTS").is_ok_and(|v| v == "1")
}

static SERIAL: Mutex<()> = Mutex::new(());

/// One network test at a time: they measure rates and times on a 2-core machine.
pub fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Panics unless `address` is in 198.51.100.0/24: the only addresses these tests use.
#[track_caller]
pub fn assert_test_net(address: &str) {
    let ip: std::net::Ipv4Addr =
        address.parse().unwrap_or_else(|e| panic!("{address:?} is not an IPv4 address: {e}"));
    assert_eq!(
        ip.octets()[..3],
        [198, 51, 100],
        "{address} is outside 198.51.100.0/24: the network tests use TEST-NET-2 only"
    );
}

// ----------------------------------------------------------------------------------------------
// Running commands

/// What a command gave.
#[derive(Debug)]
pub struct Out {
    /// Exit code (-1 when killed by a signal).
    pub code: i32,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
    /// The command line, for messages.
    pub command: String,
}

impl Out {
    /// Panics unless the command exited 0.
    #[track_caller]
    pub fn ok(self) -> Out {
        assert_eq!(
            self.code, 0,
            "`{}` failed ({})\nstdout: {}\nstderr: {}",
            self.command, self.code, self.stdout, self.stderr
        );
        self
    }

    /// Standard output as JSON.
    #[track_caller]
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| {
            panic!("`{}` did not print JSON ({e}): {}\n{}", self.command, self.stdout, self.stderr)
        })
    }
}

/// Runs a command to completion, capturing its output.
pub fn run(command: &mut Command) -> Out {
    let line = format!(
        "{} {}",
        command.get_program().to_string_lossy(),
        command.get_args().map(|a| a.to_string_lossy()).collect::<Vec<_>>().join(" ")
    );
    let output = command
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run `{line}`: {e}"));
    Out {
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        command: line,
    }
}

/// `ip ARGS` in this process's namespace: only `netns add/del/list/pids` and commands aimed
/// into a test namespace (`-n NS`, `link add … netns NS`, moving this test's own TUN device).
fn ip(args: &[&str]) -> Out {
    run(Command::new("ip").args(args))
}

/// Panics unless this runs as root with `ip` and `tc` installed.
pub fn preflight() {
    let status = fs::read_to_string("/proc/self/status").unwrap_or_default();
    let root = status
        .lines()
        .find(|l| l.starts_with("Uid:"))
        .is_some_and(|l| l.split_whitespace().nth(2) == Some("0"));
    assert!(root, "the network tests create network namespaces: run them as root");
    for tool in ["ip", "tc"] {
        let found = Command::new(tool)
            .arg("-V")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        assert!(found, "`{tool}` is missing: run .ci/setup (it installs iproute2)");
    }
}

// ----------------------------------------------------------------------------------------------
// Hosts

/// One of the two hosts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    /// The source host (198.51.100.1).
    Src,
    /// The target host (198.51.100.2).
    Tgt,
}

/// The names of a test's two namespaces; every command into them goes through here.
#[derive(Clone, Debug)]
pub struct Hosts {
    /// The source namespace.
    pub src: String,
    /// The target namespace.
    pub tgt: String,
}

impl Hosts {
    /// The namespace of a side.
    pub fn ns(&self, side: Side) -> &str {
        match side {
            Side::Src => &self.src,
            Side::Tgt => &self.tgt,
        }
    }

    /// Panics unless both namespaces exist: nothing is sent otherwise.
    #[track_caller]
    pub fn ensure(&self) {
        let listed = ip(&["netns", "list"]);
        let names: Vec<&str> =
            listed.stdout.lines().filter_map(|l| l.split_whitespace().next()).collect();
        for ns in [&self.src, &self.tgt] {
            assert!(
                names.contains(&ns.as_str()),
                "the test namespace {ns} does not exist (`ip netns list`: {names:?}): refusing to send anything"
            );
        }
    }

    /// `ip netns exec NS PROGRAM`, after checking the namespaces exist; no `UNDERSTUDY_*` or
    /// `RUST_LOG` inherited.
    #[track_caller]
    pub fn command(&self, side: Side, program: &str) -> Command {
        self.ensure();
        let mut command = Command::new("ip");
        command
            .args(["netns", "exec", self.ns(side), program])
            .env_remove("UNDERSTUDY_API")
            .env_remove("UNDERSTUDY_DATA_DIR")
            .env_remove("UNDERSTUDY_TOKEN")
            .env_remove("RUST_LOG")
            .stdin(Stdio::null());
        command
    }

    /// Runs a program inside a host to completion.
    #[track_caller]
    pub fn run(&self, side: Side, program: &str, args: &[&str]) -> Out {
        run(self.command(side, program).args(args))
    }

    /// Runs a bash script inside a host to completion.
    #[track_caller]
    pub fn bash(&self, side: Side, script: &str) -> Out {
        self.run(side, "bash", &["-c", script])
    }
}

/// How the link between the hosts is made.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Emulation {
    /// A plain veth pair.
    Veth,
    /// A veth pair with `tc netem` on it.
    Netem,
    /// Two TUN devices joined by this process's wire (the kernel has no netem).
    Wire,
}

/// What one direction of the link does to packets (netem's parameters).
#[derive(Clone, Copy, Debug, Default)]
pub struct Shape {
    /// Added one-way delay.
    pub delay: Duration,
    /// Packets dropped at random, in percent.
    pub loss_percent: f64,
    /// The link rate in bits per second, if limited.
    pub rate_bits: Option<u64>,
}

impl Shape {
    fn is_plain(&self) -> bool {
        self.delay.is_zero() && self.loss_percent == 0.0 && self.rate_bits.is_none()
    }

    fn netem_args(&self) -> Vec<String> {
        let mut args = vec!["delay".to_string(), format!("{}ms", self.delay.as_millis())];
        if self.loss_percent > 0.0 {
            args.extend(["loss".to_string(), format!("{}%", self.loss_percent)]);
        }
        if let Some(rate) = self.rate_bits {
            args.extend(["rate".to_string(), format!("{rate}bit")]);
        }
        args
    }
}

impl std::fmt::Display for Shape {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.netem_args().join(" "))
    }
}

static NEXT: AtomicU32 = AtomicU32::new(1);

/// Two hosts joined by a link. Dropping it kills what runs in them and removes them.
pub struct Net {
    /// The namespaces.
    pub hosts: Hosts,
    /// The source's end of the link (`vs<n>`).
    pub src_if: String,
    /// The target's end of the link (`vt<n>`).
    pub tgt_if: String,
    /// How the link is made.
    pub emulation: Emulation,
    wire: Option<Wire>,
    helpers: Mutex<Vec<Child>>,
}

impl Net {
    /// Two hosts joined by a plain veth pair.
    pub fn new() -> Net {
        preflight();
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id();
        let mut net = Net {
            hosts: Hosts { src: format!("us-src-{pid}-{n}"), tgt: format!("us-tgt-{pid}-{n}") },
            src_if: format!("vs{n}"),
            tgt_if: format!("vt{n}"),
            emulation: Emulation::Veth,
            wire: None,
            helpers: Mutex::new(Vec::new()),
        };
        assert!(net.src_if.len() <= 15 && net.tgt_if.len() <= 15);
        for ns in [net.hosts.src.clone(), net.hosts.tgt.clone()] {
            ip(&["netns", "add", &ns]).ok();
        }
        // Both ends are created directly inside the namespaces: nothing appears in this one.
        ip(&[
            "link",
            "add",
            &net.src_if,
            "netns",
            &net.hosts.src,
            "type",
            "veth",
            "peer",
            "name",
            &net.tgt_if,
            "netns",
            &net.hosts.tgt,
        ])
        .ok();
        net.address_and_up();
        net.emulation = Emulation::Veth;
        net
    }

    /// Two hosts joined by a link shaped in each direction: netem on the veth when the kernel
    /// has it, else the TUN wire (`UNDERSTUDY_NET_EMULATION=wire` forces the wire).
    pub fn shaped(src_to_tgt: Shape, tgt_to_src: Shape) -> Net {
        let mut net = Net::new();
        let forced_wire =
            std::env::var("UNDERSTUDY_NET_EMULATION").is_ok_and(|v| v.eq_ignore_ascii_case("wire"));
        if !forced_wire {
            let mut failed = None;
            for (side, dev, shape) in [
                (Side::Src, net.src_if.clone(), src_to_tgt),
                (Side::Tgt, net.tgt_if.clone(), tgt_to_src),
            ] {
                if shape.is_plain() {
                    continue;
                }
                let mut args = vec!["qdisc", "add", "dev", &dev, "root", "netem"]
                    .into_iter()
                    .map(String::from)
                    .collect::<Vec<_>>();
                args.extend(shape.netem_args());
                let args: Vec<&str> = args.iter().map(String::as_str).collect();
                let out = net.hosts.run(side, "tc", &args);
                if out.code != 0 {
                    failed = Some(out.stderr.trim().to_string());
                    break;
                }
            }
            match failed {
                None => {
                    net.emulation = Emulation::Netem;
                    return net;
                }
                Some(why) => println!(
                    "tc netem is not available here ({why}): the link is emulated by a userspace wire between two TUN devices"
                ),
            }
        }
        net.rebuild_as_wire(src_to_tgt, tgt_to_src);
        net
    }

    fn address_and_up(&self) {
        for (side, dev, address) in
            [(Side::Src, &self.src_if, SRC_ADDR), (Side::Tgt, &self.tgt_if, TGT_ADDR)]
        {
            assert_test_net(address);
            let ns = self.hosts.ns(side);
            let cidr = format!("{address}/{PREFIX_LEN}");
            ip(&["-n", ns, "addr", "add", &cidr, "dev", dev]).ok();
            ip(&["-n", ns, "link", "set", dev, "up"]).ok();
            ip(&["-n", ns, "link", "set", "lo", "up"]).ok();
        }
    }

    fn rebuild_as_wire(&mut self, src_to_tgt: Shape, tgt_to_src: Shape) {
        ip(&["-n", &self.hosts.src, "link", "del", &self.src_if]).ok();
        let mut ends = Vec::new();
        for (side, name) in [(Side::Src, self.src_if.clone()), (Side::Tgt, self.tgt_if.clone())] {
            // The kernel picks a free name ("ust%d"); the device moves into the host at once and
            // takes its link name there. It never has an address outside the test namespace.
            let iface = tun_tap::Iface::without_packet_info("ust%d", tun_tap::Mode::Tun)
                .unwrap_or_else(|e| panic!("cannot create a TUN device: {e}"));
            let ns = self.hosts.ns(side).to_string();
            let moved = ip(&["link", "set", iface.name(), "netns", &ns]);
            if moved.code != 0 {
                drop(iface); // a TUN device without its file goes away
                panic!("cannot move the TUN device into {ns}: {}", moved.stderr);
            }
            ip(&["-n", &ns, "link", "set", iface.name(), "name", &name]).ok();
            ends.push(Arc::new(iface));
        }
        self.address_and_up();
        let stop = Arc::new(AtomicBool::new(false));
        let seed = u64::from(std::process::id()) << 20 ^ 0x9e37_79b9;
        let (b, a) = (ends.pop().unwrap(), ends.pop().unwrap());
        let stats = [Arc::new(WireStats::default()), Arc::new(WireStats::default())];
        let mut threads = Vec::new();
        threads.extend(pump(Arc::clone(&a), Arc::clone(&b), src_to_tgt, &stop, seed, &stats[0]));
        threads.extend(pump(b, a, tgt_to_src, &stop, seed.rotate_left(17) ^ 1, &stats[1]));
        self.wire = Some(Wire { stop, threads, stats });
        self.emulation = Emulation::Wire;
    }

    /// Cuts the link: `ip netns exec SRC ip link set vs<n> down`.
    pub fn cut(&self) {
        self.hosts.run(Side::Src, "ip", &["link", "set", &self.src_if, "down"]).ok();
    }

    /// Restores the link: `ip netns exec SRC ip link set vs<n> up`.
    pub fn restore(&self) {
        self.hosts.run(Side::Src, "ip", &["link", "set", &self.src_if, "up"]).ok();
    }

    /// Starts a helper process (bash) inside a host; it is killed when the net drops.
    pub fn spawn_bash(&self, side: Side, script: &str) {
        let child = self
            .hosts
            .command(side, "bash")
            .args(["-c", script])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("bash starts");
        self.helpers.lock().unwrap().push(child);
    }

    /// What the wire did in each direction (source → target, target → source), when the link
    /// is the TUN wire.
    pub fn wire_stats(&self) -> Option<String> {
        self.wire
            .as_ref()
            .map(|w| format!("source → target: {}; target → source: {}", w.stats[0], w.stats[1]))
    }

    /// The time a TCP connect from the source host to `port` on the target host takes (one
    /// round trip), measured by bash inside the source host.
    pub fn connect_time(&self, port: u16) -> Duration {
        let out = self.hosts.bash(
            Side::Src,
            &format!(
                "a=$(date +%s%N); (exec 3<>/dev/tcp/{TGT_ADDR}/{port}) || exit 1; b=$(date +%s%N); echo $((b - a))"
            ),
        );
        let nanos: u64 = out.stdout.trim().parse().unwrap_or_else(|e| {
            panic!("cannot read the connect time ({e}): {} {}", out.stdout, out.stderr)
        });
        Duration::from_nanos(nanos)
    }

    /// Sends `bytes` zeros over one plain TCP connection from the source host to the target
    /// host (bash's /dev/tcp into a python3 sink) and returns how long the sink took from the
    /// connection to the last byte: the link's own ceiling, to compare the product with.
    /// `None` when python3 is missing.
    pub fn raw_tcp(&self, bytes: u64) -> Option<Duration> {
        const PORT: u16 = 7001;
        let sink = format!(
            "import socket, time\n\
             s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n\
             s.bind(('{TGT_ADDR}', {PORT})); s.listen(1)\n\
             print('listening', flush=True)\n\
             c, _ = s.accept(); t = time.monotonic(); n = 0\n\
             while True:\n    d = c.recv(1 << 20)\n    if not d: break\n    n += len(d)\n\
             print(n, time.monotonic() - t, flush=True)\n"
        );
        let mut child = self
            .hosts
            .command(Side::Tgt, "python3")
            .args(["-c", &sink])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .ok()?;
        let mut stdout = std::io::BufReader::new(child.stdout.take()?);
        let mut line = String::new();
        std::io::BufRead::read_line(&mut stdout, &mut line).ok()?;
        if !line.starts_with("listening") {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        self.hosts
            .bash(Side::Src, &format!("head -c {bytes} /dev/zero > /dev/tcp/{TGT_ADDR}/{PORT}"))
            .ok();
        line.clear();
        std::io::BufRead::read_line(&mut stdout, &mut line).ok()?;
        let _ = child.wait();
        let mut fields = line.split_whitespace();
        let received: u64 = fields.next()?.parse().ok()?;
        let seconds: f64 = fields.next()?.parse().ok()?;
        assert_eq!(received, bytes, "the sink got every byte");
        Some(Duration::from_secs_f64(seconds))
    }

    /// Kills the helper processes (by id).
    pub fn kill_helpers(&self) {
        for mut child in self.helpers.lock().unwrap().drain(..) {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        self.kill_helpers();
        // Whatever still runs inside the hosts was started by this test: kill it by its id.
        for ns in [&self.hosts.src, &self.hosts.tgt] {
            let pids = ip(&["netns", "pids", ns]);
            for pid in pids.stdout.split_whitespace() {
                if pid.parse::<u32>().is_ok() {
                    let _ = Command::new("kill").args(["-KILL", pid]).status();
                }
            }
        }
        if let Some(wire) = self.wire.take() {
            wire.stop.store(true, Ordering::SeqCst);
            // Deleting the TUN devices ends the readers' blocking reads.
            ip(&["-n", &self.hosts.src, "link", "del", &self.src_if]);
            ip(&["-n", &self.hosts.tgt, "link", "del", &self.tgt_if]);
            for thread in wire.threads {
                let _ = thread.join();
            }
        }
        for ns in [&self.hosts.src, &self.hosts.tgt] {
            let out = ip(&["netns", "del", ns]);
            if out.code != 0 {
                eprintln!("could not remove the namespace {ns}: {}", out.stderr.trim());
            }
        }
    }
}

// ----------------------------------------------------------------------------------------------
// The TUN wire

struct Wire {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    stats: [Arc<WireStats>; 2],
}

/// What one direction of the wire did.
#[derive(Debug, Default)]
pub struct WireStats {
    /// Packets read from the sending side.
    pub packets: AtomicU64,
    /// Packets dropped at random (loss).
    pub lost: AtomicU64,
    /// Packets dropped because the queue was full (limit).
    pub overflowed: AtomicU64,
    /// Packets delivered to the receiving side.
    pub delivered: AtomicU64,
}

impl std::fmt::Display for WireStats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        write!(
            f,
            "{} packets, {} lost ({:.2} %), {} over the limit, {} delivered",
            get(&self.packets),
            get(&self.lost),
            get(&self.lost) as f64 * 100.0 / get(&self.packets).max(1) as f64,
            get(&self.overflowed),
            get(&self.delivered)
        )
    }
}

/// netem's default queue limit, in packets (held for delay or waiting for the rate).
const WIRE_LIMIT: usize = 1000;
/// The Ethernet header netem counts on a veth, added to each IP packet for the rate.
const ETHERNET_HEADER: u64 = 14;

/// Moves packets from `from` to `to` the way netem would: drop at random, pace at the rate
/// (FIFO), deliver after the delay, tail-drop beyond the limit. The reader ends when `from` is
/// deleted; the deliverer ends on `stop`.
fn pump(
    from: Arc<tun_tap::Iface>,
    to: Arc<tun_tap::Iface>,
    shape: Shape,
    stop: &Arc<AtomicBool>,
    seed: u64,
    stats: &Arc<WireStats>,
) -> Vec<JoinHandle<()>> {
    let (reader_stats, deliver_stats) = (Arc::clone(stats), Arc::clone(stats));
    let (tx, rx) = mpsc::channel::<(Instant, Vec<u8>)>();
    let held = Arc::new(AtomicUsize::new(0));
    let reader_held = Arc::clone(&held);
    let reader_stop = Arc::clone(stop);
    let reader = std::thread::spawn(move || {
        let mut random = seed | 1;
        let mut line_free = Instant::now();
        let mut buffer = vec![0u8; 65_536];
        while let Ok(len) = from.recv(&mut buffer) {
            if reader_stop.load(Ordering::Relaxed) {
                break;
            }
            reader_stats.packets.fetch_add(1, Ordering::Relaxed);
            random ^= random << 13;
            random ^= random >> 7;
            random ^= random << 17;
            if shape.loss_percent > 0.0 && (random % 1_000_000) as f64 / 1e4 < shape.loss_percent {
                reader_stats.lost.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            if reader_held.load(Ordering::Relaxed) >= WIRE_LIMIT {
                reader_stats.overflowed.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            let now = Instant::now();
            if let Some(rate) = shape.rate_bits {
                let bits = (len as u64 + ETHERNET_HEADER) * 8;
                line_free = line_free.max(now) + Duration::from_nanos(bits * 1_000_000_000 / rate);
            } else {
                line_free = now;
            }
            reader_held.fetch_add(1, Ordering::Relaxed);
            if tx.send((line_free + shape.delay, buffer[..len].to_vec())).is_err() {
                break;
            }
        }
    });
    let deliver_stop = Arc::clone(stop);
    let deliverer = std::thread::spawn(move || {
        loop {
            match rx.recv_timeout(Duration::from_millis(100)) {
                Ok((due, packet)) => {
                    let now = Instant::now();
                    if due > now {
                        std::thread::sleep(due - now);
                    }
                    // A down link refuses the write: the packet is lost, as on a cable.
                    if to.send(&packet).is_ok() {
                        deliver_stats.delivered.fetch_add(1, Ordering::Relaxed);
                    }
                    held.fetch_sub(1, Ordering::Relaxed);
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            }
            if deliver_stop.load(Ordering::Relaxed) {
                break;
            }
        }
    });
    // The reader is not joined: it blocks in read until its device is deleted.
    drop(reader);
    vec![deliverer]
}

// ----------------------------------------------------------------------------------------------
// Daemons

/// An `understudy serve` running inside a host. Dropping it kills it.
pub struct Daemon {
    child: Option<Child>,
    hosts: Hosts,
    /// Its host.
    pub side: Side,
    /// Its data directory.
    pub data_dir: PathBuf,
    secret: Option<PathBuf>,
    /// Its stdout and stderr (appended across restarts).
    pub log: PathBuf,
}

impl Daemon {
    /// Starts `understudy serve --data-dir D --listen ADDR:6320 --api 127.0.0.1:6325
    /// [--secret-file S]` inside the host and waits for its API.
    pub fn start(net: &Net, side: Side, data_dir: &Path, secret: Option<&Path>) -> Daemon {
        let mut daemon = Daemon {
            child: None,
            hosts: net.hosts.clone(),
            side,
            data_dir: data_dir.to_path_buf(),
            secret: secret.map(Path::to_path_buf),
            log: data_dir.with_extension("log"),
        };
        daemon.spawn();
        daemon
    }

    /// The address it listens on for replication.
    pub fn listen(&self) -> String {
        let address = match self.side {
            Side::Src => SRC_ADDR,
            Side::Tgt => TGT_ADDR,
        };
        assert_test_net(address);
        format!("{address}:{REPLICATION_PORT}")
    }

    fn spawn(&mut self) {
        assert!(self.child.is_none(), "the daemon already runs");
        let log = fs::OpenOptions::new().create(true).append(true).open(&self.log).unwrap();
        let mut command = self.hosts.command(self.side, BIN);
        command
            .arg("serve")
            .arg("--data-dir")
            .arg(&self.data_dir)
            .args(["--listen", &self.listen(), "--api", &format!("127.0.0.1:{API_PORT}")])
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        if let Some(secret) = &self.secret {
            command.arg("--secret-file").arg(secret);
        }
        self.child = Some(command.spawn().expect("the daemon starts"));
        let started = Instant::now();
        loop {
            if self.data_dir.join("token").exists() && self.job(&["list"]).code == 0 {
                break;
            }
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!(
                    "the {:?} daemon exited at start ({status}):\n{}",
                    self.side,
                    self.log_tail()
                );
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "the {:?} daemon did not serve its API within 30 s:\n{}",
                self.side,
                self.log_tail()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("the daemon runs").id()
    }

    /// Whether it still runs.
    pub fn running(&mut self) -> bool {
        self.child.as_mut().is_some_and(|c| c.try_wait().ok().flatten().is_none())
    }

    /// Sends SIGTERM (by its id) and waits for it to stop cleanly.
    pub fn sigterm(&mut self) -> ExitStatus {
        let pid = self.pid().to_string();
        run(Command::new("kill").args(["-TERM", &pid])).ok();
        let mut child = self.child.take().unwrap();
        let started = Instant::now();
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            if started.elapsed() > Duration::from_secs(30) {
                let _ = child.kill();
                let _ = child.wait();
                panic!("the {:?} daemon did not stop within 30 s of SIGTERM", self.side);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills it with SIGKILL.
    pub fn sigkill(&mut self) {
        let mut child = self.child.take().unwrap();
        child.kill().unwrap();
        let _ = child.wait();
    }

    /// Starts it again on the same data directory.
    pub fn restart(&mut self) {
        self.spawn();
    }

    /// Changes the secret file it starts with next time (`None`: no `--secret-file`).
    pub fn set_secret(&mut self, secret: Option<&Path>) {
        self.secret = secret.map(Path::to_path_buf);
    }

    /// The end of its log.
    pub fn log_tail(&self) -> String {
        let text = fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    /// Its whole log.
    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `understudy job --data-dir D --api 127.0.0.1:6325 ARGS` inside its host.
    pub fn job(&self, args: &[&str]) -> Out {
        let mut command = self.hosts.command(self.side, BIN);
        command
            .arg("job")
            .arg("--data-dir")
            .arg(&self.data_dir)
            .args(["--api", &format!("127.0.0.1:{API_PORT}")])
            .args(args);
        run(&mut command)
    }

    /// `job show JOB --json`.
    #[track_caller]
    pub fn show(&self, job: &str) -> Value {
        self.job(&["show", job, "--json"]).ok().json()
    }

    /// `understudy replay --data-dir D JOB --json` inside its host (it asks the running
    /// daemon's API).
    #[track_caller]
    pub fn replay(&self, job: &str) -> Value {
        let mut command = self.hosts.command(self.side, BIN);
        command.arg("replay").arg("--data-dir").arg(&self.data_dir).args([
            "--api",
            &format!("127.0.0.1:{API_PORT}"),
            job,
            "--json",
        ]);
        run(&mut command).ok().json()
    }

    /// The job's history: (seq, event name, event JSON).
    #[track_caller]
    pub fn history(&self, job: &str) -> Vec<Event> {
        let audit = self.replay(job);
        audit["timeline"]
            .as_array()
            .expect("a timeline")
            .iter()
            .map(|entry| Event {
                seq: entry["envelope"]["seq"].as_u64().unwrap_or(0),
                name: entry["name"].as_str().unwrap_or_default().to_string(),
                body: entry["envelope"]["event"].clone(),
                summary: entry["summary"].as_str().unwrap_or_default().to_string(),
            })
            .collect()
    }

    /// `GET /v1/health` on its API, from inside its host (bash's /dev/tcp: no tool needed).
    #[track_caller]
    pub fn health(&self) -> Value {
        let token = fs::read_to_string(self.data_dir.join("token")).unwrap();
        let script = format!(
            "exec 3<>/dev/tcp/127.0.0.1/{API_PORT} || exit 9\n\
             printf 'GET /v1/health HTTP/1.1\\r\\nHost: 127.0.0.1\\r\\nAuthorization: Bearer %s\\r\\nConnection: close\\r\\n\\r\\n' \"$TOKEN\" >&3\n\
             timeout 10 cat <&3"
        );
        let mut command = self.hosts.command(self.side, "bash");
        command.args(["-c", &script]).env("TOKEN", token.trim());
        let out = run(&mut command).ok();
        let body = out.stdout.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or_default();
        assert!(out.stdout.starts_with("HTTP/1.1 200"), "GET /v1/health: {}", out.stdout);
        serde_json::from_str(body).unwrap_or_else(|e| panic!("health is not JSON ({e}): {body}"))
    }

    /// Polls `job show` until `done` holds, or panics after `timeout` with the last document.
    #[track_caller]
    pub fn wait_for(
        &self,
        job: &str,
        what: &str,
        timeout: Duration,
        mut done: impl FnMut(&Value) -> bool,
    ) -> Value {
        let started = Instant::now();
        loop {
            let doc = self.show(job);
            if done(&doc) {
                return doc;
            }
            assert!(
                started.elapsed() < timeout,
                "timed out after {} s waiting for {what}; job show: {}\n--- {:?} daemon log ---\n{}",
                timeout.as_secs(),
                serde_json::to_string_pretty(&doc).unwrap_or_default(),
                self.side,
                self.log_tail()
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// Waits until the job is in `state`.
    #[track_caller]
    pub fn wait_state(&self, job: &str, state: &str, timeout: Duration) -> Value {
        self.wait_for(job, &format!("{job} to be {state}"), timeout, |d| d["state"] == state)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// One event of a job's history.
#[derive(Clone, Debug)]
pub struct Event {
    /// Its sequence number.
    pub seq: u64,
    /// Its name ("MirrorStarted").
    pub name: String,
    /// The event as stored (`{"MirrorStarted": {"mirror": {…}}}`).
    pub body: Value,
    /// The audit's one-line summary.
    pub summary: String,
}

impl Event {
    /// The event's fields (the value under its name).
    pub fn fields(&self) -> &Value {
        &self.body[self.name.as_str()]
    }
}

/// A readable list of events, for messages.
pub fn describe(events: &[Event]) -> String {
    events
        .iter()
        .map(|e| format!("  {:>4} {} {}", e.seq, e.name, e.summary))
        .collect::<Vec<_>>()
        .join("\n")
}

/// A job's connection id, if connected.
pub fn connection(doc: &Value) -> Option<u64> {
    doc["connection_id"].as_u64()
}

/// A number field of `job show --json`.
pub fn number(doc: &Value, field: &str) -> u64 {
    doc[field].as_u64().unwrap_or(0)
}

/// A shared secret file: 32 random bytes, base64.
pub fn write_secret(path: &Path, seed: u64) {
    let bytes = random_bytes(seed ^ u64::from(std::process::id()) ^ now_nanos(), 32);
    fs::write(path, format!("{}\n", base64(&bytes))).unwrap();
}

fn now_nanos() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos() & u128::from(u64::MAX)).unwrap_or(0))
}

fn base64(bytes: &[u8]) -> String {
    const TABLE: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(TABLE[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

// ----------------------------------------------------------------------------------------------
// Trees

/// Incompressible bytes from a seed (xorshift64*).
pub fn random_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        out.extend_from_slice(&state.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Writes a file, creating its folders.
pub fn write(path: &Path, bytes: &[u8]) {
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).unwrap();
    }
    fs::write(path, bytes).unwrap();
}

/// A source tree: `files` incompressible files of `file_size` bytes in nested folders, plus an
/// empty file, an empty folder, a symlink to a file and a symlink to a folder. Returns the
/// file bytes.
pub fn make_tree(root: &Path, files: usize, file_size: usize, seed: u64) -> u64 {
    fs::create_dir_all(root).unwrap();
    let mut total = 0;
    for i in 0..files {
        let path = root.join(format!("d{}/s{}/f{i:04}.bin", i % 5, i % 3));
        write(&path, &random_bytes(seed.wrapping_add(i as u64), file_size));
        total += file_size as u64;
    }
    write(&root.join("empty.txt"), b"");
    write(&root.join("notes/readme.txt"), b"a small text file\n");
    fs::create_dir_all(root.join("empty-folder")).unwrap();
    std::os::unix::fs::symlink("notes/readme.txt", root.join("link-to-file")).unwrap();
    std::os::unix::fs::symlink("notes", root.join("link-to-folder")).unwrap();
    total
}

/// What a path is.
#[derive(Debug, PartialEq, Eq)]
enum Kind {
    File(u64),
    Dir,
    Symlink(PathBuf),
    Other,
}

fn walk(root: &Path) -> BTreeMap<PathBuf, Kind> {
    let mut out = BTreeMap::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(relative) = stack.pop() {
        let Ok(entries) = fs::read_dir(root.join(&relative)) else { continue };
        for entry in entries.flatten() {
            let path = relative.join(entry.file_name());
            let Ok(meta) = fs::symlink_metadata(root.join(&path)) else { continue };
            let kind = if meta.file_type().is_symlink() {
                Kind::Symlink(fs::read_link(root.join(&path)).unwrap_or_default())
            } else if meta.is_dir() {
                stack.push(path.clone());
                Kind::Dir
            } else if meta.is_file() {
                Kind::File(meta.len())
            } else {
                Kind::Other
            };
            out.insert(path, kind);
        }
    }
    out
}

fn same_bytes(a: &Path, b: &Path) -> bool {
    let (Ok(mut a), Ok(mut b)) = (fs::File::open(a), fs::File::open(b)) else { return false };
    let (mut x, mut y) = (vec![0u8; 1 << 20], vec![0u8; 1 << 20]);
    loop {
        let n = read_full(&mut a, &mut x);
        let m = read_full(&mut b, &mut y);
        if n != m || x[..n] != y[..m] {
            return false;
        }
        if n == 0 {
            return true;
        }
    }
}

fn read_full(file: &mut fs::File, buffer: &mut [u8]) -> usize {
    let mut filled = 0;
    while filled < buffer.len() {
        match file.read(&mut buffer[filled..]) {
            Ok(0) | Err(_) => break,
            Ok(n) => filled += n,
        }
    }
    filled
}

/// Compares two trees: the same names, kinds, file bytes and symlink targets.
pub fn compare_trees(source: &Path, target: &Path) -> Result<(), String> {
    let (a, b) = (walk(source), walk(target));
    let mut differences = Vec::new();
    for (path, kind) in &a {
        match b.get(path) {
            None => differences.push(format!("missing on the target: {}", path.display())),
            Some(other) if other != kind => differences.push(format!(
                "{}: {kind:?} on the source, {other:?} on the target",
                path.display()
            )),
            Some(Kind::File(_)) => {
                if !same_bytes(&source.join(path), &target.join(path)) {
                    differences.push(format!("{}: the bytes differ", path.display()));
                }
            }
            Some(_) => {}
        }
    }
    for path in b.keys().filter(|p| !a.contains_key(*p)) {
        differences.push(format!("only on the target: {}", path.display()));
    }
    if differences.is_empty() {
        Ok(())
    } else {
        let count = differences.len();
        differences.truncate(12);
        Err(format!("{count} differences, first: {}", differences.join("; ")))
    }
}

/// Polls until the target equals the source; returns how long it took. Panics after `timeout`.
#[track_caller]
pub fn wait_equal(source: &Path, target: &Path, timeout: Duration, daemon: &Daemon) -> Duration {
    let started = Instant::now();
    loop {
        match compare_trees(source, target) {
            Ok(()) => return started.elapsed(),
            Err(why) if started.elapsed() > timeout => panic!(
                "the target did not converge to the source within {} s: {why}\n--- {:?} daemon log ---\n{}",
                timeout.as_secs(),
                daemon.side,
                daemon.log_tail()
            ),
            Err(_) => std::thread::sleep(Duration::from_millis(300)),
        }
    }
}

/// The bytes of the regular files under a folder.
pub fn tree_bytes(root: &Path) -> u64 {
    walk(root).values().map(|k| if let Kind::File(n) = k { *n } else { 0 }).sum()
}

// ----------------------------------------------------------------------------------------------
// A continuous writer

/// What a writer did.
#[derive(Debug, Default, Clone, Copy)]
pub struct Written {
    /// Changes made.
    pub changes: u64,
    /// File bytes written.
    pub bytes: u64,
}

/// A thread that keeps changing files under a folder: rewrites, appends, creations, renames
/// and deletions, one every `every`.
pub struct Writer {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<Written>>,
    /// Bytes written so far.
    pub bytes: Arc<AtomicU64>,
}

impl Writer {
    /// Starts writing under `dir` (created), files of up to `max_size` bytes.
    pub fn start(dir: &Path, every: Duration, max_size: usize, seed: u64) -> Writer {
        fs::create_dir_all(dir).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let bytes = Arc::new(AtomicU64::new(0));
        let (dir, flag, counter) = (dir.to_path_buf(), Arc::clone(&stop), Arc::clone(&bytes));
        let handle = std::thread::spawn(move || {
            let mut written = Written::default();
            let mut i: u64 = 0;
            while !flag.load(Ordering::Relaxed) {
                i += 1;
                let r = random_bytes(seed ^ i, 8);
                let pick = u64::from_le_bytes(r.try_into().unwrap());
                let size = (pick as usize % max_size.max(2)).max(1);
                let data = random_bytes(seed.wrapping_add(i * 7919), size);
                match i % 6 {
                    0 | 1 => write(&dir.join(format!("hot/w{}.bin", pick % 24)), &data),
                    2 => {
                        let mut f = fs::OpenOptions::new()
                            .create(true)
                            .append(true)
                            .open(dir.join("journal.log"))
                            .unwrap();
                        f.write_all(&data[..size.min(4096)]).unwrap();
                    }
                    3 => write(&dir.join(format!("new/n{i}.bin")), &data),
                    4 => {
                        let _ = fs::rename(
                            dir.join(format!("new/n{}.bin", i - 1)),
                            dir.join(format!("moved/m{i}.bin")),
                        )
                        .or_else(|_| {
                            fs::create_dir_all(dir.join("moved"))?;
                            fs::rename(
                                dir.join(format!("new/n{}.bin", i - 1)),
                                dir.join(format!("moved/m{i}.bin")),
                            )
                        });
                    }
                    _ => {
                        let _ = fs::remove_file(dir.join(format!("moved/m{}.bin", i - 13)));
                    }
                }
                written.changes += 1;
                written.bytes += size as u64;
                counter.fetch_add(size as u64, Ordering::Relaxed);
                std::thread::sleep(every);
            }
            written
        });
        Writer { stop, handle: Some(handle), bytes }
    }

    /// Stops writing; returns what was done.
    pub fn stop(&mut self) -> Written {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.take().map(|h| h.join().unwrap()).unwrap_or_default()
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(handle) = self.handle.take() {
            let _ = handle.join();
        }
    }
}

// ----------------------------------------------------------------------------------------------
// Per-test folders

/// A test's folders: source tree, target root, both data directories, the secret.
pub struct Dirs {
    /// The temporary directory (removed on drop unless `UNDERSTUDY_KEEP_TEST_DIRS` is set).
    pub tmp: tempfile::TempDir,
    /// The source tree.
    pub source: PathBuf,
    /// The replica's root on the target host.
    pub target: PathBuf,
    /// The source daemon's data directory.
    pub src_data: PathBuf,
    /// The target daemon's data directory.
    pub tgt_data: PathBuf,
    /// The shared secret.
    pub secret: PathBuf,
}

impl Dirs {
    /// New folders for a test.
    pub fn new(label: &str) -> Dirs {
        let keep = std::env::var_os("UNDERSTUDY_KEEP_TEST_DIRS").is_some();
        let tmp = tempfile::Builder::new()
            .prefix(&format!("understudy-net-{label}-"))
            .disable_cleanup(keep)
            .tempdir()
            .unwrap();
        if keep {
            println!("keeping {}", tmp.path().display());
        }
        let root = tmp.path().to_path_buf();
        let dirs = Dirs {
            source: root.join("source"),
            target: root.join("replica"),
            src_data: root.join("src-data"),
            tgt_data: root.join("tgt-data"),
            secret: root.join("secret"),
            tmp,
        };
        fs::create_dir_all(&dirs.source).unwrap();
        fs::create_dir_all(&dirs.target).unwrap();
        write_secret(&dirs.secret, 1);
        dirs
    }

    /// The `--target` of a job: `198.51.100.2:6320:/path/of/the/replica`.
    pub fn target_spec(&self) -> String {
        assert_test_net(TGT_ADDR);
        format!("{TGT_ADDR}:{REPLICATION_PORT}:{}", self.target.display())
    }
}

/// A path as a `&str`.
pub fn s(path: &Path) -> &str {
    path.to_str().expect("UTF-8 path")
}
