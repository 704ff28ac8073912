//! Metadata of one run: the script and its hash, the machine, the learner's pseudonym, the Ruby
//! version (cached per interpreter), and the `RubyRun` event built from them.

use std::{
    ffi::OsString,
    fs,
    io::Read,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{SystemTime, UNIX_EPOCH},
};

use learntrail_proto::{
    Event, Payload, id,
    subject::{kind, source},
    v1::{Context, Machine, RubyRun},
    wkt::Timestamp,
};
use sha2::{Digest, Sha256};

/// Hash at most this much of a script (students' scripts are small; a huge file is not hashed).
const MAX_HASHED_SCRIPT: u64 = 16 * 1024 * 1024;
const VERSION_CACHE: &str = ".ruby-versions";

/// Ruby's short options that take a value: the rest of their argument, else the next one
/// (`-C` and `-X` change directory).
const SHORT_WITH_VALUE: [char; 6] = ['I', 'r', 'C', 'X', 'E', 'e'];
/// Short options that take the rest of their argument, if any, and never the next one (`-x`
/// changes directory to it).
const SHORT_WITH_ATTACHED: [char; 6] = ['0', 'F', 'i', 'W', 'x', 'K'];
/// Long options that take `=value` or, without it, the next argument (`--parser` and
/// `--crash-report` are Ruby 3.3's).
const LONG_WITH_VALUE: [&str; 9] = [
    "--enable",
    "--disable",
    "--encoding",
    "--external-encoding",
    "--internal-encoding",
    "--dump",
    "--backtrace-limit",
    "--parser",
    "--crash-report",
];

/// The script a `ruby` command line runs, as Ruby finds it: the first argument that is not an
/// option (or the one after `--`), under the `-C` directories, unless the program comes from
/// `-e` (alone or in a bundle such as `-ne`) or stdin (`-`). Other programs (irb, rake) have none.
pub fn script_from_argv(program: &str, args: &[OsString]) -> Option<String> {
    if !program.starts_with("ruby") {
        return None;
    }
    let mut args = args.iter().map(|a| a.to_string_lossy());
    let mut dir = PathBuf::new();
    let script = loop {
        let arg = args.next()?;
        match arg.as_ref() {
            "--" => break args.next().filter(|a| a != "-")?,
            "-" => return None,
            long if long.starts_with("--") => {
                if LONG_WITH_VALUE.contains(&long) {
                    args.next();
                }
            }
            short if short.starts_with('-') => {
                for (at, option) in short.char_indices().skip(1) {
                    if option == 'e' {
                        return None; // the program is the -e code
                    }
                    if SHORT_WITH_VALUE.contains(&option) {
                        let attached = &short[at + option.len_utf8()..];
                        let value = if attached.is_empty() {
                            args.next()?.into_owned()
                        } else {
                            attached.to_string()
                        };
                        if option == 'C' || option == 'X' {
                            dir.push(value);
                        }
                        break;
                    }
                    if SHORT_WITH_ATTACHED.contains(&option) {
                        let attached = &short[at + option.len_utf8()..];
                        if option == 'x' && !attached.is_empty() {
                            dir.push(attached);
                        }
                        break;
                    }
                }
            }
            _ => break arg,
        }
    };
    Some(dir.join(script.as_ref()).to_string_lossy().into_owned())
}

/// The most of each argument, and of all arguments together, that a record keeps (a run may have
/// megabytes of arguments; the bus takes messages of about 1 MiB).
const MAX_ARG_BYTES: usize = 4 * 1024;
const MAX_ARGV_BYTES: usize = 64 * 1024;

/// The command line for the record: the program, then its arguments, each cut at
/// `MAX_ARG_BYTES` and the list cut at `MAX_ARGV_BYTES` (a cut is marked with `…`).
pub fn bounded_argv(program: &str, args: &[OsString]) -> Vec<String> {
    let mut total = 0;
    let mut argv = vec![program.to_string()];
    for arg in args {
        let mut arg = arg.to_string_lossy().into_owned();
        if arg.len() > MAX_ARG_BYTES {
            let mut cut = MAX_ARG_BYTES;
            while !arg.is_char_boundary(cut) {
                cut -= 1;
            }
            arg.truncate(cut);
            arg.push('…');
        }
        total += arg.len();
        if total > MAX_ARGV_BYTES {
            argv.push(format!("… {} more arguments", args.len() + 1 - argv.len()));
            break;
        }
        argv.push(arg);
    }
    argv
}

