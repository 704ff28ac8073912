//! The shim: started as `ruby` (or `irb`, `rake`, ...), it runs the real program with the same
//! argv, environment, stdin and stdout, shows stderr live while keeping a bounded copy, records
//! the run in the spool, and leaves with the child's exit status. Whatever fails on the capture
//! side, the run itself goes ahead exactly as without the shim.

use std::{
    ffi::OsString,
    os::unix::process::{CommandExt, ExitStatusExt},
    path::{Path, PathBuf},
    process::{Command, ExitStatus},
    time::{Duration, Instant, SystemTime},
};

use learntrail_proto::{Message, v1::RubyRun};

use crate::{
    capture::{self, Captured, Tee},
    git, meta,
    redact::Homes,
    rubyerr,
    settings::{self, Settings, keys},
    spool::Spool,
    sys,
};

/// How long to wait for stderr to reach its end after the child exited; past it (a background
/// grandchild still holds stderr) a forwarder process takes over and the run ends.
const STDERR_GRACE: Duration = Duration::from_millis(50);
/// How long the student's run may wait, after the child exited, for the metadata still being
/// gathered.
const GATHER_WAIT: Duration = Duration::from_secs(2);

/// Runs as the shim for `argv0`; never returns.
pub fn run(argv0: OsString, args: Vec<OsString>) -> ! {
    // Nothing of ours may show on the student's stderr or change the exit status: a panic in
    // the recording is caught below, silently.
    std::panic::set_hook(Box::new(|_| {}));
    let program = Path::new(&argv0)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "ruby".into());
    let settings = Settings::load();
    let Some(real) = resolve(&program, &settings) else {
        eprintln!(
            "{program}: learntrail shim found no real {program} in PATH (set REAL_{} in the agent's settings)",
            program.to_ascii_uppercase()
        );
        std::process::exit(127);
    };
    if std::env::var_os(keys::ACTIVE).is_some() {
        exec(&real, &argv0, &args); // nested inside a captured run: captured there already
    }
    let Ok((child_stderr, source)) = capture::prepare() else {
        exec(&real, &argv0, &args)
    };
    let started = SystemTime::now();
    let clock = Instant::now();
    sys::install_forwarding();
    let child = Command::new(&real)
        .arg0(&argv0)
        .args(&args)
        .stderr(child_stderr)
        .env(keys::ACTIVE, "1")
        .spawn();
    let mut child = match child {
        Ok(child) => child,
        Err(err) => {
            eprintln!("{program}: cannot run {}: {err}", real.display());
            std::process::exit(if err.kind() == std::io::ErrorKind::NotFound {
                127
            } else {
                126
            });
        }
    };
    sys::set_child(child.id());
    let limit = settings.capture_bytes() as usize;
    let tee = Tee::start(source, limit);
    let gathering = {
        let (program, real, args) = (program.clone(), real.clone(), args.clone());
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(gather(&settings, &program, &real, &args));
        });
        rx
    };
    let status = loop {
        match child.wait() {
            Ok(status) => break status,
            Err(err) if err.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => std::process::exit(1),
        }
    };
    sys::clear_child();
    let elapsed = clock.elapsed();
    let (captured, still_open) = tee.finish(STDERR_GRACE);
    if let Some(fd) = still_open {
        sys::forward_in_background(fd);
    }
    let run = Run {
        started,
        elapsed,
        status,
        captured,
    };
    // Recording must never change the outcome of the student's run, nor hold it up for long (a
    // huge or network-mounted repository): past the wait the run is not recorded.
    if let Ok(context) = gathering.recv_timeout(GATHER_WAIT) {
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| record(context, run)));
    }
    match (status.code(), status.signal()) {
        (Some(code), _) => std::process::exit(code),
        (None, Some(signal)) => sys::die_by_signal(signal),
        (None, None) => std::process::exit(1),
    }
}

/// Replaces this process with the real program: the run then happens exactly as without us.
fn exec(real: &Path, argv0: &OsString, args: &[OsString]) -> ! {
    let err = Command::new(real).arg0(argv0).args(args).exec();
    eprintln!("cannot run {}: {err}", real.display());
    std::process::exit(127)
}

