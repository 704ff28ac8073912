//! Tracing set-up: JSON lines in production, human-readable on a terminal; the filter comes from
//! `RUST_LOG` (default `info`).

use std::io::IsTerminal;

use tracing_subscriber::{EnvFilter, fmt, prelude::*};

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Json,
    Pretty,
}

/// Logging flags shared by every service.
#[derive(Debug, Clone, clap::Args)]
pub struct LogArgs {
    /// Log format: json or pretty [default: pretty on a terminal, else json]
    #[arg(long, env = "LOG_FORMAT", value_enum)]
    pub log_format: Option<LogFormat>,
}

/// Installs the global subscriber. Safe to call more than once (later calls do nothing).
pub fn init(args: &LogArgs) {
    let format = args
        .log_format
        .unwrap_or(if std::io::stderr().is_terminal() {
            LogFormat::Pretty
        } else {
            LogFormat::Json
        });
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let registry = tracing_subscriber::registry().with(filter);
    let _ = match format {
        LogFormat::Json => registry
            .with(
                fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_writer(std::io::stderr),
            )
            .try_init(),
        LogFormat::Pretty => registry
            .with(fmt::layer().with_writer(std::io::stderr))
            .try_init(),
    };
}

/// A URL list (comma-separated) fit for a log line: each URL's password, if it has one
/// (`redis://:secret@host`, `nats://user:secret@host`), becomes `***`. Everything before a
/// URL's last `@` counts as its user and password, so a password holding `/`, `?` or `#` (an
/// unencoded base64 one, which a URL parser refuses and an error message then quotes) is hidden
/// too; an `@` later in a query hides more than needed, never less.
pub fn redact_urls(urls: &str) -> String {
    urls.split(',')
        .map(|url| {
            let Some(scheme_end) = url.find("://").map(|i| i + 3) else {
                return url.to_string();
            };
            let authority = &url[scheme_end..];
            let Some(at) = authority.rfind('@') else {
                return url.to_string();
            };
            // `user:password@` keeps the user; a lone `secret@` (a NATS token) goes whole
            let kept = match authority[..at].split_once(':') {
                Some((user, _)) => format!("{user}:***"),
                None => "***".to_string(),
            };
            format!("{}{kept}{}", &url[..scheme_end], &url[scheme_end + at..])
        })
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_and_tokens_leave_urls_for_the_log() {
        assert_eq!(
            redact_urls("redis://127.0.0.1:6379"),
            "redis://127.0.0.1:6379"
        );
        assert_eq!(
            redact_urls("redis://:s3cret@redis:6379/0"),
            "redis://:***@redis:6379/0"
        );
        assert_eq!(
            redact_urls("redis://app:s3cret@r-0:6379,redis://app:s3cret@r-1:6379"),
            "redis://app:***@r-0:6379,redis://app:***@r-1:6379"
        );
        assert_eq!(
            redact_urls("nats://user:pa@ss@nats:4222"),
            "nats://user:***@nats:4222"
        );
        assert_eq!(
            redact_urls("nats://t0ken@nats:4222"),
            "nats://***@nats:4222"
        );
        assert_eq!(redact_urls("nats://nats:4222"), "nats://nats:4222");
        assert!(!redact_urls("rediss://:s3cret@h:6380?x=@").contains("s3cret"));
        // a password a URL parser refuses (it holds a `/`): hidden all the same
        assert_eq!(
            redact_urls("redis://:ab/cd+ef==@redis:6379"),
            "redis://:***@redis:6379"
        );
        assert_eq!(
            redact_urls("redis://app:a?b#c@redis:6379/0"),
            "redis://app:***@redis:6379/0"
        );
    }
}
