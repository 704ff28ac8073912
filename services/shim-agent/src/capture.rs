//! Stderr capture. The child's stderr goes to a pipe (or, when our stderr is a terminal, to a
//! pseudo-terminal, so the child still sees a terminal and highlights as it would); a thread
//! copies every byte to our stderr at once, unchanged, and keeps a bounded copy.

use std::{
    io::{self, Read, Write},
    os::fd::{AsFd, AsRawFd, IntoRawFd, OwnedFd, RawFd},
    process::Stdio,
    sync::{Arc, Mutex, mpsc},
    thread,
    time::Duration,
};

/// What the child wrote to stderr: the first `limit` bytes, how much in all, and, past the
/// limit, up to `limit` more of the last bytes (where Ruby writes the report of the error that
/// ended the program, after whatever the program printed before).
#[derive(Debug, Default, Clone)]
pub struct Captured {
    pub bytes: Vec<u8>,
    pub total: u64,
    pub truncated: bool,
    /// The last bytes past `bytes`: `limit` and the byte before them once trimmed (up to
    /// twice that between trims).
    tail: Vec<u8>,
}

impl Captured {
    fn push(&mut self, chunk: &[u8], limit: usize) {
        self.total += chunk.len() as u64;
        let room = limit.saturating_sub(self.bytes.len());
        let kept = chunk.len().min(room);
        self.bytes.extend_from_slice(&chunk[..kept]);
        if chunk.len() > room {
            self.truncated = true;
            self.tail.extend_from_slice(&chunk[kept..]);
            if self.tail.len() > 2 * limit + 1 {
                self.tail.drain(..self.tail.len() - limit - 1);
            }
        }
    }

    /// When more was written than kept: everything when nothing between was left out, else
    /// the last `limit` bytes from their first whole line.
    pub fn end(&self) -> Option<Vec<u8>> {
        if !self.truncated {
            return None;
        }
        if (self.bytes.len() + self.tail.len()) as u64 == self.total {
            return Some([&self.bytes[..], &self.tail[..]].concat());
        }
        // bytes were left out, so the tail holds more than `limit` (trims keep one more)
        let limit = self.bytes.len();
        let at = self.tail.len().saturating_sub(limit);
        let window = &self.tail[at..];
        let starts_a_line = at == 0 || self.tail[at - 1] == b'\n';
        let start = if starts_a_line {
            0
        } else {
            window
                .iter()
                .position(|&b| b == b'\n')
                .map_or(window.len(), |i| i + 1)
        };
        Some(window[start..].to_vec())
    }
}

/// The parent's end of the child's stderr (a pipe, or a pty master: reading one after the
/// child closed its side fails with EIO, which is the end), and the pipe that asks the copying
/// thread to stop.
pub struct Source {
    stream: OwnedFd,
    stop: (io::PipeReader, io::PipeWriter),
}

/// Sets up the child's stderr: a pty when ours is a terminal, else a pipe.
pub fn prepare() -> io::Result<(Stdio, Source)> {
    let stop = io::pipe()?;
    if nix::unistd::isatty(io::stderr().as_fd()).unwrap_or(false)
        && let Ok((child, master)) = pty()
    {
        let source = Source {
            stream: master,
            stop,
        };
        return Ok((Stdio::from(child), source));
    }
    let (reader, writer) = io::pipe()?;
    let source = Source {
        stream: OwnedFd::from(reader),
        stop,
    };
    Ok((Stdio::from(writer), source))
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
    /// Told when the thread ended (the stream ended, our stderr went away, or it was asked to
    /// stop).
    done: mpsc::Receiver<()>,
    /// Written to ask the thread to stop reading (see [`Tee::finish`]).
    stop: io::PipeWriter,
    /// The parent's end of the stream: read by the thread under the lock, closed by it (set to
    /// `None`) when the stream ends or our stderr went away, taken by [`Tee::finish`] for the
    /// forwarder otherwise. Nobody else ever closes it, so its number is never reused while
    /// either side may still use it.
    stream: Arc<Mutex<Option<std::fs::File>>>,
}

/// How long [`Tee::finish`] waits for the thread to stop reading (it may be writing to a
/// stderr that blocks).
const HAND_OVER: Duration = Duration::from_secs(1);

