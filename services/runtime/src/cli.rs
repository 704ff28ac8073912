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
