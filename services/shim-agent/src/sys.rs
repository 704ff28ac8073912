//! The few raw system calls the shim needs, each with its safety argument: signal forwarding,
//! terminal size, and re-raising the child's fatal signal.
#![allow(unsafe_code)]

use std::{
    os::fd::{AsRawFd, BorrowedFd},
    sync::atomic::{AtomicI32, Ordering},
};

use nix::pty::Winsize;

/// The child's pid while it runs (0 before it is spawned and after it is reaped).
static CHILD: AtomicI32 = AtomicI32::new(0);
/// Signals sent to us before the child's pid was known (bit n = signal n), passed on then.
static EARLY: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
/// Set once the child is reaped: later signals have no one to go to.
static REAPED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
/// The pty master to resize on SIGWINCH (-1 when none).
static RESIZE_TARGET: AtomicI32 = AtomicI32::new(-1);

/// Signals a user may send the shim that should reach the child as if sent to it.
const FORWARDED: [libc::c_int; 7] = [
    libc::SIGINT,
    libc::SIGQUIT,
    libc::SIGTERM,
    libc::SIGHUP,
    libc::SIGUSR1,
    libc::SIGUSR2,
    libc::SIGALRM,
];

/// True when another process sent the signal (kill(2), sigqueue(3)), as opposed to the terminal:
/// Ctrl-C and friends already reach the child, which is in the same process group.
fn sent_by_a_process(info: &libc::siginfo_t) -> bool {
    #[cfg(target_os = "linux")]
    {
        info.si_code <= 0 // SI_USER (0), SI_QUEUE/SI_TKILL (< 0); SI_KERNEL is 0x80
    }
    #[cfg(not(target_os = "linux"))]
    {
        info.si_code == libc::SI_USER || info.si_code == libc::SI_QUEUE
    }
}

fn is_ignored(signal: libc::c_int) -> bool {
    // SAFETY: querying (act = null) the current disposition into a zeroed struct we own.
    unsafe {
        let mut old: libc::sigaction = std::mem::zeroed();
        libc::sigaction(signal, std::ptr::null(), &mut old) == 0
            && old.sa_sigaction == libc::SIG_IGN
    }
}

/// Installs the forwarding handlers. A signal our parent set to be ignored stays ignored, so the
/// child inherits that exactly as it would without the shim. Must run before the child is spawned
/// (a handler, unlike SIG_IGN, is reset to the default in the child by exec).
pub fn install_forwarding() {
    for signal in FORWARDED {
        if is_ignored(signal) {
            continue;
        }
        // SAFETY: the action only reads atomics and calls kill(2), both async-signal-safe.
        let _ = unsafe {
            signal_hook_registry::register_sigaction(signal, move |info: &libc::siginfo_t| {
                if !sent_by_a_process(info) {
                    return;
                }
                let child = CHILD.load(Ordering::SeqCst);
                if child > 0 {
                    libc::kill(child, signal);
                } else if !REAPED.load(Ordering::SeqCst) {
                    EARLY.fetch_or(1 << signal, Ordering::SeqCst);
                }
            })
        };
    }
    // SAFETY: the action only reads an atomic and calls ioctl(2), which is async-signal-safe.
    let _ = unsafe {
        signal_hook_registry::register(libc::SIGWINCH, || {
            let master = RESIZE_TARGET.load(Ordering::SeqCst);
            if master >= 0 {
                let mut size: libc::winsize = std::mem::zeroed();
                if libc::ioctl(libc::STDERR_FILENO, libc::TIOCGWINSZ, &mut size) == 0 {
                    libc::ioctl(master, libc::TIOCSWINSZ, &size);
                }
            }
        })
    };
}

/// Records the child's pid and passes on what was sent to us before it was known.
pub fn set_child(pid: u32) {
    CHILD.store(pid as i32, Ordering::SeqCst);
    let early = EARLY.swap(0, Ordering::SeqCst);
    for signal in FORWARDED {
        if early & (1 << signal) != 0 {
            // SAFETY: kill(2) on our own child's pid, which it still holds (not yet reaped).
            unsafe { libc::kill(pid as i32, signal) };
        }
    }
}

