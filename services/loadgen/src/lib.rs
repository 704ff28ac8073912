//! # learntrail-bench
//!
//! The load generator behind `make bench`. Each benchmark starts the real servers it needs on
//! free ports (nats-server with JetStream, ...) and the service's release binary as its own
//! process, drives it over loopback, and prints its figures next to the targets.
//!
//! - [`tracking`]: tracking-api single and batch paths vs the raw JetStream publish-with-ack rate
//!   and vs the HTTP ceiling ([`ceiling`]), with a CPU profile of tracking-api under load;
//! - [`shim`]: the latency shim-agent adds to a Ruby run;
//! - [`archive`]: s3-rotator's end-to-end archive rate to S3;
//! - [`analytics`]: analytics-query's projection rate into Redis, summary and Keen count latency;
//! - [`keen`]: keen-forwarder's delivery rate to a local Keen double and to a webhook;
//! - [`eagle`]: eagle-pinger's polls/s at a 6 s cadence against fake-eagle, drift p99, CPU;
//! - [`notebooks`]: notebook-scanner's first scan, rescan and save-to-event latency;
//! - [`ws`]: ws-gateway's idle sockets held open (memory each) and acked lab logs/s.

pub mod analytics;
pub mod archive;
pub mod ceiling;
pub mod eagle;
pub mod harness;
pub mod keen;
pub mod notebooks;
pub mod report;
pub mod shim;
pub mod tracking;
pub mod ws;

use std::{path::PathBuf, time::Duration};

use learntrail_runtime::units::parse_duration;

/// learntrail-bench: benchmarks of Learntrail's services on this machine.
#[derive(Debug, clap::Parser)]
#[command(name = "learntrail-bench", version, about)]
pub struct Bench {
    #[command(subcommand)]
    pub which: Which,
    /// Directory holding the services' release binaries
    #[arg(long, global = true, default_value = "target/release")]
    pub bin_dir: PathBuf,
    /// How long each measured phase runs
    #[arg(long, global = true, default_value = "10s", value_parser = parse_duration)]
    pub duration: Duration,
}

#[derive(Debug, clap::Subcommand)]
pub enum Which {
    /// tracking-api: single and batch events/s and latency, and the raw JetStream rate
    Tracking(tracking::Args),
    /// shim-agent: latency added to `ruby -e 'warn 1'`
    Shim(shim::Args),
    /// s3-rotator: events/s archived end to end to S3
    Archive(archive::Args),
    /// eagle-pinger: meters polled at a 6 s cadence against fake-eagle, drift p99, CPU
    Eagle(eagle::Args),
    /// notebook-scanner: first scan MB/s and files/s, rescan time, save-to-event latency
    Notebooks(notebooks::Args),
    /// keen-forwarder: events/s delivered to a local Keen double and to a webhook
    Keen(keen::Args),
    /// analytics-query: events/s projected into Redis, summary and Keen count latency
    Analytics(analytics::Args),
    /// ws-gateway: idle sockets held (memory each), acked log messages/s and latency
    Ws(ws::Args),
    /// Every benchmark, one after the other
    All,
    /// (internal) serve the HTTP ceiling endpoint on ADDR
    #[command(hide = true)]
    Ceiling { addr: String },
}

pub async fn run(bench: Bench) -> anyhow::Result<()> {
    match &bench.which {
        Which::Tracking(args) => tracking::run(&bench, args).await,
        Which::Shim(args) => shim::run(&bench, args),
        Which::Archive(args) => archive::run(&bench, args).await,
        Which::Analytics(args) => analytics::run(&bench, args).await,
        Which::Eagle(args) => eagle::run(&bench, args).await,
        Which::Notebooks(args) => notebooks::run(&bench, args).await,
        Which::Keen(args) => keen::run(&bench, args).await,
        Which::Ws(args) => ws::run(&bench, args).await,
        Which::Ceiling { addr } => ceiling::serve(addr).await,
        Which::All => {
            tracking::run(&bench, &tracking::Args::default()).await?;
            shim::run(&bench, &shim::Args::default())?;
            archive::run(&bench, &archive::Args::default()).await?;
            analytics::run(&bench, &analytics::Args::default()).await?;
            keen::run(&bench, &keen::Args::default()).await?;
            eagle::run(&bench, &eagle::Args::default()).await?;
            notebooks::run(&bench, &notebooks::Args::default()).await?;
            ws::run(&bench, &ws::Args::default()).await
        }
    }
}
