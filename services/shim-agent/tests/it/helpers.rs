use std::{
    ffi::OsStr,
    io::Write,
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
};

use learntrail_proto::{Event, Message, Payload, v1::RubyRun};
use tempfile::TempDir;

pub const AGENT: &str = env!("CARGO_BIN_EXE_shim-agent");
/// Another account for the tests (root can run as it and give it files).
pub const NOBODY: u32 = 65534;

/// A lab machine in a temp dir: `bin/ruby` (and irb) linked to the agent, a spool, a home.
pub struct Lab {
    pub dir: TempDir,
    pub path_without_shim: String,
}

impl Lab {
    pub fn new() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("lt-lab-")
            .tempdir()
            .unwrap();
        std::fs::create_dir_all(dir.path().join("bin")).unwrap();
        std::fs::create_dir_all(dir.path().join("home")).unwrap();
        std::fs::create_dir_all(dir.path().join("work")).unwrap();
        for program in ["ruby", "irb"] {
            std::os::unix::fs::symlink(AGENT, dir.path().join("bin").join(program)).unwrap();
        }
        let path_without_shim = std::env::var("PATH").unwrap_or_default();
        Self {
            dir,
            path_without_shim,
        }
    }

    pub fn bin(&self) -> PathBuf {
        self.dir.path().join("bin")
    }

    pub fn spool(&self) -> PathBuf {
        self.dir.path().join("spool")
    }

    pub fn work(&self) -> PathBuf {
        self.dir.path().join("work")
    }

    pub fn home(&self) -> PathBuf {
        self.dir.path().join("home")
    }

    /// Writes a script into the work dir and returns its path.
    pub fn script(&self, name: &str, code: &str) -> PathBuf {
        let path = self.work().join(name);
        std::fs::write(&path, code).unwrap();
        path
    }

    /// `ruby <args>`, through the shim (PATH has our bin first) or directly.
    pub fn command<S: AsRef<OsStr>>(&self, shim: bool, args: &[S]) -> Command {
        let path = if shim {
            format!("{}:{}", self.bin().display(), self.path_without_shim)
        } else {
            self.path_without_shim.clone()
        };
        let mut command = Command::new("ruby");
        command
            .args(args)
            .current_dir(self.work())
            .env_clear()
            .env("PATH", path)
            .env("HOME", self.home())
            .env("USER", "student7")
            .env("LANG", "C.UTF-8")
            .env("SPOOL_DIR", self.spool())
            .env("PSEUDONYM_KEY", "lab-key")
            .env(
                "LEARNTRAIL_SHIM_CONFIG",
                self.dir.path().join("no-such-config"),
            );
        command
    }

    pub fn run<S: AsRef<OsStr>>(&self, shim: bool, args: &[S], stdin: &[u8]) -> Output {
        let mut child = self
            .command(shim, args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut input = child.stdin.take().unwrap();
        let stdin = stdin.to_vec();
        let writer = std::thread::spawn(move || {
            let _ = input.write_all(&stdin);
        });
        let output = child.wait_with_output().unwrap();
        writer.join().unwrap();
        output
    }

    /// Runs `command` (stdin closed) and returns its output, failing the test if it takes over
    /// 30 s (a hang must not hang the test run).
    pub fn output_within(mut command: Command) -> Output {
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while child.try_wait().unwrap().is_none() {
            if std::time::Instant::now() > deadline {
                let _ = child.kill();
                panic!("the run did not finish within 30 s");
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        child.wait_with_output().unwrap()
    }

    /// Runs directly and through the shim; asserts both behave the same; returns the shim's.
    pub fn same<S: AsRef<OsStr>>(&self, args: &[S], stdin: &[u8]) -> Output {
        let direct = self.run(false, args, stdin);
        let shimmed = self.run(true, args, stdin);
        assert_eq!(
            String::from_utf8_lossy(&shimmed.stdout),
            String::from_utf8_lossy(&direct.stdout),
            "stdout differs"
        );
        assert_eq!(
            String::from_utf8_lossy(&shimmed.stderr),
            String::from_utf8_lossy(&direct.stderr),
            "stderr differs"
        );
        assert_eq!(shimmed.status, direct.status, "exit status differs");
        shimmed
    }

    /// The spool's record files, oldest first.
    pub fn record_files(&self) -> Vec<PathBuf> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(self.spool())
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "pb"))
            .collect();
        files.sort();
        files
    }

    /// Every spooled event, oldest first.
    pub fn records(&self) -> Vec<Event> {
        spool_events(&self.spool())
    }

    /// The one run recorded (asserts there is exactly one).
    pub fn only_run(&self) -> (Event, RubyRun) {
        let records = self.records();
        assert_eq!(records.len(), 1, "expected one spooled run");
        let event = records.into_iter().next().unwrap();
        let Some(Payload::RubyRun(run)) = event.payload.clone() else {
            panic!("not a ruby run")
        };
        (event, run)
    }

    /// Makes the spool a shared one, as the system install does: owned by root, mode `1733`, in a
    /// lab other accounts can reach.
    pub fn share_spool(&self) {
        use std::os::unix::fs::PermissionsExt;
        let open = std::fs::Permissions::from_mode;
        std::fs::set_permissions(self.dir.path(), open(0o755)).unwrap();
        std::fs::set_permissions(self.work(), open(0o777)).unwrap();
        std::fs::create_dir_all(self.spool()).unwrap();
        std::fs::set_permissions(self.spool(), open(0o1733)).unwrap();
    }

    /// `ruby <args>` through the shim, run by the account `uid` (root in the tests can do that).
    pub fn command_as<S: AsRef<OsStr>>(&self, uid: u32, args: &[S]) -> Command {
        let shim = self.command(true, args);
        let mut command = Command::new("setpriv");
        command
            .args([
                format!("--reuid={uid}"),
                format!("--regid={uid}"),
                "--clear-groups".into(),
                "--".into(),
                "ruby".into(),
            ])
            .args(args)
            .current_dir(self.work())
            .env_clear()
            .envs(shim.get_envs().filter_map(|(k, v)| Some((k, v?))));
        command
    }

    pub fn clear_spool(&self) {
        let _ = std::fs::remove_dir_all(self.spool());
    }

    pub fn agent(&self, args: &[&str]) -> Command {
        let mut command = Command::new(AGENT);
        command
            .args(args)
            .env_clear()
            .env("PATH", &self.path_without_shim)
            .env("HOME", self.home())
            .env("SPOOL_DIR", self.spool())
            .env(
                "LEARNTRAIL_SHIM_CONFIG",
                self.dir.path().join("no-such-config"),
            );
        command
    }
}

pub fn spool_events(dir: &Path) -> Vec<Event> {
    let mut names: Vec<_> = std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|x| x == "pb"))
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
        .iter()
        .map(|p| Event::decode(std::fs::read(p).unwrap().as_slice()).unwrap())
        .collect()
}