/// The child is reaped: its pid may be reused, so nothing more is sent to it.
pub fn clear_child() {
    REAPED.store(true, Ordering::SeqCst);
    CHILD.store(0, Ordering::SeqCst);
}

pub fn set_resize_target(master: BorrowedFd<'_>) {
    RESIZE_TARGET.store(master.as_raw_fd(), Ordering::SeqCst);
}

pub fn clear_resize_target() {
    RESIZE_TARGET.store(-1, Ordering::SeqCst);
}

/// The size of the terminal on `fd`.
pub fn terminal_size(fd: BorrowedFd<'_>) -> Option<Winsize> {
    // SAFETY: TIOCGWINSZ writes one winsize into the zeroed struct we own.
    unsafe {
        let mut size: libc::winsize = std::mem::zeroed();
        (libc::ioctl(fd.as_raw_fd(), libc::TIOCGWINSZ, &mut size) == 0).then_some(Winsize {
            ws_row: size.ws_row,
            ws_col: size.ws_col,
            ws_xpixel: size.ws_xpixel,
            ws_ypixel: size.ws_ypixel,
        })
    }
}

/// Dies of `signal` so our parent sees the same status as the child's (without a core dump of
/// our own); exits 128 + signal if the signal does not kill us.
pub fn die_by_signal(signal: i32) -> ! {
    // SAFETY: plain system calls on our own process with valid arguments; nothing runs after.
    unsafe {
        let no_core = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        libc::setrlimit(libc::RLIMIT_CORE, &no_core);
        libc::signal(signal, libc::SIG_DFL);
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, signal);
        libc::sigprocmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut());
        libc::raise(signal);
    }
    std::process::exit(128 + signal)
}

/// Waits until `source` can be read (data, its end, or an error) or `stop` can: whether `stop`
/// was asked (it wins when both are ready). A closed `source` reads as ready (POLLNVAL).
pub fn wait_readable(source: std::os::fd::RawFd, stop: BorrowedFd<'_>) -> bool {
    use std::os::fd::AsRawFd;
    let mut fds = [
        libc::pollfd {
            fd: source,
            events: libc::POLLIN,
            revents: 0,
        },
        libc::pollfd {
            fd: stop.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        },
    ];
    loop {
        // SAFETY: `fds` is a valid array of two pollfd for the duration of the call.
        let ready = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, -1) };
        if ready >= 0 {
            return fds[1].revents != 0;
        }
        if std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted {
            return false; // let the read report it
        }
    }
}

/// Keeps copying `fd` to our stderr in a forked process after we exit, until the last writer
/// (a background grandchild of the program) closes it: what it writes later still shows, as it
/// would without the shim. The fork only makes raw system calls (other threads may hold locks).
pub fn forward_in_background(fd: libc::c_int) {
    // SAFETY: after fork the child calls only async-signal-safe functions (read, write, _exit)
    // on a stack buffer; the parent just continues.
    unsafe {
        if libc::fork() != 0 {
            return; // parent (or fork failed: the late output is lost, as before)
        }
        for signal in FORWARDED {
            libc::signal(signal, libc::SIG_DFL); // nothing to forward to any more
        }
        libc::close(libc::STDIN_FILENO);
        libc::close(libc::STDOUT_FILENO);
        let interrupted = || std::io::Error::last_os_error().raw_os_error() == Some(libc::EINTR);
        let mut buffer = [0u8; 16 * 1024];
        loop {
            let n = libc::read(fd, buffer.as_mut_ptr().cast(), buffer.len());
            if n < 0 && interrupted() {
                continue;
            }
            if n <= 0 {
                libc::_exit(0); // end of stream, or EIO from a pty whose last writer closed
            }
            let mut at = 0;
            while at < n as usize {
                let w = libc::write(
                    libc::STDERR_FILENO,
                    buffer[at..].as_ptr().cast(),
                    n as usize - at,
                );
                if w < 0 && interrupted() {
                    continue;
                }
                if w <= 0 {
                    break; // our stderr is gone: keep draining so the writer never blocks
                }
                at += w as usize;
            }
        }
    }
}