/// Hex SHA-256 of a regular file's contents. Anything else (`ruby /dev/stdin`, `ruby <(...)`,
/// a named pipe) is left alone: reading it would take the program's input.
pub fn sha256_file(path: &Path) -> Option<String> {
    // stat first: even opening a named pipe would let its writer go ahead and lose its data
    let meta = fs::metadata(path).ok()?;
    if !meta.is_file() || meta.len() > MAX_HASHED_SCRIPT {
        return None;
    }
    let file = fs::File::open(path).ok()?;
    if !file.metadata().ok()?.is_file() {
        return None;
    }
    let mut hasher = Sha256::new();
    let mut reader = std::io::BufReader::new(file);
    let mut buffer = [0u8; 16 * 1024];
    loop {
        let n = reader.read(&mut buffer).ok()?;
        if n == 0 {
            break;
        }
        hasher.update(&buffer[..n]);
    }
    Some(hex::encode(hasher.finalize()))
}

/// The learner pseudonym of a local account: the one shared implementation,
/// [`learntrail_proto::pseudonym::pseudonym`] (notebook-scanner uses it too). Computed by the
/// uploader from the record file's owner ([`crate::record`]), never from the record.
pub use learntrail_proto::pseudonym::{UNKEYED_ACTOR, pseudonym};

/// The machine, without the learner: the uploader fills `user` in (see [`pseudonym`]).
pub fn machine() -> Machine {
    Machine {
        host: nix::unistd::gethostname()
            .map(|h| h.to_string_lossy().into_owned())
            .unwrap_or_default(),
        os: match std::env::consts::OS {
            "macos" => "macos".into(),
            other => other.into(),
        },
        user: String::new(),
        arch: std::env::consts::ARCH.into(),
    }
}

/// `ruby -v` of `interpreter`, cached in `cache_dir` by path, size and mtime, so only the first
/// run after an upgrade pays for asking.
pub fn ruby_version(interpreter: &Path, cache_dir: &Path) -> String {
    let Ok(meta) = fs::metadata(interpreter) else {
        return String::new();
    };
    let stamp = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_secs());
    let key = format!("{}\t{}\t{}", interpreter.display(), meta.len(), stamp);
    let cache = cache_dir.join(VERSION_CACHE);
    let cached = read_cache(&cache);
    if let Some(version) = cached
        .lines()
        .find_map(|l| l.strip_prefix(&key)?.strip_prefix('\t'))
    {
        return version.to_string();
    }
    let version = Command::new(interpreter)
        .arg("-v")
        .env(crate::settings::keys::ACTIVE, "1") // a shim found here runs straight through
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|text| text.lines().next().map(|l| l.trim().to_string()))
        .unwrap_or_default();
    // cached even when empty (not a Ruby, or it failed): asking again each run would cost a spawn
    {
        let kept: String = cached
            .lines()
            .filter(|l| !l.starts_with(&format!("{}\t", interpreter.display())))
            .map(|l| format!("{l}\n"))
            .collect();
        let _ = crate::spool::write_replacing(
            &cache,
            format!("{kept}{key}\t{version}\n").as_bytes(),
            0o644,
        );
    }
    version
}

/// The version cache, if it is a regular file of this account's (never through a link).
fn read_cache(path: &Path) -> String {
    use std::os::unix::fs::MetadataExt;
    let Ok(file) = crate::spool::open_nofollow(path) else {
        return String::new();
    };
    let mut text = String::new();
    if file
        .metadata()
        .is_ok_and(|m| m.is_file() && m.uid() == nix::unistd::geteuid().as_raw())
    {
        let _ = file.take(1 << 20).read_to_string(&mut text);
    }
    text
}

pub fn timestamp(time: SystemTime) -> Timestamp {
    let since = time.duration_since(UNIX_EPOCH).unwrap_or_default();
    Timestamp {
        seconds: since.as_secs() as i64,
        nanos: since.subsec_nanos() as i32,
    }
}

/// Resolves a script path as given on the command line against the working directory.
pub fn absolute(cwd: &Path, script: &str) -> PathBuf {
    let path = Path::new(script);
    if path.is_absolute() {
        path.to_path_buf()
    } else {
        cwd.join(path)
    }
}

