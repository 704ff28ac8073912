//! Parsing a service's `Config`: `--help` and `--version` print and exit 0; a bad or missing
//! value prints clap's explanation and exits 64 (EX_USAGE), so supervisors can tell a
//! configuration mistake from a crash.

use clap::Parser;

/// Exit status for a configuration error.
pub const EX_USAGE: i32 = 64;

/// Parses the process's arguments and environment into `C`, exiting on help or error.
pub fn parse<C: Parser>() -> C {
    C::try_parse().unwrap_or_else(|err| {
        let code = if err.use_stderr() { EX_USAGE } else { 0 };
        let _ = err.print();
        std::process::exit(code)
    })
}

/// A configuration mistake found after parsing (an empty secret, a setting that needs another):
/// returned from `run`, it makes [`exit`] print the message and exit 64 like a parse error.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

impl ConfigError {
    pub fn new(message: impl Into<String>) -> Self {
        Self(message.into())
    }
}

/// The end of every `main`: `Ok` exits 0; a [`ConfigError`] anywhere in the chain prints the
/// message and exits 64; any other error is logged with its cause chain and exits 1, so an
/// orchestrator restarts the service.
pub fn exit(result: anyhow::Result<()>) -> std::process::ExitCode {
    let Err(err) = result else {
        return std::process::ExitCode::SUCCESS;
    };
    if let Some(config) = err.downcast_ref::<ConfigError>() {
        eprintln!("error: {config}");
        return std::process::ExitCode::from(EX_USAGE as u8);
    }
    tracing::error!(error.cause_chain = ?err, error.message = %err, "stopped on an error");
    eprintln!("error: {err:#}");
    std::process::ExitCode::FAILURE
}

/// Writes `text` to standard output; when the reader has gone (`| head`), exits 0 quietly as
/// Unix tools do instead of panicking on the broken pipe.
pub fn print(text: &str) {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Ok(()) => {}
        Err(err) if err.kind() == std::io::ErrorKind::BrokenPipe => std::process::exit(0),
        Err(err) => {
            eprintln!("error: cannot write to standard output: {err}");
            std::process::exit(1)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_errors_exit_64_and_others_1() {
        let config = anyhow::Error::new(ConfigError::new("JWT_SECRET must not be empty"))
            .context("cannot start");
        assert_eq!(exit(Err(config)), std::process::ExitCode::from(64));
        assert_eq!(
            exit(Err(anyhow::anyhow!("disk full"))),
            std::process::ExitCode::FAILURE
        );
        assert_eq!(exit(Ok(())), std::process::ExitCode::SUCCESS);
    }
}
