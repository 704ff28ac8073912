//! The agent's own commands (when run as `shim-agent`): upload, daemon, install, uninstall,
//! status.

use std::{path::PathBuf, time::Duration};

use clap::{Parser, Subcommand};
use learntrail_runtime::{
    bus::NatsArgs,
    cli as runtime_cli, shutdown,
    telemetry::{self, LogArgs},
    units::{parse_bytes, parse_duration},
};

use crate::{
    install::{self, Layout},
    meta,
    settings::{self, Settings, keys},
    shim,
    spool::Spool,
    upload,
};

/// shim-agent: captures every run of Ruby on a lab machine and ships the captures to Learntrail.
///
/// Installed as links named `ruby`, `irb`, `rake` (see `install`) in a directory ahead of the real
/// interpreter in PATH, it acts as that program: the run is unchanged for the student, while
/// stderr (up to STDERR_CAPTURE_BYTES) and the run's metadata are written to the spool.
/// `upload` (every 10 minutes from launchd/systemd) or `daemon` ships the spool to NATS.
///
/// Settings come from the environment, else from ~/.config/learntrail/shim.env, else
/// /etc/learntrail/shim.env (KEY=VALUE lines): REAL_RUBY, SPOOL_DIR, SPOOL_MAX_BYTES,
/// STDERR_CAPTURE_BYTES, PSEUDONYM_KEY, SHIM_PROGRAMS, NATS_URL and the other NATS_* settings.
#[derive(Debug, Parser)]
#[command(name = "shim-agent", version, verbatim_doc_comment)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    /// Spool directory [default: ~/.learntrail/spool]
    #[arg(long, env = "SPOOL_DIR", global = true)]
    pub spool_dir: Option<PathBuf>,
    /// Spool quota; over it the oldest records are dropped (and counted)
    #[arg(long, env = "SPOOL_MAX_BYTES", default_value = "100MiB", value_parser = parse_bytes, global = true)]
    pub spool_max_bytes: u64,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Ship the spool to NATS once; offline, keep it as it is and exit 0
    Upload {
        #[command(flatten)]
        nats: NatsArgs,
    },
    /// Ship the spool continuously, with backoff while NATS is unreachable
    Daemon {
        /// Time between uploads
        #[arg(long, env = "UPLOAD_INTERVAL", default_value = "60s", value_parser = parse_duration)]
        interval: Duration,
        #[command(flatten)]
        nats: NatsArgs,
        #[command(flatten)]
        log: LogArgs,
    },
    /// Put the shim ahead of the real interpreter in PATH (for this account, or with --system for all)
    Install {
        #[command(flatten)]
        scope: Scope,
        /// Programs to shim
        #[arg(long, env = "SHIM_PROGRAMS", value_delimiter = ',', default_value = settings::DEFAULT_PROGRAMS)]
        programs: Vec<String>,
        /// NATS server(s) to write into the settings
        #[arg(long)]
        nats_url: Option<String>,
        /// Deployment key for learner pseudonyms to write into the settings
        #[arg(long)]
        pseudonym_key: Option<String>,
    },
    /// Take the shim out of PATH (settings and spool stay)
    Uninstall {
        #[command(flatten)]
        scope: Scope,
    },
    /// Show the spool, the last upload and the real interpreter
    Status,
}

#[derive(Debug, Clone, clap::Args)]
pub struct Scope {
    /// For this account only (the default)
    #[arg(long, conflicts_with = "system")]
    pub user: bool,
    /// For every account of the machine (run as root)
    #[arg(long)]
    pub system: bool,
}

impl Scope {
    fn layout(&self) -> anyhow::Result<Layout> {
        if self.system {
            return Ok(Layout::system());
        }
        let home = settings::home()
            .ok_or_else(|| anyhow::anyhow!("HOME is not set; use --system or set HOME"))?;
        Ok(Layout::user(&home))
    }
}

/// Runs the CLI; returns the exit status.
pub fn main() -> i32 {
    let settings = Settings::load();
    for (key, value) in settings.file_only() {
        // SAFETY: still single-threaded (no runtime, no threads started yet), so no other
        // thread can read the environment while it changes.
        #[allow(unsafe_code)]
        unsafe {
            std::env::set_var(key, value)
        };
    }
    let cli: Cli = runtime_cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("shim-agent: cannot start: {err}");
            return 1;
        }
    };
    match runtime.block_on(execute(cli, settings)) {
        Ok(()) => 0,
        Err(err) => {
            eprintln!("shim-agent: {err:#}");
            1
        }
    }
}

async fn execute(cli: Cli, settings: Settings) -> anyhow::Result<()> {
    let spool = Spool::new(
        cli.spool_dir
            .clone()
            .unwrap_or_else(settings::default_spool_dir),
        cli.spool_max_bytes,
    );
    match cli.command {
        Command::Upload { nats } => {
            upload::upload_once(&spool, &nats).await?;
        }
        Command::Daemon {
            interval,
            nats,
            log,
        } => {
            telemetry::init(&log);
            tracing::info!(spool = %spool.dir().display(), nats_url = %nats.url, "shim-agent daemon started");
            upload::daemon(&spool, &nats, interval, shutdown::on_signal()).await;
        }
        Command::Install {
            scope,
            programs,
            nats_url,
            pseudonym_key,
        } => {
            let exe = std::env::current_exe()?.canonicalize()?;
            let mut extra = Vec::new();
            extra.extend(nats_url.map(|v| ("NATS_URL".to_string(), v)));
            extra.extend(pseudonym_key.map(|v| (keys::PSEUDONYM_KEY.to_string(), v)));
            let layout = scope.layout()?;
            for line in install::install(&layout, &exe, &programs, &extra)? {
                println!("{line}");
            }
            println!(
                "done: open a new terminal (or `export PATH=\"{}:$PATH\"`) and `ruby` runs are captured",
                layout.bin_dir.display()
            );
        }
        Command::Uninstall { scope } => {
            let exe = std::env::current_exe()?.canonicalize()?;
            for line in install::uninstall(&scope.layout()?, &exe)? {
                println!("{line}");
            }
        }
        Command::Status => status(&spool, &settings),
    }
    Ok(())
}

fn status(spool: &Spool, settings: &Settings) {
    let records = spool.records().unwrap_or_default();
    let bytes: u64 = records.iter().map(|r| r.size).sum();
    println!(
        "spool:        {} ({} records, {} bytes)",
        spool.dir().display(),
        records.len(),
        bytes
    );
    println!("dropped:      {} (over the spool quota)", spool.dropped());
    println!(
        "last upload:  {}",
        spool.last_upload().unwrap_or_else(|| "never".into())
    );
    for program in settings.programs() {
        match shim::resolve(&program, settings) {
            Some(real) if program.starts_with("ruby") => {
                println!(
                    "real {program}:{}{} ({})",
                    pad(&program),
                    real.display(),
                    meta::ruby_version(&real, spool.dir())
                )
            }
            Some(real) => println!("real {program}:{}{}", pad(&program), real.display()),
            None => println!(
                "real {program}:{}not found (set REAL_{})",
                pad(&program),
                program.to_ascii_uppercase()
            ),
        }
    }
    if settings.get(keys::PSEUDONYM_KEY).is_none() {
        println!("warning:      PSEUDONYM_KEY is not set; learner pseudonyms are unkeyed hashes");
    }
}

fn pad(program: &str) -> String {
    " ".repeat(8usize.saturating_sub(program.len()).max(1))
}
