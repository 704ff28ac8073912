//! Runs under a real pseudo-terminal (the test is the terminal emulator): the child sees a
//! terminal on stderr, Ctrl-C reaches it once, and signals sent to the shim reach it too.
#![allow(unsafe_code)]

use std::{
    fs::File,
    io::{Read, Write},
    os::{
        fd::{AsFd, AsRawFd},
        unix::process::{CommandExt, ExitStatusExt},
    },
    process::{Child, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use crate::helpers::Lab;

struct Terminal {
    child: Child,
    master: File,
    output: Arc<Mutex<Vec<u8>>>,
}

impl Terminal {
    /// Starts `ruby <args>` (through the shim or not) as the session leader of a new terminal.
    fn start(lab: &Lab, shim: bool, args: &[&str]) -> Self {
        let pty = nix::pty::openpty(None, None).unwrap();
        // tests run in parallel: this pty must not leak into another test's program
        for fd in [pty.master.as_fd(), pty.slave.as_fd()] {
            nix::fcntl::fcntl(
                fd,
                nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
            )
            .unwrap();
        }
        let slave = File::from(pty.slave);
        let mut command = lab.command(shim, args);
        command
            .stdin(Stdio::from(slave.try_clone().unwrap()))
            .stdout(Stdio::from(slave.try_clone().unwrap()))
            .stderr(Stdio::from(slave.try_clone().unwrap()));
        // SAFETY: setsid and ioctl are async-signal-safe; run in the child between fork and exec.
        unsafe {
            command.pre_exec(|| {
                if libc::setsid() < 0 || libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = command.spawn().unwrap();
        drop(slave);
        let master = File::from(pty.master);
        let output = Arc::new(Mutex::new(Vec::new()));
        let (mut reader, sink) = (master.try_clone().unwrap(), Arc::clone(&output));
        std::thread::spawn(move || {
            let mut buffer = [0u8; 4096];
            while let Ok(n) = reader.read(&mut buffer) {
                if n == 0 {
                    break;
                }
                sink.lock().unwrap().extend_from_slice(&buffer[..n]);
            }
        });
        Self {
            child,
            master,
            output,
        }
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.output.lock().unwrap()).into_owned()
    }

    fn wait_for(&self, needle: &str) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !self.text().contains(needle) {
            assert!(
                Instant::now() < deadline,
                "never saw {needle:?}; got {:?}",
                self.text()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn finish(mut self) -> (std::process::ExitStatus, String) {
        let status = self.child.wait().unwrap();
        // let the reader drain what is left
        let deadline = Instant::now() + Duration::from_millis(300);
        let mut last = self.text().len();
        while Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(30));
            let now = self.text().len();
            if now == last {
                break;
            }
            last = now;
        }
        let _ = self.master.as_raw_fd();
        (status, self.text())
    }
}

#[test]
fn the_child_sees_a_terminal_on_stderr() {
    let lab = Lab::new();
    // no terminal fds beyond 0-2 in the program: the shim's pty must not leak into it
    let script = "$stderr.puts \"stderr tty: #{$stderr.tty?} #{$stderr.winsize.inspect rescue 'none'}\"; puts \"stdout tty: #{$stdout.tty?}\"; puts \"extra pty fds: #{Dir.children('/proc/self/fd').map(&:to_i).select { |fd| fd > 2 }.count { |fd| (File.readlink(\"/proc/self/fd/#{fd}\") rescue '').start_with?('/dev/ptmx', '/dev/pts/') }}\"";
    let (direct_status, direct) =
        Terminal::start(&lab, false, &["-rio/console", "-e", script]).finish();
    let (status, shimmed) = Terminal::start(&lab, true, &["-rio/console", "-e", script]).finish();
    assert_eq!(status.code(), direct_status.code());
    assert!(shimmed.contains("stderr tty: true"), "{shimmed:?}");
    assert!(shimmed.contains("stdout tty: true"), "{shimmed:?}");
    assert!(shimmed.contains("extra pty fds: 0"), "{shimmed:?}");
    // stderr takes one hop more than stdout, so lines written at the same instant to both may
    // swap places; each stream on its own is the same
    let lines = |text: &str| {
        let mut lines: Vec<String> = text.replace('\r', "").lines().map(String::from).collect();
        lines.sort();
        lines
    };
    assert_eq!(
        lines(&shimmed),
        lines(&direct),
        "the terminal shows the same"
    );
    let (_, run) = lab.only_run();
    assert!(
        run.stderr.starts_with("stderr tty: true"),
        "{:?}",
        run.stderr
    );
}

#[test]
fn ctrl_c_reaches_the_program_once() {
    let lab = Lab::new();
    // unbuffered writes: a trap handler's `puts` can meet the main thread's own `puts` still
    // holding stdout's lock and die of Ruby's "deadlock; recursive locking" (ThreadError)
    let script = "trap(:INT) { $stdout.syswrite(\"got INT\\n\"); exit 7 }; $stdout.syswrite(\"ready\\n\"); sleep 30";
    for shim in [false, true] {
        lab.clear_spool();
        let mut terminal = Terminal::start(&lab, shim, &["-e", script]);
        terminal.wait_for("ready");
        terminal.master.write_all(b"\x03").unwrap();
        let (status, text) = terminal.finish();
        assert_eq!(status.code(), Some(7), "shim={shim}: {text:?}");
        assert_eq!(text.matches("got INT").count(), 1, "shim={shim}: {text:?}");
    }
    assert_eq!(lab.only_run().1.exit_code, Some(7));
}

#[test]
fn ctrl_c_kills_like_it_kills_ruby() {
    let lab = Lab::new();
    for shim in [false, true] {
        let mut terminal =
            Terminal::start(&lab, shim, &["-e", "puts 'ready'; $stdout.flush; sleep 30"]);
        terminal.wait_for("ready");
        terminal.master.write_all(b"\x03").unwrap();
        let (status, text) = terminal.finish();
        assert_eq!(status.signal(), Some(libc::SIGINT), "shim={shim}: {text:?}");
    }
    let (_, run) = lab.only_run();
    assert_eq!(run.signal, Some(libc::SIGINT));
}

#[test]
fn signals_sent_to_the_shim_reach_the_program() {
    let lab = Lab::new();
    let script = "trap(:TERM) { puts 'got TERM'; $stdout.flush; exit 9 }; trap(:USR1) { puts 'got USR1'; $stdout.flush }; puts 'ready'; $stdout.flush; sleep 30; sleep 30";
    let mut child = lab
        .command(true, &["-e", script])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let mut seen = Vec::new();
    let mut buffer = [0u8; 256];
    while !String::from_utf8_lossy(&seen).contains("ready") {
        let n = stdout.read(&mut buffer).unwrap();
        assert!(n > 0);
        seen.extend_from_slice(&buffer[..n]);
    }
    let shim_pid = child.id() as i32;
    // SAFETY: signalling our own child process.
    unsafe { libc::kill(shim_pid, libc::SIGUSR1) };
    while !String::from_utf8_lossy(&seen).contains("got USR1") {
        let n = stdout.read(&mut buffer).unwrap();
        assert!(n > 0);
        seen.extend_from_slice(&buffer[..n]);
    }
    // SAFETY: as above.
    unsafe { libc::kill(shim_pid, libc::SIGTERM) };
    let status = child.wait().unwrap();
    stdout.read_to_end(&mut seen).unwrap();
    assert_eq!(status.code(), Some(9), "{}", String::from_utf8_lossy(&seen));
    assert!(String::from_utf8_lossy(&seen).contains("got TERM"));
}
