//! Stderr capture. The child's stderr goes to a pipe (or, when our stderr is a terminal, to a
//! pseudo-terminal, so the child still sees a terminal and highlights as it would); a thread
//! copies every byte to our stderr at once, unchanged, and keeps a bounded copy.

use std::{
    io::{self, Read, Write},
    os::fd::{AsFd, OwnedFd},
    process::Stdio,
    sync::{Arc, Mutex, mpsc},
    thread,
    time::Duration,
};

/// What the child wrote to stderr: the first `limit` bytes, and how much in all.
#[derive(Debug, Default, Clone)]
pub struct Captured {
    pub bytes: Vec<u8>,
    pub total: u64,
    pub truncated: bool,
}

impl Captured {
    fn push(&mut self, chunk: &[u8], limit: usize) {
        self.total += chunk.len() as u64;
        let room = limit.saturating_sub(self.bytes.len());
        self.bytes
            .extend_from_slice(&chunk[..chunk.len().min(room)]);
        if chunk.len() > room {
            self.truncated = true;
        }
    }
}

/// The parent's end of the child's stderr.
pub enum Source {
    Pipe(io::PipeReader),
    /// Reading a pty master after the child closed its side fails with EIO: that is the end.
    Pty(std::fs::File),
}

/// Sets up the child's stderr: a pty when ours is a terminal, else a pipe.
pub fn prepare() -> io::Result<(Stdio, Source)> {
    if nix::unistd::isatty(io::stderr().as_fd()).unwrap_or(false)
        && let Ok((child, master)) = pty()
    {
        return Ok((Stdio::from(child), Source::Pty(std::fs::File::from(master))));
    }
    let (reader, writer) = io::pipe()?;
    Ok((Stdio::from(writer), Source::Pipe(reader)))
}

/// A pty shaped like our terminal (same size and modes), but passing bytes through unchanged
/// (no output processing), since our own terminal does that.
fn pty() -> io::Result<(OwnedFd, OwnedFd)> {
    use nix::sys::termios::{OutputFlags, tcgetattr};
    let mut termios = tcgetattr(io::stderr().as_fd()).map_err(io::Error::from)?;
    termios.output_flags.remove(OutputFlags::OPOST);
    let winsize = crate::sys::terminal_size(io::stderr().as_fd());
    let pty = nix::pty::openpty(winsize.as_ref(), Some(&termios)).map_err(io::Error::from)?;
    // neither end may stay open in the child beyond its stderr (a grandchild holding the master
    // would never see the hangup)
    for fd in [pty.master.as_fd(), pty.slave.as_fd()] {
        nix::fcntl::fcntl(
            fd,
            nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
        )
        .map_err(io::Error::from)?;
    }
    crate::sys::set_resize_target(pty.master.as_fd());
    Ok((pty.slave, pty.master))
}

/// The copying thread.
pub struct Tee {
    captured: Arc<Mutex<Captured>>,
    done: mpsc::Receiver<()>,
    /// The parent's end, for handing over to a forwarder when the stream outlives the program.
    source_fd: std::os::fd::RawFd,
}

impl Tee {
    /// Starts copying `source` to our stderr, keeping up to `limit` bytes.
    pub fn start(source: Source, limit: usize) -> Self {
        let captured = Arc::new(Mutex::new(Captured::default()));
        let (tx, done) = mpsc::channel();
        let source_fd = match &source {
            Source::Pipe(pipe) => std::os::fd::AsRawFd::as_raw_fd(pipe),
            Source::Pty(master) => std::os::fd::AsRawFd::as_raw_fd(master),
        };
        let shared = Arc::clone(&captured);
        thread::spawn(move || {
            let mut reader: Box<dyn Read> = match source {
                Source::Pipe(pipe) => Box::new(pipe),
                Source::Pty(master) => Box::new(master),
            };
            let mut buffer = vec![0u8; 16 * 1024];
            let mut stderr = io::stderr();
            loop {
                let n = match reader.read(&mut buffer) {
                    Ok(0) => break,
                    Ok(n) => n,
                    Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
                    Err(_) => break, // EIO from a pty whose child side is closed
                };
                if let Ok(mut captured) = shared.lock() {
                    captured.push(&buffer[..n], limit);
                }
                // Our stderr is gone (a closed pipe, a hung-up terminal): stop reading and let
                // go of the child's end, so its next write fails as it would without us (EPIPE
                // on a pipe, EIO on a pty) rather than succeeding unseen.
                if show(&mut stderr, &buffer[..n]).is_err() {
                    break;
                }
            }
            drop(reader);
            let _ = tx.send(());
        });
        Self {
            captured,
            done,
            source_fd,
        }
    }

    /// Waits up to `grace` for the copy to reach the end, then returns what was captured and,
    /// when the stream is still open (a background grandchild holds it), its fd: the caller
    /// hands it to [`crate::sys::forward_in_background`] so nothing written later is lost.
    pub fn finish(self, grace: Duration) -> (Captured, Option<std::os::fd::RawFd>) {
        let open = self.done.recv_timeout(grace).is_err();
        crate::sys::clear_resize_target();
        let captured = self.captured.lock().map(|c| c.clone()).unwrap_or_default();
        (captured, open.then_some(self.source_fd))
    }
}

/// Writes all of `bytes`, waiting while our stderr would block (a descriptor someone made
/// non-blocking), which is not a failure.
fn show(out: &mut impl Write, mut bytes: &[u8]) -> io::Result<()> {
    while !bytes.is_empty() {
        match out.write(bytes) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => bytes = &bytes[n..],
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => {
                thread::sleep(Duration::from_millis(1))
            }
            Err(err) => return Err(err),
        }
    }
    out.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_a_bounded_copy_and_counts_everything() {
        let mut captured = Captured::default();
        captured.push(b"hello ", 8);
        captured.push(b"world", 8);
        assert_eq!(captured.bytes, b"hello wo");
        assert_eq!(captured.total, 11);
        assert!(captured.truncated);
    }
}
