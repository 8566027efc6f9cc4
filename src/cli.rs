//! The command line: arguments and dispatch.

use std::path::PathBuf;

use anyhow::Result;
use clap::{Parser, Subcommand};
use understudy_core::ids::Seq;
use understudy_simulator::SimOptions;

use crate::client::Client;
use crate::{CheckFailed, datadir, replay};

/// understudy: open replication, migration and failover.
#[derive(Debug, Parser)]
#[command(name = "understudy", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

impl Cli {
    /// Whether this command narrates on its own (demo, tdu), so its in-process daemon should
    /// only log what goes wrong.
    pub fn is_quiet(&self) -> bool {
        matches!(self.command, Command::Demo { .. } | Command::Tdu { .. })
    }

    /// Whether this command runs a daemon for longer than a moment.
    pub fn serves(&self) -> bool {
        matches!(self.command, Command::Serve { .. })
    }
}

/// Where the daemon's API is, for the commands that talk to it.
#[derive(Debug, Clone, clap::Args)]
struct ApiArgs {
    /// The daemon's API address.
    #[arg(long, global = true, env = "UNDERSTUDY_API", default_value = "127.0.0.1:6325")]
    api: String,
    /// The daemon's data directory (where its API token is), unless UNDERSTUDY_TOKEN is set.
    #[arg(long, global = true, env = "UNDERSTUDY_DATA_DIR")]
    data_dir: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the engine service: the target engine, the jobs, and the API.
    Serve {
        /// Where the daemon keeps its event log, token, queues and logs.
        #[arg(long, env = "UNDERSTUDY_DATA_DIR")]
        data_dir: Option<PathBuf>,
        /// Where replication connections are accepted.
        #[arg(long, default_value = "127.0.0.1:6320")]
        listen: std::net::SocketAddr,
        /// Where the HTTP/JSON API listens.
        #[arg(long, default_value = "127.0.0.1:6325")]
        api: std::net::SocketAddr,
        /// A shared secret (the same file on both servers of a pair); without it (or TLS) only
        /// loopback peers are accepted.
        #[arg(long)]
        secret_file: Option<PathBuf>,
        /// TLS: the CA certificate both servers trust (from `understudy certs init`).
        #[arg(long, requires_all = ["tls_cert", "tls_key"])]
        tls_ca: Option<PathBuf>,
        /// TLS: this server's certificate.
        #[arg(long, requires_all = ["tls_ca", "tls_key"])]
        tls_cert: Option<PathBuf>,
        /// TLS: this server's private key.
        #[arg(long, requires_all = ["tls_ca", "tls_cert"])]
        tls_key: Option<PathBuf>,
    },
    /// Certificates for TLS between engines.
    Certs {
        #[command(subcommand)]
        command: CertsCommand,
    },
    /// Create, control and watch jobs (through the daemon's API).
    Job {
        #[command(flatten)]
        api: ApiArgs,
        #[command(subcommand)]
        command: crate::jobs::JobCommand,
    },
    /// Stream events as NDJSON, one envelope per line.
    Events {
        #[command(flatten)]
        api: ApiArgs,
        /// Only this job's events (id or unique name).
        #[arg(long)]
        job: Option<String>,
        /// Keep streaming new events as they are committed.
        #[arg(long)]
        follow: bool,
    },
    /// Audit job histories from the event log: timelines, states, hash-chain checks. Works
    /// with no daemon running; while one runs, it asks the daemon (same output).
    Replay {
        /// The data directory of a daemon or a simulation.
        #[arg(long, env = "UNDERSTUDY_DATA_DIR")]
        data_dir: PathBuf,
        /// The daemon's API address, used when the daemon holds the data directory.
        #[arg(long, env = "UNDERSTUDY_API", default_value = "127.0.0.1:6325")]
        api: String,
        /// A job id or unique name; without it, every job is listed with its state.
        job: Option<String>,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
        /// Stop the timeline at this sequence number and show the state there.
        #[arg(long)]
        at: Option<u64>,
    },
    /// Show a whole job's life on this machine: mirror, replication, verification, cutover,
    /// audit — through a real in-process daemon, on a temporary folder.
    Demo {
        /// Keep everything in this folder instead of a temporary one.
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// The Throughput Diagnostics Utility: a real job against a null target tells how long the
    /// mirror takes and what bandwidth replication needs, before you commit.
    Tdu {
        #[command(subcommand)]
        what_if: Option<TduCommand>,
        /// The folder to measure.
        #[arg(long)]
        source: Option<PathBuf>,
        /// Compression to measure with: none, minimum, medium, maximum.
        #[arg(long)]
        compression: Option<crate::jobs::Compression>,
        #[command(flatten)]
        bandwidth: crate::jobs::BandwidthArgs,
        /// After the mirror, watch the source's churn for this long (e.g. 10m, 1h).
        #[arg(long)]
        watch: Option<humantime::Duration>,
        /// Length of one recorded interval of the watch.
        #[arg(long, default_value = "5s")]
        interval: humantime::Duration,
        /// Print JSON.
        #[arg(long)]
        json: bool,
        /// Write the statistics file (CSV, one row per interval).
        #[arg(long)]
        stats: Option<PathBuf>,
        /// Write a chart of the change rate and projected queue (SVG).
        #[arg(long)]
        plot: Option<PathBuf>,
    },
    /// Run the deterministic simulation: real engine and machine, simulated adapters and faults.
    Simulate {
        /// The seed: the same seed always writes the same history.
        #[arg(long)]
        seed: u64,
        /// Jobs alive at once.
        #[arg(long, default_value_t = SimOptions::default().jobs)]
        jobs: usize,
        /// Steps of the safety phase (with faults).
        #[arg(long, default_value_t = SimOptions::default().steps)]
        steps: u64,
        /// Where to write the history (an empty or new directory).
        #[arg(long)]
        data_dir: PathBuf,
    },
    /// Benchmarks that print figures against a peer measured in the same run.
    Bench {
        #[command(subcommand)]
        which: BenchCommand,
    },
}

#[derive(Debug, Subcommand)]
enum CertsCommand {
    /// Make a small CA and a certificate for each server of a pair.
    Init {
        /// Where to write them.
        #[arg(long)]
        dir: PathBuf,
        /// A server: NAME or NAME=IP,IP (repeat for each server).
        #[arg(long = "host", required = true)]
        hosts: Vec<String>,
    },
}

#[derive(Debug, Subcommand)]
enum TduCommand {
    /// "What if": forecast again from a statistics file, for another bandwidth, schedule or
    /// compression, without touching the source.
    Forecast {
        /// The statistics file a `tdu --stats FILE` run wrote.
        #[arg(long)]
        stats: PathBuf,
        /// Compression to forecast for.
        #[arg(long)]
        compression: Option<crate::jobs::Compression>,
        #[command(flatten)]
        bandwidth: crate::jobs::BandwidthArgs,
        /// Print JSON.
        #[arg(long)]
        json: bool,
        /// Write the chart (SVG).
        #[arg(long)]
        plot: Option<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
enum BenchCommand {
    /// A files job against `rsync -a` to an rsync daemon on loopback: initial mirror,
    /// differential remirrors, replication latency, daemon memory.
    Files {
        /// Files in the generated tree.
        #[arg(long, default_value_t = 20_000)]
        files: u64,
        /// Total size of the tree, in MiB.
        #[arg(long, default_value_t = 1024)]
        total_mb: u64,
        /// Replication: files written per second.
        #[arg(long, default_value_t = 500)]
        rate: u64,
        /// Replication: seconds of writing.
        #[arg(long, default_value_t = 30)]
        seconds: u64,
        /// Measure each mirror this many times; the best counts.
        #[arg(long, default_value_t = 2)]
        runs: u32,
        /// Keep the scratch tree here.
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// The TDU: null-target mirror against reading the tree, each compression level's ratio
    /// and CPU cost, and the mirror and replication forecasts against real files jobs at a limit.
    Tdu {
        /// Measure this tree (default: generate one with ../shared/tools/mktree.py's recipe).
        #[arg(long)]
        tree: Option<PathBuf>,
        /// Files in the generated tree.
        #[arg(long, default_value_t = 20_000)]
        files: u64,
        /// Total size of the generated tree, in MiB.
        #[arg(long, default_value_t = 1024)]
        total_mb: u64,
        /// The limit of the mirror forecast's real files job, in MB/s (10^6 bytes per second).
        #[arg(long, default_value_t = 20)]
        limit_mb: u64,
        /// The limit of the replication forecast's real job, in kB/s (10^3 bytes per second);
        /// the recorded churn bursts to 2.5 times it.
        #[arg(long, default_value_t = 1000)]
        replication_limit_kb: u64,
    },
    /// The event log: durable appends per second, replay speed, checkpoints.
    EventLog {
        /// Events in the long job used for replay figures.
        #[arg(long, default_value_t = 1_000_000)]
        events: u64,
        /// Where to put the scratch store (default: a temporary directory).
        #[arg(long)]
        dir: Option<PathBuf>,
    },
}

/// Runs the command line.
///
/// # Errors
///
/// Whatever the command reports; `main` maps it to an exit status.
pub fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Certs { command: CertsCommand::Init { dir, hosts } } => {
            let hosts =
                hosts.iter().map(|h| crate::certs::parse_host(h)).collect::<Result<Vec<_>, _>>()?;
            crate::certs::init(&dir, &hosts)
        }
        Command::Serve { data_dir, listen, api, secret_file, tls_ca, tls_cert, tls_key } => {
            let data_dir = data_dir.unwrap_or_else(datadir::default_data_dir);
            let tls = match (tls_ca, tls_cert, tls_key) {
                (Some(ca), Some(cert), Some(key)) => {
                    Some(understudy_adapters::tls::TlsFiles { cert, key, ca })
                }
                _ => None,
            };
            let options = crate::daemon::ServeOptions { data_dir, listen, api, secret_file, tls };
            runtime()?.block_on(async move {
                let daemon = crate::daemon::Daemon::start(&options).await?;
                eprintln!(
                    "understudy serving: replication on {}, API on {}, data in {}",
                    daemon.listen_addr,
                    daemon.api_addr,
                    options.data_dir.display()
                );
                daemon.run_until_signal().await
            })
        }
        Command::Job { api, command } => {
            let client = Client::new(&api.api, api.data_dir.as_deref())?;
            runtime()?.block_on(crate::jobs::run(&client, command))
        }
        Command::Events { api, job, follow } => {
            let client = Client::new(&api.api, api.data_dir.as_deref())?;
            runtime()?.block_on(crate::jobs::events(&client, job.as_deref(), follow))
        }
        Command::Replay { data_dir, api, job, json, at } => {
            replay_command(&data_dir, &api, job.as_deref(), json, at.map(Seq))
        }
        Command::Demo { dir } => runtime()?.block_on(crate::demo::demo(dir)),
        Command::Tdu {
            what_if: Some(TduCommand::Forecast { stats, compression, bandwidth, json, plot }),
            ..
        } => {
            let limit = crate::jobs::bandwidth_limit(&bandwidth)?;
            crate::tdu::forecast(&stats, compression.map(Into::into), limit, json, &plot)
        }
        Command::Tdu {
            what_if: None,
            source,
            compression,
            bandwidth,
            watch,
            interval,
            json,
            stats,
            plot,
        } => {
            let source = source.ok_or_else(|| {
                crate::UserError("give the folder to measure: --source DIR".into())
            })?;
            let run = crate::tdu::TduRun {
                source,
                compression: compression
                    .map_or(understudy_core::spec::CompressionLevel::None, Into::into),
                limit: crate::jobs::bandwidth_limit(&bandwidth)?
                    .unwrap_or(understudy_core::spec::BandwidthLimit::Unlimited),
                watch: watch.map(Into::into),
                interval: interval.into(),
                json,
                stats,
                plot,
            };
            runtime()?.block_on(crate::tdu::run(run))
        }
        Command::Simulate { seed, jobs, steps, data_dir } => {
            let options = SimOptions { seed, jobs, steps, ..SimOptions::default() };
            crate::simulate::simulate(&options, &data_dir)
        }
        Command::Bench {
            which: BenchCommand::Files { files, total_mb, rate, seconds, runs, dir },
        } => {
            let options =
                crate::bench_files::FilesBench { files, total_mb, rate, seconds, dir, runs };
            runtime()?.block_on(crate::bench_files::run(options))
        }
        Command::Bench {
            which: BenchCommand::Tdu { tree, files, total_mb, limit_mb, replication_limit_kb },
        } => crate::bench_tdu::run(&crate::bench_tdu::TduBench {
            tree,
            files,
            total_mb,
            limit_mb,
            replication_limit_kb,
        }),
        Command::Bench { which: BenchCommand::EventLog { events, dir } } => {
            crate::bench::event_log(events, dir)
        }
    }
}

fn replay_command(
    data_dir: &std::path::Path,
    api: &str,
    job: Option<&str>,
    json: bool,
    at: Option<Seq>,
) -> Result<()> {
    let (jobs, audit) = match datadir::open_existing(data_dir) {
        Ok(store) => {
            let jobs = replay::list_jobs(&store)?;
            let audit = match job {
                Some(wanted) => {
                    Some(replay::audit_job(&store, replay::resolve_job(&jobs, wanted)?, at)?)
                }
                None => None,
            };
            (jobs, audit)
        }
        Err(error) if datadir::is_locked(&error) => {
            // A daemon holds the log: ask it; it runs the same audit.
            let client = Client::new(api, Some(data_dir))?;
            runtime()?.block_on(async {
                let jobs: Vec<replay::JobSummary> =
                    serde_json::from_value(client.get("/v1/replay").await?)?;
                let audit = match job {
                    Some(wanted) => {
                        let id = replay::resolve_job(&jobs, wanted)?;
                        let path = match at {
                            Some(seq) => format!("/v1/jobs/{id}/replay?at={}", seq.0),
                            None => format!("/v1/jobs/{id}/replay"),
                        };
                        Some(serde_json::from_value::<replay::Audit>(client.get(&path).await?)?)
                    }
                    None => None,
                };
                Ok::<_, anyhow::Error>((jobs, audit))
            })?
        }
        Err(error) => return Err(error),
    };
    match audit {
        None => {
            if json {
                println!("{}", serde_json::to_string_pretty(&jobs)?);
            } else {
                print!("{}", replay::render_list(&jobs));
            }
            match jobs.iter().find_map(|j| j.corrupt.clone()) {
                Some(why) => Err(CheckFailed(why).into()),
                None => Ok(()),
            }
        }
        Some(audit) => {
            if json {
                println!("{}", serde_json::to_string_pretty(&audit)?);
            } else {
                print!("{}", replay::render(&audit));
            }
            match audit.corrupt {
                Some(why) => Err(CheckFailed(why).into()),
                None => Ok(()),
            }
        }
    }
}

/// The runtime of the daemon and the API client.
pub fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread().enable_all().build()?)
}
