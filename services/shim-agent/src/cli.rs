//! The agent's own commands (when run as `shim-agent`): upload, daemon, install, uninstall,
//! status.

use std::{io::Read as _, path::PathBuf, time::Duration};

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
/// STDERR_CAPTURE_BYTES, SHIM_PROGRAMS, NATS_URL. Secrets (PSEUDONYM_KEY, NATS_CREDS,
/// NATS_USER, NATS_PASSWORD, NATS_TOKEN) go in /etc/learntrail/uploader.env, readable by root
/// only (a per-user install keeps them in its own 0600 shim.env).
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
        /// File holding the deployment's key for learner pseudonyms (`-`: standard input); else
        /// PSEUDONYM_KEY from the environment. Written to the root-only secrets file, with any
        /// NATS_CREDS, NATS_USER, NATS_PASSWORD, NATS_TOKEN of the environment
        #[arg(long, value_name = "FILE")]
        pseudonym_key_file: Option<PathBuf>,
        /// Refused: a key in the command line is shown by `ps` to every account
        #[arg(long, hide = true)]
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
            let key = settings.get(keys::PSEUDONYM_KEY);
            upload::upload_once(&spool, &nats, key.as_deref()).await?;
        }
        Command::Daemon {
            interval,
            nats,
            log,
        } => {
            telemetry::init(&log);
            tracing::info!(spool = %spool.dir().display(), nats_url = %learntrail_runtime::telemetry::redact_urls(&nats.url), "shim-agent daemon started");
            let key = settings.get(keys::PSEUDONYM_KEY);
            if key.is_none() {
                tracing::warn!("PSEUDONYM_KEY is not set: runs are uploaded as unkeyed");
            }
            upload::daemon(
                &spool,
                &nats,
                key.as_deref(),
                interval,
                shutdown::on_signal(),
            )
            .await;
        }
        Command::Install {
            scope,
            programs,
            nats_url,
            pseudonym_key_file,
            pseudonym_key,
        } => {
            if pseudonym_key.is_some() {
                anyhow::bail!(
                    "--pseudonym-key would show the key to every account in `ps`; set PSEUDONYM_KEY in the environment or use --pseudonym-key-file"
                );
            }
            let exe = std::env::current_exe()?.canonicalize()?;
            let plain: Vec<(String, String)> = nats_url
                .map(|v| ("NATS_URL".to_string(), v))
                .into_iter()
                .collect();
            let mut secrets = Vec::new();
            let key = match pseudonym_key_file {
                Some(path) => Some(read_key(&path)?),
                None => settings.get(keys::PSEUDONYM_KEY),
            };
            secrets.extend(key.map(|v| (keys::PSEUDONYM_KEY.to_string(), v)));
            for name in keys::NATS_SECRETS {
                secrets.extend(std::env::var(name).ok().map(|v| (name.to_string(), v)));
            }
            let layout = scope.layout()?;
            for line in install::install(&layout, &exe, &programs, &plain, &secrets)? {
                say(&line);
            }
            say(&format!(
                "done: open a new terminal (or `export PATH=\"{}:$PATH\"`) and `ruby` runs are captured",
                layout.bin_dir.display()
            ));
        }
        Command::Uninstall { scope } => {
            let exe = std::env::current_exe()?.canonicalize()?;
            for line in install::uninstall(&scope.layout()?, &exe)? {
                say(&line);
            }
        }
        Command::Status => status(&spool, &settings),
    }
    Ok(())
}

/// Writes one line to standard output; a closed pipe (`shim-agent status | head -1`) ends the
/// process quietly with status 0, as Unix tools do, instead of a panic.
pub fn say(line: &str) {
    runtime_cli::print(&format!("{line}\n"));
}

/// The key in `path` (`-`: standard input), trimmed; an empty one is refused.
fn read_key(path: &std::path::Path) -> anyhow::Result<String> {
    let mut text = String::new();
    if path.as_os_str() == "-" {
        std::io::stdin().read_to_string(&mut text)?;
    } else {
        text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
    }
    let key = text.trim().to_string();
    anyhow::ensure!(!key.is_empty(), "{} holds no key", path.display());
    Ok(key)
}

fn status(spool: &Spool, settings: &Settings) {
    let mut out = Vec::new();
    match spool.records() {
        Ok(records) => out.push(format!(
            "spool:        {} ({} records, {} bytes)",
            spool.dir().display(),
            records.len(),
            records.iter().map(|r| r.size).sum::<u64>()
        )),
        Err(err) => out.push(format!(
            "spool:        {} (not listed: {err}; a shared spool is listed by root only)",
            spool.dir().display()
        )),
    }
    out.push(format!(
        "dropped:      {} (over the spool quota)",
        spool.dropped()
    ));
    out.push(format!(
        "last upload:  {}",
        spool.last_upload().unwrap_or_else(|| "never".into())
    ));
    for program in settings.programs() {
        out.push(match shim::resolve(&program, settings) {
            Some(real) if program.starts_with("ruby") => format!(
                "real {program}:{}{} ({})",
                pad(&program),
                real.display(),
                meta::ruby_version(&real, &settings::cache_dir(spool))
            ),
            Some(real) => format!("real {program}:{}{}", pad(&program), real.display()),
            None => format!(
                "real {program}:{}not found (set REAL_{})",
                pad(&program),
                program.to_ascii_uppercase()
            ),
        });
    }
    out.extend(settings.warnings());
    say(&out.join("\n"));
}
fn pad(program: &str) -> String {
    " ".repeat(8usize.saturating_sub(program.len()).max(1))
}
