//! What the uploader trusts in a spool record: nothing but the bytes of a Ruby run, and the file
//! system's word for who wrote them. The system spool is writable by every student, so a record
//! may be forged: another kind of event (an LMS `assessment_submitted`), someone else's actor,
//! a link to a file the student may not read. The uploader therefore
//!
//! - opens a record only if it is a regular file with one link, without following a symlink
//!   (`O_NOFOLLOW`, then `fstat` of what was opened);
//! - takes the learner from the file's owner (the account name of its uid, the name the
//!   notebook scanner's `users.csv` gives too), never from the record or from `$USER`; an
//!   uploader that is not root accepts only its own account's records;
//! - accepts only `shim`/`ruby_run` records, and rewrites their actor (HMAC of the owner's name
//!   with the uploader's `PSEUDONYM_KEY`, or [`UNKEYED_ACTOR`] without a key) and their context;
//! - hides the owner's home directory in every path and text ([`crate::redact`]).
//!
//! Anything else goes to the dead-letter stream with the reason, and without the content when
//! the file is not a record its owner wrote (a link, a device, a hard link to another file).

use std::{
    collections::HashMap,
    io::{self, Read},
    os::unix::fs::MetadataExt,
    path::Path,
};

use learntrail_proto::{
    Event, Message, Payload,
    subject::{kind, source},
    v1::Context,
};

use crate::{
    meta::{UNKEYED_ACTOR, pseudonym},
    redact::Homes,
    spool::open_nofollow,
};

/// A record larger than this is not read whole (the bus takes about 1 MiB anyway).
pub const MAX_RECORD_BYTES: u64 = 8 << 20;

/// The account that wrote a record.
#[derive(Debug, Clone)]
pub struct Owner {
    pub uid: u32,
    pub name: String,
    homes: Homes,
}

/// A record file, read.
#[derive(Debug)]
pub struct Opened {
    pub bytes: Vec<u8>,
    pub owner: Owner,
}

/// Why a record file was not read.
#[derive(Debug)]
pub enum Refused {
    /// It went away meanwhile (uploaded by another run): nothing to do.
    Gone,
    /// Not a record its owner wrote: dead-lettered with this reason and no content.
    Forged(String),
}

/// Opens record files for the uploader running as `uploader_uid`, remembering owners.
#[derive(Debug)]
pub struct Reader {
    uploader_uid: u32,
    owners: HashMap<u32, Option<Owner>>,
}

impl Reader {
    pub fn new(uploader_uid: u32) -> Self {
        Self {
            uploader_uid,
            owners: HashMap::new(),
        }
    }

    /// The current process's uploader.
    pub fn current() -> Self {
        Self::new(nix::unistd::geteuid().as_raw())
    }

    /// Reads the record at `path` (at most [`MAX_RECORD_BYTES`] and one byte), with its owner.
    pub fn read(&mut self, path: &Path) -> Result<Opened, Refused> {
        let gone = |err: io::Error| match err.kind() {
            io::ErrorKind::NotFound => Refused::Gone,
            _ if err.raw_os_error() == Some(libc::ELOOP) => {
                Refused::Forged("a symbolic link, not a record".into())
            }
            _ => Refused::Forged(format!("cannot be opened: {err}")),
        };
        let listed = std::fs::symlink_metadata(path).map_err(gone)?;
        if !listed.file_type().is_file() {
            return Err(Refused::Forged(format!(
                "not a regular file ({})",
                file_kind(&listed)
            )));
        }
        self.check_owner(listed.uid())?;
        let file = open_nofollow(path).map_err(gone)?;
        let meta = file.metadata().map_err(gone)?;
        if !meta.is_file() {
            return Err(Refused::Forged(format!(
                "not a regular file ({})",
                file_kind(&meta)
            )));
        }
        if meta.nlink() != 1 {
            return Err(Refused::Forged(format!(
                "has {} hard links: another file's name, not a record",
                meta.nlink()
            )));
        }
        self.check_owner(meta.uid())?;
        let owner = self.owner(meta.uid()).ok_or_else(|| {
            Refused::Forged(format!("owned by uid {}, which has no account", meta.uid()))
        })?;
        let mut bytes = Vec::with_capacity(meta.len().min(MAX_RECORD_BYTES) as usize);
        file.take(MAX_RECORD_BYTES + 1)
            .read_to_end(&mut bytes)
            .map_err(gone)?;
        Ok(Opened { bytes, owner })
    }

    /// Root uploads every account's records; anyone else only their own.
    fn check_owner(&self, uid: u32) -> Result<(), Refused> {
        if self.uploader_uid == 0 || uid == self.uploader_uid {
            return Ok(());
        }
        Err(Refused::Forged(format!(
            "owned by uid {uid}, not by the account uploading this spool (uid {})",
            self.uploader_uid
        )))
    }

    fn owner(&mut self, uid: u32) -> Option<Owner> {
        self.owners
            .entry(uid)
            .or_insert_with(|| {
                let user = nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid)).ok()??;
                Some(Owner {
                    uid,
                    homes: Homes::new([user.dir.to_string_lossy()]),
                    name: user.name,
                })
            })
            .clone()
    }
}

