//! The command line: arguments and dispatch.

use std::path::PathBuf;

use anyhow::Result;
use clap::{Parser, Subcommand};
use understudy_core::ids::Seq;
use understudy_simulator::SimOptions;

use crate::{CheckFailed, datadir, replay};

/// understudy: open replication, migration and failover.
#[derive(Debug, Parser)]
#[command(name = "understudy", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
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
        /// A shared secret (the same file on both servers of a pair); without it only loopback
        /// peers are accepted.
        #[arg(long)]
        secret_file: Option<PathBuf>,
    },
    /// Audit job histories from the event log: timelines, states, hash-chain checks.
    Replay {
        /// The data directory of a daemon or a simulation.
        #[arg(long)]
        data_dir: PathBuf,
        /// A job id or unique name; without it, every job is listed with its state.
        job: Option<String>,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
        /// Stop the timeline at this sequence number and show the state there.
        #[arg(long)]
        at: Option<u64>,
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
enum BenchCommand {
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
        Command::Serve { data_dir, listen, api, secret_file } => {
            let data_dir = data_dir.unwrap_or_else(datadir::default_data_dir);
            let options = crate::daemon::ServeOptions { data_dir, listen, api, secret_file };
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
        Command::Replay { data_dir, job, json, at } => {
            replay_command(&data_dir, job.as_deref(), json, at.map(Seq))
        }
        Command::Simulate { seed, jobs, steps, data_dir } => {
            let options = SimOptions { seed, jobs, steps, ..SimOptions::default() };
            crate::simulate::simulate(&options, &data_dir)
        }
        Command::Bench { which: BenchCommand::EventLog { events, dir } } => {
            crate::bench::event_log(events, dir)
        }
    }
}

fn replay_command(
    data_dir: &std::path::Path,
    job: Option<&str>,
    json: bool,
    at: Option<Seq>,
) -> Result<()> {
    let store = datadir::open_existing(data_dir)?;
    let jobs = replay::list_jobs(&store)?;
    let Some(wanted) = job else {
        if json {
            println!("{}", serde_json::to_string_pretty(&jobs)?);
        } else {
            print!("{}", replay::render_list(&jobs));
        }
        return match jobs.iter().find_map(|j| j.corrupt.clone()) {
            Some(why) => Err(CheckFailed(why).into()),
            None => Ok(()),
        };
    };
    let id = replay::resolve_job(&jobs, wanted)?;
    let audit = replay::audit_job(&store, id, at)?;
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

/// The runtime of the daemon and the API client.
pub fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread().enable_all().build()?)
}