/// The real program: configured (`REAL_RUBY`), else the next match in PATH that is not a shim:
/// not this binary (by device and inode, so symlinks and hard links to it are skipped) and not
/// another installed copy of it (two copies naming each other would run each other forever).
pub fn resolve(program: &str, settings: &Settings) -> Option<PathBuf> {
    let me = std::env::current_exe().ok().and_then(|p| identity(&p));
    let not_a_shim = |candidate: &Path| identity(candidate) != me && !is_shim(candidate);
    if let Some(configured) = settings.real_program(program)
        && identity(&configured).is_some()
        && not_a_shim(&configured)
    {
        return Some(configured);
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|candidate| is_executable(candidate) && not_a_shim(candidate))
}

/// True for a link to a copy of the agent's binary (whatever the link is called).
pub fn is_shim(path: &Path) -> bool {
    std::fs::canonicalize(path)
        .is_ok_and(|real| crate::settings::is_agent_name(&real.into_os_string()))
}

fn identity(path: &Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// How the run went.
struct Run {
    started: SystemTime,
    elapsed: Duration,
    status: ExitStatus,
    captured: Captured,
}

/// What the record says that does not depend on how the run goes, gathered on a thread while
/// the child runs (reading the script, the repository and the machine then costs the student
/// nothing after the child exits).
struct Context {
    spool: Spool,
    argv: Vec<String>,
    cwd: PathBuf,
    script: Option<PathBuf>,
    script_sha256: String,
    interpreter: PathBuf,
    ruby_version: String,
    git: Option<learntrail_proto::v1::GitState>,
    machine: learntrail_proto::v1::Machine,
    homes: Homes,
}

fn gather(settings: &Settings, program: &str, real: &Path, args: &[OsString]) -> Context {
    let spool = Spool::new(settings.spool_dir(), settings.spool_max_bytes());
    let cwd = std::env::current_dir().unwrap_or_default();
    let script = meta::script_from_argv(program, args).map(|s| meta::absolute(&cwd, &s));
    let ruby = if program.starts_with("ruby") {
        Some(real.to_path_buf())
    } else {
        resolve("ruby", settings)
    };
    Context {
        argv: meta::bounded_argv(program, args),
        script_sha256: script
            .as_deref()
            .and_then(meta::sha256_file)
            .unwrap_or_default(),
        git: git::state(script.as_deref().unwrap_or(&cwd)),
        // cached in our own spool dir, which the first record creates
        ruby_version: ruby
            .map(|r| meta::ruby_version(&r, &settings::cache_dir(&spool)))
            .unwrap_or_default(),
        interpreter: real.to_path_buf(),
        machine: meta::machine(),
        homes: Homes::of_current_user(),
        spool,
        cwd,
        script,
    }
}

fn record(context: Context, run: Run) -> std::io::Result<()> {
    let spool = context.spool.clone();
    let event = build_event(context, run);
    spool.write(&event.id, &event.encode_to_vec()).map(|_| ())
}

fn build_event(context: Context, run: Run) -> learntrail_proto::Event {
    let stderr = String::from_utf8_lossy(&run.captured.bytes).into_owned();
    let error = (!run.status.success())
        .then(|| {
            // the report that ended the program is at the end of stderr, past what was kept
            run.captured
                .end()
                .and_then(|end| rubyerr::parse(&String::from_utf8_lossy(&end)))
                .or_else(|| rubyerr::parse(&stderr))
        })
        .flatten();
    let signal = run.status.signal();
    let mut rubyrun = RubyRun {
        argv: context.argv,
        cwd: context.cwd.display().to_string(),
        script: context
            .script
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_default(),
        script_sha256: context.script_sha256,
        started_at: Some(meta::timestamp(run.started)),
        ended_at: Some(meta::timestamp(run.started + run.elapsed)),
        duration_ms: run.elapsed.as_millis() as u64,
        exit_code: run.status.code(),
        signal,
        signal_name: signal.map(signal_name).unwrap_or_default(),
        ruby_version: context.ruby_version,
        interpreter: context.interpreter.display().to_string(),
        stderr,
        stderr_truncated: run.captured.truncated,
        stderr_bytes: run.captured.total,
        error,
        git: context.git,
    };
    // the learner's name must not ride along in their paths; the uploader adds the pseudonym
    context.homes.run(&mut rubyrun);
    meta::event(rubyrun, context.machine, run.started)
}

fn signal_name(signal: i32) -> String {
    nix::sys::signal::Signal::try_from(signal)
        .map(|s| s.as_str().to_string())
        .unwrap_or_else(|_| format!("SIG{signal}"))
}
