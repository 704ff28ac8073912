//! learntrail-admin: operator commands. `provision` is the one owner of the streams: it creates
//! `EVENTS` and `DEADLETTER` or brings them to the configured settings, and reports drift.
//! Services only create a missing stream and never change one.

use clap::{Parser, Subcommand};
use learntrail_runtime::{
    bus::{Bus, NatsArgs, StreamArgs, StreamState},
    cli,
    telemetry::{self, LogArgs},
};

/// Learntrail operator commands
#[derive(Debug, Parser)]
#[command(name = "learntrail-admin", version, about)]
struct Args {
    #[command(subcommand)]
    command: Command,
    #[command(flatten)]
    nats: NatsArgs,
    #[command(flatten)]
    log: LogArgs,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create the streams, or update them to the settings given (flags or environment);
    /// prints each stream's state and every setting that differed
    Provision {
        /// Only report: change nothing, exit 1 when a stream is missing or differs
        #[arg(long)]
        check: bool,
        #[command(flatten)]
        streams: StreamArgs,
    },
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::process::ExitCode {
    let args: Args = cli::parse();
    telemetry::init(&args.log);
    cli::exit(run(args).await)
}

async fn run(args: Args) -> anyhow::Result<()> {
    let Command::Provision { check, streams } = args.command;
    let bus = Bus::connect(&args.nats, "learntrail-admin", true).await?;
    let reports = bus.reconcile(&streams, !check).await?;
    let mut out = String::new();
    for report in &reports {
        let state = match report.state {
            StreamState::Missing => "missing",
            StreamState::Created => "created",
            StreamState::Unchanged => "unchanged",
            StreamState::Drifted => "differs",
            StreamState::Updated => "updated",
        };
        out.push_str(&format!("{}: {state}\n", report.name));
        for drift in &report.drift {
            out.push_str(&format!("  {drift}\n"));
        }
    }
    cli::print(&out);
    bus.close(std::time::Duration::from_secs(2)).await;
    let out_of_date = reports
        .iter()
        .any(|r| matches!(r.state, StreamState::Missing | StreamState::Drifted));
    if check && out_of_date {
        anyhow::bail!("streams differ from the settings (run without --check to apply)");
    }
    Ok(())
}