/// Wraps a run into the envelope. The actor is left to the uploader.
pub fn event(run: RubyRun, machine: Machine, started: SystemTime) -> Event {
    Event {
        id: id::new_id(),
        occurred_at: Some(timestamp(started)),
        received_at: None,
        source: source::SHIM.into(),
        kind: kind::RUBY_RUN.into(),
        actor: String::new(),
        context: Some(Context {
            machine: Some(machine),
            ..Default::default()
        }),
        payload: Some(Payload::RubyRun(run)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<OsString> {
        list.iter().map(OsString::from).collect()
    }

    #[test]
    fn finds_the_script_in_ruby_argv() {
        assert_eq!(
            script_from_argv("ruby", &args(&["hello.rb", "x"])).as_deref(),
            Some("hello.rb")
        );
        assert_eq!(
            script_from_argv("ruby", &args(&["-w", "-I", "lib", "-rjson", "app.rb"])).as_deref(),
            Some("app.rb")
        );
        assert_eq!(
            script_from_argv("ruby", &args(&["-e", "puts 1", "x.rb"])),
            None
        );
        assert_eq!(script_from_argv("ruby", &args(&["-eputs 1"])), None);
        assert_eq!(script_from_argv("ruby", &args(&["-"])), None);
        assert_eq!(
            script_from_argv("ruby", &args(&["--", "-weird.rb"])).as_deref(),
            Some("-weird.rb")
        );
        assert_eq!(script_from_argv("ruby", &args(&[])), None);
        assert_eq!(script_from_argv("irb", &args(&["x.rb"])), None);
    }

    /// Each as `ruby` 3.1 reads it (checked by hand against the real interpreter).
    #[test]
    fn finds_the_script_as_ruby_does() {
        let script = |list: &[&str]| script_from_argv("ruby", &args(list));
        // -n/-p with -e: the file is the loop's input, not a script
        assert_eq!(script(&["-ne", "p $_", "input.txt"]), None);
        assert_eq!(script(&["-p", "-e", "1", "input.txt"]), None);
        assert_eq!(script(&["-wne1", "input.txt"]), None);
        // -C: the script is under that directory, and several add up
        assert_eq!(script(&["-C", "sub", "h.rb"]).as_deref(), Some("sub/h.rb"));
        assert_eq!(script(&["-Csub", "h.rb"]).as_deref(), Some("sub/h.rb"));
        assert_eq!(script(&["-X", "sub", "h.rb"]).as_deref(), Some("sub/h.rb"));
        assert_eq!(script(&["-xsub", "x.rb"]).as_deref(), Some("sub/x.rb"));
        assert_eq!(script(&["-x", "x.rb"]).as_deref(), Some("x.rb"));
        assert_eq!(
            script(&["--parser", "prism", "h.rb"]).as_deref(),
            Some("h.rb")
        );
        assert_eq!(
            script(&["-C", "sub", "-C", "..", "h.rb"]).as_deref(),
            Some("sub/../h.rb")
        );
        assert_eq!(
            script(&["-C", "sub", "/abs/h.rb"]).as_deref(),
            Some("/abs/h.rb")
        );
        // long options that take the next argument
        assert_eq!(
            script(&["--disable", "gems", "h.rb"]).as_deref(),
            Some("h.rb")
        );
        assert_eq!(script(&["--disable=gems", "h.rb"]).as_deref(), Some("h.rb"));
        assert_eq!(
            script(&["--encoding", "UTF-8", "--backtrace-limit", "3", "h.rb"]).as_deref(),
            Some("h.rb")
        );
        assert_eq!(script(&["--verbose", "h.rb"]).as_deref(), Some("h.rb"));
        // bundles and attached values
        assert_eq!(script(&["-wIlib", "h.rb"]).as_deref(), Some("h.rb"));
        assert_eq!(script(&["-wI", "lib", "h.rb"]).as_deref(), Some("h.rb"));
        assert_eq!(
            script(&["-0777", "-W:no-deprecated", "h.rb"]).as_deref(),
            Some("h.rb")
        );
        assert_eq!(script(&["-rjson"]), None);
    }

    #[test]
    fn long_command_lines_are_bounded() {
        let long = "é".repeat(3000); // 6000 bytes
        let argv = bounded_argv("ruby", &args(&["x.rb", &long]));
        assert_eq!(argv[..2], ["ruby", "x.rb"]);
        assert!(argv[2].len() <= MAX_ARG_BYTES + '…'.len_utf8() && argv[2].ends_with('…'));
        let many: Vec<String> = (0..100).map(|_| "a".repeat(1000)).collect();
        let many: Vec<&str> = many.iter().map(String::as_str).collect();
        let argv = bounded_argv("ruby", &args(&many));
        assert_eq!(
            argv.len(),
            67,
            "the program, 65 arguments and the count of the rest"
        );
        assert_eq!(argv[66], "… 35 more arguments");
    }

    #[test]
    fn scripts_that_are_pipes_are_not_read() {
        let dir = tempfile::tempdir().unwrap();
        let script = dir.path().join("hello.rb");
        fs::write(&script, "puts 1\n").unwrap();
        assert_eq!(
            sha256_file(&script).as_deref(),
            Some("82be84ab06491c73799a004332cfb83dbb7005b56e22eb9e210af96bb870905a")
        );
        let fifo = dir.path().join("fifo.rb");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || tx.send(sha256_file(&fifo)));
        let hashed = rx.recv_timeout(std::time::Duration::from_secs(5));
        assert_eq!(
            hashed,
            Ok(None),
            "a named pipe is neither waited on nor read"
        );
    }

    #[test]
    fn pseudonyms_are_stable_and_keyed() {
        let a = pseudonym("k1", "alice");
        assert_eq!(a, pseudonym("k1", "alice"));
        assert_ne!(a, pseudonym("k2", "alice"));
        assert_ne!(a, pseudonym("k1", "bob"));
        assert_eq!(a.len(), 32);
        assert!(!a.contains("alice"));
    }
}
