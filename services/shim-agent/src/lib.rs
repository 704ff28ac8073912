//! # shim-agent
//!
//! Learntrail's agent for lab machines. Run under the name `ruby` (or `irb`, `rake`, ...) it is
//! the shim ([`shim`]): the real program runs exactly as before, while stderr is shown live and
//! a bounded copy kept ([`capture`]); the run's metadata ([`meta`], [`git`]) and parsed Ruby
//! error ([`rubyerr`]) become one `events.shim.ruby_run` event in the local [`spool`]. Run as
//! `shim-agent`, it is the CLI ([`cli`]): `upload`/`daemon` drain the spool to NATS ([`upload`]),
//! `install`/`uninstall` put the shim in PATH ([`install`]), `status` reports. The uploader
//! trusts a record's bytes only as a Ruby run of the file's owner ([`record`]); no recorded
//! path or text names the learner's home ([`redact`]).

pub mod capture;
pub mod cli;
pub mod git;
pub mod install;
pub mod meta;
pub mod record;
pub mod redact;
pub mod rubyerr;
pub mod settings;
pub mod shim;
pub mod spool;
mod sys;
pub mod upload;
