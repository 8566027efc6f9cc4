//! `understudy`: the daemon, the command-line interface, and the offline tools (audit replay,
//! deterministic simulation, benchmarks) of the understudy replication engine.
//!
//! This is the only crate that picks a runtime, opens the sled store and wires real adapters.
//! Exit status: 0 ok, 1 a job or a check failed, 2 an error (bad input, unreachable daemon).

mod bench;
mod bench_files;
mod bench_support;
mod bench_tdu;
mod certs;
mod cli;
mod client;
mod daemon;
mod datadir;
mod demo;
mod jobs;
mod replay;
mod simulate;
mod tdu;

use std::fmt;
use std::process::ExitCode;

use clap::Parser;

/// An error the user can fix: printed as one line, exit status 2.
#[derive(Debug)]
pub struct UserError(pub String);

impl fmt::Display for UserError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UserError {}

/// A check that failed (a corrupt history, a failed simulation): exit status 1.
#[derive(Debug)]
pub struct CheckFailed(pub String);

impl fmt::Display for CheckFailed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for CheckFailed {}

fn main() -> ExitCode {
    let args = cli::Cli::parse();
    if args.serves() {
        limit_malloc_arenas();
    }
    // Logs go to stderr; RUST_LOG chooses how much (the daemon says what it does at info).
    // The demo narrates on stdout; its daemon only speaks up when something is wrong.
    let default =
        if args.is_quiet() { "warn" } else { "warn,understudy=info,understudy_adapters=info" };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
    match cli::run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            if let Some(failed) = error.downcast_ref::<CheckFailed>() {
                eprintln!("understudy: {failed}");
                return ExitCode::from(1);
            }
            if let Some(user) = error.downcast_ref::<UserError>() {
                eprintln!("understudy: {user}");
            } else {
                // Errors with context print their chain on one line: "what: because: because".
                eprintln!("understudy: {error:#}");
            }
            ExitCode::from(2)
        }
    }
}

/// glibc's malloc gives threads arenas of their own, up to eight per core, and each keeps what
/// was freed in it: the daemon's resident memory crept up with every mirror (8-10 MB per
/// remirror of a 20,000-file tree, its heap in use unchanged), but stayed flat with at most as
/// many arenas as cores. glibc reads that limit from the environment when a process starts, and
/// this crate has no unsafe code to call `mallopt`: so the daemon replaces itself once with the
/// limit set (exec: the same process id, arguments and everything else). Scripts the daemon
/// runs inherit the variable, which changes nothing but their allocator's arenas.
fn limit_malloc_arenas() {
    use std::os::unix::process::CommandExt as _;
    const VARIABLE: &str = "MALLOC_ARENA_MAX";
    if std::env::var_os(VARIABLE).is_some() {
        return;
    }
    let Ok(exe) = std::env::current_exe() else { return };
    let cores = std::thread::available_parallelism().map_or(2, std::num::NonZeroUsize::get);
    let error = std::process::Command::new(exe)
        .args(std::env::args_os().skip(1))
        .env(VARIABLE, cores.max(2).to_string())
        .exec();
    // Only a failed exec returns: go on with the default arenas.
    eprintln!("understudy: could not limit malloc arenas ({error}); going on without");
}