impl Tee {
    /// Starts copying `source` to our stderr, keeping up to `limit` bytes.
    pub fn start(source: Source, limit: usize) -> Self {
        let captured = Arc::new(Mutex::new(Captured::default()));
        let (tx, done) = mpsc::channel();
        let (stop_reader, stop) = source.stop;
        let reader = std::fs::File::from(source.stream);
        let fd = reader.as_raw_fd();
        let stream = Arc::new(Mutex::new(Some(reader)));
        let (shared, owned) = (Arc::clone(&captured), Arc::clone(&stream));
        thread::spawn(move || {
            let mut buffer = vec![0u8; 16 * 1024];
            let mut stderr = io::stderr();
            loop {
                // asked to stop: what is not read yet stays in the stream for whoever takes it
                // over, so nothing is lost or reordered (`fd` stays open until this thread
                // closes it below, or for good once `finish` took it over)
                if crate::sys::wait_readable(fd, stop_reader.as_fd()) {
                    break;
                }
                let read = {
                    let mut stream = owned.lock().unwrap_or_else(|e| e.into_inner());
                    match stream.as_mut() {
                        Some(file) => file.read(&mut buffer),
                        None => break, // taken over
                    }
                };
                let n = match read {
                    Ok(n) if n > 0 => n,
                    Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
                    // the end, or EIO from a pty whose child side is closed
                    Ok(_) | Err(_) => {
                        close(&owned);
                        break;
                    }
                };
                if let Ok(mut captured) = shared.lock() {
                    captured.push(&buffer[..n], limit);
                }
                // Our stderr is gone (a closed pipe, a hung-up terminal): stop reading and let
                // go of the child's end, so its next write fails as it would without us (EPIPE
                // on a pipe, EIO on a pty) rather than succeeding unseen.
                if show(&mut stderr, &buffer[..n]).is_err() {
                    close(&owned);
                    break;
                }
            }
            let _ = tx.send(());
        });
        Self {
            captured,
            done,
            stop,
            stream,
        }
    }

    /// Waits up to `grace` for the copy to reach the end, then returns what was captured and,
    /// when the stream is still open (a background grandchild holds it), its descriptor: the
    /// caller hands it to [`crate::sys::forward_in_background`] so nothing written later is
    /// lost. The copying thread stops reading first, so the forwarder takes over exactly where it
    /// left off; only when it cannot stop in time (our stderr blocks it) does the forwarder
    /// start beside it.
    pub fn finish(mut self, grace: Duration) -> (Captured, Option<RawFd>) {
        if self.done.recv_timeout(grace).is_err() {
            let _ = self.stop.write_all(b"x");
            let _ = self.done.recv_timeout(HAND_OVER);
        }
        let open = self
            .stream
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
            .map(IntoRawFd::into_raw_fd);
        crate::sys::clear_resize_target();
        let captured = self.captured.lock().map(|c| c.clone()).unwrap_or_default();
        (captured, open)
    }
}

/// Closes the stream (the copying thread's last word on it).
fn close(stream: &Mutex<Option<std::fs::File>>) {
    stream.lock().unwrap_or_else(|e| e.into_inner()).take();
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
        assert_eq!(
            captured.end().unwrap(),
            b"hello world",
            "nothing was left out"
        );
    }

    #[test]
    fn keeps_the_end_from_its_first_whole_line() {
        let mut captured = Captured::default();
        captured.push(b"warn 1\n", 8);
        assert_eq!(captured.end(), None, "all of it was kept");
        for _ in 0..100 {
            captured.push(b"warn 2\n", 8);
        }
        captured.push(b"a.rb:1:in 'x': boom (RuntimeError)\n", 8);
        assert_eq!(captured.bytes, b"warn 1\nw");
        assert_eq!(
            captured.end().unwrap(),
            b"",
            "the last 8 bytes hold no whole line"
        );
        // a window that starts a line keeps it
        let mut captured = Captured::default();
        for chunk in [&b"0123456789\n"[..], &[b'x'; 20], b"\n", b"ABCDEFG\n"] {
            captured.push(chunk, 8);
        }
        assert_eq!(captured.end().unwrap(), b"ABCDEFG\n");
        let mut captured = Captured::default();
        for _ in 0..100 {
            captured.push(b"warn\n", 64);
        }
        captured.push(b"a.rb:1:in 'x': boom (RuntimeError)\n", 64);
        assert!(captured.tail.len() <= 129);
        assert_eq!(
            captured.end().unwrap(),
            b"warn\nwarn\nwarn\nwarn\nwarn\na.rb:1:in 'x': boom (RuntimeError)\n"
        );
    }
}
