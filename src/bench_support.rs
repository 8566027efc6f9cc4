//! What the benchmark commands share: the benchmark tree (`../shared/tools/mktree.py`'s, or the
//! same recipe here), its census, a warm page cache, and a daemon of this binary run as its own
//! process (so its memory and CPU are its own).

use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::client::Client;

/// Files, folders (the root included) and file bytes of a tree.
pub struct Census {
    pub files: u64,
    pub folders: u64,
    pub bytes: u64,
}

impl Census {
    pub fn of(root: &Path) -> Result<Census> {
        let mut census = Census { files: 0, folders: 1, bytes: 0 };
        let mut stack = vec![root.to_path_buf()];
        while let Some(dir) = stack.pop() {
            for entry in
                std::fs::read_dir(&dir).with_context(|| format!("listing {}", dir.display()))?
            {
                let entry = entry?;
                let kind = entry.file_type()?;
                if kind.is_dir() {
                    census.folders += 1;
                    stack.push(entry.path());
                } else if kind.is_file() {
                    census.files += 1;
                    census.bytes += entry.metadata()?.len();
                }
            }
        }
        Ok(census)
    }
}

/// Bytes in GiB, for printing.
pub fn gib(bytes: u64) -> f64 {
    bytes as f64 / (1u64 << 30) as f64
}

/// Makes the benchmark tree: with `../shared/tools/mktree.py` when it and python3 are there,
/// else with the same recipe here. Returns how it was made.
pub fn make_tree(dir: &Path, files: u64, total_mb: u64) -> Result<String> {
    let candidates = [
        PathBuf::from("../shared/tools/mktree.py"),
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/tools/mktree.py"),
    ];
    if let Some(script) = candidates.iter().find(|c| c.is_file()) {
        let started = Instant::now();
        let status = Command::new("python3")
            .arg(script)
            .arg(dir)
            .arg("--files")
            .arg(files.to_string())
            .arg("--total-mb")
            .arg(total_mb.to_string())
            .stdout(Stdio::null())
            .status();
        match status {
            Ok(status) if status.success() => {
                return Ok(format!(
                    "{} --files {files} --total-mb {total_mb} ({:.0} s)",
                    script.display(),
                    started.elapsed().as_secs_f64()
                ));
            }
            Ok(status) => eprintln!("{} failed ({status}); making the tree here", script.display()),
            Err(error) => eprintln!("cannot run python3 ({error}); making the tree here"),
        }
        if dir.exists() {
            std::fs::remove_dir_all(dir)?;
        }
    }
    generate_tree(dir, files, total_mb)?;
    Ok(format!("the built-in generator (mktree.py's recipe), {files} files, {total_mb} MiB"))
}

/// A seeded generator (splitmix64): the same tree (and the same churn) on every run.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    pub fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// `n` incompressible bytes.
    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        let mut chunk = Vec::with_capacity(n + 8);
        while chunk.len() < n {
            chunk.extend_from_slice(&self.next().to_le_bytes());
        }
        chunk.truncate(n);
        chunk
    }
}

/// mktree.py's recipe: Pareto (α = 1.1) sizes scaled to the total, up to four levels of
/// folders with spaces and non-ASCII names, each 1 MiB chunk either text or random bytes.
fn generate_tree(root: &Path, files: u64, total_mb: u64) -> Result<()> {
    let mut rng = Rng(7);
    let weights: Vec<f64> =
        (0..files).map(|_| (1.0 - rng.unit()).max(1e-12).powf(-1.0 / 1.1)).collect();
    let scale = (total_mb * 1024 * 1024) as f64 / weights.iter().sum::<f64>();
    let names = ["alpha", "beta", "gamma delta", "données", "журнал", "logs", "db", "img"];
    let text = b"The quick brown fox jumps over the lazy dog. ".repeat(100);
    std::fs::create_dir_all(root)?;
    for (i, weight) in weights.iter().enumerate() {
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)] // a size
        let size = (weight * scale) as u64;
        let mut dir = root.to_path_buf();
        for _ in 0..rng.next() % 5 {
            let name = names[usize::try_from(rng.next() % 8).unwrap_or(0)];
            dir.push(format!("{name}{}", rng.next() % 10));
        }
        std::fs::create_dir_all(&dir)?;
        let mut file =
            std::io::BufWriter::new(std::fs::File::create(dir.join(format!("file {i:06}.dat")))?);
        let mut left = size;
        while left > 0 {
            let n = usize::try_from(left.min(1 << 20)).unwrap_or(1 << 20);
            if rng.unit() < 0.5 {
                let chunk: Vec<u8> = text.iter().cycle().take(n).copied().collect();
                file.write_all(&chunk)?;
            } else {
                file.write_all(&rng.bytes(n))?;
            }
            left -= n as u64;
        }
        file.flush()?;
    }
    Ok(())
}

/// Every file of the tree, sorted.
pub fn walk(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d)? {
            let entry = entry?;
            let path = entry.path();
            if entry.file_type()?.is_dir() {
                stack.push(path);
            } else {
                out.push(path);
            }
        }
    }
    out.sort();
    Ok(out)
}

/// Reads every file once, so every measurement starts from the same warm page cache.
pub fn warm(root: &Path) -> Result<()> {
    time_plain_read(root).map(|_| ())
}

/// Every file read through a 1 MiB buffer, one after the other; seconds.
pub fn time_plain_read(root: &Path) -> Result<f64> {
    let started = Instant::now();
    let mut buffer = vec![0u8; 1 << 20];
    for path in walk(root)? {
        if path.is_file() {
            let mut file = std::fs::File::open(&path)?;
            while file.read(&mut buffer)? > 0 {}
        }
    }
    Ok(started.elapsed().as_secs_f64())
}

/// Writes back dirty pages so each measurement starts from the same clean page cache
/// (otherwise one tool pays for the other's writeback).
pub fn settle() {
    let _ = Command::new("sync").status();
}

/// A free port on loopback (the OS's choice).
pub fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// A daemon of this binary on loopback, killed when dropped; its log is `DATA_DIR.log`.
pub struct BenchDaemon {
    pub child: Child,
    pub client: Client,
}

impl BenchDaemon {
    /// Starts `understudy serve` on `data_dir` and waits until its API answers.
    pub fn start(data_dir: &Path) -> Result<BenchDaemon> {
        let (listen, api) = (free_port()?, free_port()?);
        std::fs::create_dir_all(data_dir)?;
        let log_path = data_dir.with_extension("log");
        let child = Command::new(std::env::current_exe()?)
            .arg("serve")
            .arg("--data-dir")
            .arg(data_dir)
            .arg("--listen")
            .arg(format!("127.0.0.1:{listen}"))
            .arg("--api")
            .arg(format!("127.0.0.1:{api}"))
            .env(
                "RUST_LOG",
                std::env::var("UNDERSTUDY_BENCH_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log_path)?)
            .spawn()
            .context("starting the daemon")?;
        let started = Instant::now();
        loop {
            if let Ok(token) = std::fs::read_to_string(data_dir.join("token"))
                && std::net::TcpStream::connect(("127.0.0.1", api)).is_ok()
            {
                let client =
                    Client::with_token(&format!("127.0.0.1:{api}"), token.trim().to_string());
                return Ok(BenchDaemon { child, client });
            }
            if started.elapsed() > Duration::from_secs(30) {
                let log = std::fs::read_to_string(&log_path).unwrap_or_default();
                bail!("the daemon did not start: {}", log.trim());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for BenchDaemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