fn file_kind(meta: &std::fs::Metadata) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    let kind = meta.file_type();
    if kind.is_symlink() {
        "a symbolic link"
    } else if kind.is_dir() {
        "a directory"
    } else if kind.is_fifo() {
        "a named pipe"
    } else if kind.is_socket() {
        "a socket"
    } else if kind.is_block_device() || kind.is_char_device() {
        "a device"
    } else {
        "not a file"
    }
}

/// The event to publish for a record `owner` wrote, or why there is none. `key` is the
/// deployment's `PSEUDONYM_KEY` (none: the actor is [`UNKEYED_ACTOR`]).
pub fn accept(bytes: &[u8], owner: &Owner, key: Option<&str>) -> Result<Event, String> {
    if bytes.len() as u64 > MAX_RECORD_BYTES {
        return Err(format!("too large: over {MAX_RECORD_BYTES} bytes"));
    }
    let mut event = Event::decode(bytes).map_err(|err| format!("undecodable: {err}"))?;
    learntrail_proto::validate::validate_event(&event).map_err(|problems| {
        let problems: Vec<String> = problems.iter().map(|p| p.to_string()).collect();
        format!("not a valid event: {}", problems.join("; "))
    })?;
    let Some(Payload::RubyRun(run)) = event.payload.as_mut() else {
        return Err(format!(
            "not a Ruby run (source {:?}, kind {:?}): the spool carries {}.{} events only",
            event.source,
            event.kind,
            source::SHIM,
            kind::RUBY_RUN
        ));
    };
    if event.source != source::SHIM || event.kind != kind::RUBY_RUN {
        return Err(format!(
            "a Ruby run as source {:?}, kind {:?}: the spool carries {}.{} events only",
            event.source,
            event.kind,
            source::SHIM,
            kind::RUBY_RUN
        ));
    }
    owner.homes.run(run);
    let actor = match key {
        Some(key) => pseudonym(key, &owner.name),
        None => UNKEYED_ACTOR.to_string(),
    };
    let mut machine = event
        .context
        .take()
        .and_then(|c| c.machine)
        .unwrap_or_default();
    machine.user = actor.clone();
    event.actor = actor;
    event.received_at = None;
    event.context = Some(Context {
        machine: Some(machine),
        ..Default::default()
    });
    Ok(event)
}

#[cfg(test)]
mod tests {
    use learntrail_proto::v1::{LmsEvent, RubyRun};

    use super::*;

    fn owner(name: &str, home: &str) -> Owner {
        Owner {
            uid: 1000,
            name: name.into(),
            homes: Homes::new([home]),
        }
    }

    fn run_event() -> Event {
        Event {
            id: learntrail_proto::id::new_id(),
            occurred_at: Some(learntrail_proto::time::now()),
            source: source::SHIM.into(),
            kind: kind::RUBY_RUN.into(),
            actor: "claimed-by-the-record".into(),
            context: Some(Context {
                course: "forged-course".into(),
                ..Default::default()
            }),
            payload: Some(Payload::RubyRun(RubyRun {
                cwd: "/home/ann/hw".into(),
                ..Default::default()
            })),
            ..Default::default()
        }
    }

    #[test]
    fn the_learner_is_the_files_owner_never_the_records_claim() {
        let ann = owner("ann", "/home/ann");
        let event = accept(&run_event().encode_to_vec(), &ann, Some("k")).unwrap();
        assert_eq!(event.actor, pseudonym("k", "ann"));
        let context = event.context.unwrap();
        assert_eq!(context.machine.unwrap().user, event.actor);
        assert_eq!(context.course, "", "the record's context is not trusted");
        let Some(Payload::RubyRun(run)) = event.payload else {
            panic!()
        };
        assert_eq!(run.cwd, "~/hw");
    }

    #[test]
    fn without_a_key_runs_are_marked_unkeyed() {
        let event = accept(
            &run_event().encode_to_vec(),
            &owner("ann", "/home/ann"),
            None,
        )
        .unwrap();
        assert_eq!(event.actor, UNKEYED_ACTOR);
    }

    #[test]
    fn only_ruby_runs_pass() {
        let ann = owner("ann", "/home/ann");
        let lms = Event {
            source: source::LMS.into(),
            kind: "assessment_submitted".into(),
            payload: Some(Payload::LmsEvent(LmsEvent::default())),
            ..run_event()
        };
        let err = accept(&lms.encode_to_vec(), &ann, Some("k")).unwrap_err();
        assert!(err.contains("not a Ruby run"), "{err}");
        let renamed = Event {
            kind: "assessment_submitted".into(),
            ..run_event()
        };
        let err = accept(&renamed.encode_to_vec(), &ann, Some("k")).unwrap_err();
        assert!(err.contains("spool carries shim.ruby_run"), "{err}");
        assert!(accept(b"", &ann, Some("k")).is_err(), "an empty record");
    }
}
