use std::{
    io::{BufRead, BufReader, Read, Write},
    os::unix::process::ExitStatusExt,
    process::{Command, Stdio},
};

use learntrail_proto::Payload;
use sha2::{Digest, Sha256};

use crate::helpers::{AGENT, Lab};

#[test]
fn output_and_exit_codes_are_those_of_ruby() {
    let lab = Lab::new();
    for code in [0, 1, 42] {
        lab.clear_spool();
        let script = lab.script(
            "exit.rb",
            &format!("puts 'to stdout'\n$stdout.flush\nwarn 'to stderr'\nexit {code}\n"),
        );
        let output = lab.same(&[script.as_os_str()], b"");
        assert_eq!(output.status.code(), Some(code));
        assert_eq!(output.stdout, b"to stdout\n");
        let (event, run) = lab.only_run();
        assert_eq!(event.subject(), "events.shim.ruby_run");
        assert_eq!(run.exit_code, Some(code));
        assert_eq!(run.stderr, "to stderr\n");
        assert_eq!(run.script, script.display().to_string());
    }
}

#[test]
fn death_by_signal_is_passed_on() {
    let lab = Lab::new();
    for (signal, name) in [
        (libc::SIGTERM, "TERM"),
        (libc::SIGKILL, "KILL"),
        (libc::SIGHUP, "HUP"),
    ] {
        lab.clear_spool();
        let output = lab.same(&["-e", &format!("Process.kill(:{name}, $$); sleep 5")], b"");
        assert_eq!(output.status.signal(), Some(signal), "{name}");
        let (_, run) = lab.only_run();
        assert_eq!((run.signal, run.exit_code), (Some(signal), None));
        assert_eq!(run.signal_name, format!("SIG{name}"));
    }
}

#[test]
fn stdin_is_piped_through() {
    let lab = Lab::new();
    let input = "line one\nline two\n".repeat(1000);
    let output = lab.same(&["-e", "print STDIN.read.upcase"], input.as_bytes());
    assert_eq!(output.stdout, input.to_uppercase().as_bytes());
}

#[test]
fn a_script_read_from_stdin_is_left_to_ruby() {
    let lab = Lab::new();
    let script = "puts STDIN.class\nputs 6 * 7\n".repeat(200);
    for _ in 0..20 {
        lab.clear_spool();
        let output = lab.same(&["/dev/stdin"], script.as_bytes());
        assert_eq!(output.stdout, "IO\n42\n".repeat(200).as_bytes());
        let (_, run) = lab.only_run();
        assert_eq!(run.script, "/dev/stdin");
        assert_eq!(run.script_sha256, "", "a pipe is not hashed");
    }
}

#[test]
fn a_named_pipe_as_the_script_is_left_to_ruby() {
    let lab = Lab::new();
    let fifo = lab.work().join("piped.rb");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).unwrap();
    for shim in [false, true] {
        let writer = {
            let fifo = fifo.clone();
            std::thread::spawn(move || std::fs::write(&fifo, "puts 6 * 7\n"))
        };
        let output = Lab::output_within(lab.command(shim, &[fifo.as_os_str()]));
        assert_eq!(
            String::from_utf8_lossy(&output.stdout),
            "42\n",
            "through the shim: {shim}"
        );
        writer.join().unwrap().unwrap();
    }
    assert_eq!(lab.only_run().1.script_sha256, "", "a pipe is not hashed");
}

#[test]
fn a_second_installed_copy_of_the_agent_is_not_taken_for_ruby() {
    let lab = Lab::new();
    let other = lab.dir.path().join("other");
    std::fs::create_dir_all(other.join("bin")).unwrap();
    std::fs::copy(AGENT, other.join("shim-agent")).unwrap();
    std::os::unix::fs::symlink(other.join("shim-agent"), other.join("bin/ruby")).unwrap();
    let mut command = lab.command(true, &["-e", "puts 1; warn 2"]);
    command.env(
        "PATH",
        format!(
            "{}:{}:{}",
            lab.bin().display(),
            other.join("bin").display(),
            lab.path_without_shim
        ),
    );
    let output = Lab::output_within(command);
    assert_eq!(output.stdout, b"1\n");
    assert_eq!(output.stderr, b"2\n");
    let (_, run) = lab.only_run();
    assert!(
        !run.interpreter.starts_with(other.to_str().unwrap()),
        "{}",
        run.interpreter
    );
}

#[test]
fn a_background_grandchild_still_writes_to_stderr_after_the_program_exits() {
    let lab = Lab::new();
    let script = ["-e", "fork { sleep 1; warn 'late' }; warn 'early'"];
    let output = lab.same(&script, b"");
    assert_eq!(output.stderr, b"early\nlate\n");
    assert_eq!(lab.only_run().1.stderr, "early\n");
    // the run itself ends with the program, as it does directly, not with the grandchild
    let started = std::time::Instant::now();
    let mut child = lab
        .command(true, &script)
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    assert!(child.wait().unwrap().success());
    assert!(
        started.elapsed() < std::time::Duration::from_millis(900),
        "{:?}",
        started.elapsed()
    );
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert_eq!(stderr, "early\nlate\n");
}

#[test]
fn an_interactive_script_gets_its_answers() {
    let lab = Lab::new();
    let script = lab.script("ask.rb", "print 'name? '\n$stdout.flush\nname = gets.chomp\nprint 'age? '\n$stdout.flush\nage = gets.to_i\nputs \"hello #{name}, next year #{age + 1}\"\n");
    let mut child = lab
        .command(true, &[script.as_os_str()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut prompt = [0u8; 6];
    stdout.read_exact(&mut prompt).unwrap();
    assert_eq!(
        &prompt, b"name? ",
        "the prompt arrives before any answer is given"
    );
    stdin.write_all(b"Ada\n").unwrap();
    let mut prompt = [0u8; 5];
    stdout.read_exact(&mut prompt).unwrap();
    assert_eq!(&prompt, b"age? ");
    stdin.write_all(b"36\n").unwrap();
    let mut answer = String::new();
    stdout.read_line(&mut answer).unwrap();
    assert_eq!(answer, "hello Ada, next year 37\n");
    assert!(child.wait().unwrap().success());
}

#[test]
fn a_mebibyte_of_stderr_is_shown_whole_and_captured_up_to_the_limit() {
    let lab = Lab::new();
    let output = lab.same(
        &["-e", "$stderr.write('x' * 1048576); $stderr.write('END')"],
        b"",
    );
    assert_eq!(output.stderr.len(), 1_048_579);
    assert!(output.stderr.ends_with(b"xEND"));
    let (_, run) = lab.only_run();
    assert_eq!(run.stderr.len(), 64 * 1024);
    assert!(run.stderr_truncated);
    assert_eq!(run.stderr_bytes, 1_048_579);
}

#[test]
fn argv_with_spaces_and_unicode_arrives_intact() {
    let lab = Lab::new();
    let args = [
        "-e",
        "p ARGV",
        "two words",
        "héllo wörld",
        "日本語",
        "",
        "--flag=a b",
    ];
    let output = lab.same(&args, b"");
    assert_eq!(
        String::from_utf8(output.stdout).unwrap(),
        "[\"two words\", \"héllo wörld\", \"日本語\", \"\", \"--flag=a b\"]\n"
    );
    let (_, run) = lab.only_run();
    let expected: Vec<String> = std::iter::once("ruby")
        .chain(args)
        .map(String::from)
        .collect();
    assert_eq!(run.argv, expected);
}

#[test]
fn ruby_errors_are_parsed_into_fields() {
    let lab = Lab::new();
    let cases = [
        (
            "nomethod.rb",
            "def greet(x)\n  x.shout\nend\ngreet(nil)\n",
            "NoMethodError",
            "undefined method `shout' for nil:NilClass",
            2,
            false,
        ),
        (
            "syntax.rb",
            "def broken\n  puts 'hi'\n\n",
            "SyntaxError",
            "syntax error, unexpected end-of-input, expecting `end'",
            3,
            true,
        ),
        (
            "load.rb",
            "require 'no_such_library_here'\n",
            "LoadError",
            "cannot load such file -- no_such_library_here",
            1,
            false,
        ),
        (
            "custom.rb",
            "class GradeError < StandardError; end\n\ndef grade\n  raise GradeError, 'score out of range'\nend\ngrade\n",
            "GradeError",
            "score out of range",
            4,
            false,
        ),
    ];
    for (file, code, class, message, line, syntax) in cases {
        lab.clear_spool();
        let script = lab.script(file, code);
        let output = lab.same(&[script.as_os_str()], b"");
        assert_eq!(output.status.code(), Some(1));
        let (_, run) = lab.only_run();
        let error = run
            .error
            .unwrap_or_else(|| panic!("{file}: no error parsed from {:?}", run.stderr));
        assert_eq!(error.class_name, class, "{file}");
        assert_eq!(error.message, message, "{file}");
        assert_eq!(error.file, script.display().to_string(), "{file}");
        assert_eq!(error.line, line, "{file}");
        assert_eq!(error.syntax_error, syntax, "{file}");
    }
}

#[test]
fn metadata_describes_the_run() {
    let lab = Lab::new();
    let code = "puts 'hi'\n";
    let script = lab.script("hello.rb", code);
    lab.run(true, &["-w", "hello.rb"], b"");
    let (event, run) = lab.only_run();
    assert!(learntrail_proto::id::is_valid_id(&event.id));
    assert_eq!(run.cwd, lab.work().display().to_string());
    assert_eq!(run.script, script.display().to_string());
    assert_eq!(
        run.script_sha256,
        hex::encode(Sha256::digest(code.as_bytes()))
    );
    assert!(
        run.ruby_version.starts_with("ruby "),
        "{}",
        run.ruby_version
    );
    assert!(
        run.interpreter.ends_with("/ruby")
            && !run
                .interpreter
                .starts_with(&lab.bin().display().to_string())
    );
    let (started, ended) = (run.started_at.unwrap(), run.ended_at.unwrap());
    assert!((ended.seconds, ended.nanos) >= (started.seconds, started.nanos));
    assert_eq!(event.occurred_at, Some(started));
    let machine = event.context.unwrap().machine.unwrap();
    assert_eq!(machine.os, std::env::consts::OS);
    assert!(!machine.host.is_empty());
    assert_eq!(machine.user.len(), 32);
    assert!(
        !machine.user.contains("student7"),
        "the account name never leaves the machine"
    );
    assert_eq!(event.actor, machine.user);
    assert!(run.git.is_none(), "not in a repository");
}

fn git(dir: &std::path::Path, args: &[&str]) {
    let status = Command::new("git")
        .args(args)
        .current_dir(dir)
        .env("GIT_AUTHOR_NAME", "t")
        .env("GIT_AUTHOR_EMAIL", "t@example.com")
        .env("GIT_COMMITTER_NAME", "t")
        .env("GIT_COMMITTER_EMAIL", "t@example.com")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("git, to set up a repository for the test");
    assert!(status.success(), "git {args:?}");
}

fn git_head(repo: &std::path::Path) -> String {
    let output = Command::new("git")
        .args(["rev-parse", "HEAD"])
        .current_dir(repo)
        .output()
        .unwrap();
    String::from_utf8(output.stdout).unwrap().trim().to_string()
}

#[test]
fn git_state_comes_from_the_scripts_repository() {
    let lab = Lab::new();
    let repo = lab.work();
    git(&repo, &["init", "-q", "-b", "homework-3"]);
    let script = lab.script("solve.rb", "puts 42\n");
    git(&repo, &["add", "solve.rb"]);
    git(&repo, &["commit", "-q", "-m", "first"]);
    git(
        &repo,
        &[
            "remote",
            "add",
            "origin",
            "https://student:ghp_secret@github.com/class/homework.git",
        ],
    );
    let head = git_head(&repo);

    lab.run(true, &[script.as_os_str()], b"");
    let (_, run) = lab.only_run();
    let state = run.git.expect("git state");
    assert_eq!(state.root, repo.display().to_string());
    assert_eq!(state.branch, "homework-3");
    assert_eq!(state.commit, head);
    assert_eq!(state.remote_url, "https://github.com/class/homework.git");
    assert!(!state.dirty);

    lab.clear_spool();
    std::fs::write(&script, "puts 43 # changed\n").unwrap();
    lab.run(true, &[script.as_os_str()], b"");
    assert!(
        lab.only_run().1.git.unwrap().dirty,
        "an edited tracked file makes the tree dirty"
    );

    lab.clear_spool();
    git(&repo, &["commit", "-qam", "second"]);
    git(&repo, &["pack-refs", "--all"]);
    lab.run(true, &[script.as_os_str()], b"");
    let state = lab.only_run().1.git.unwrap();
    assert!(!state.dirty);
    let head = git_head(&repo);
    assert_eq!(state.commit, head, "resolved through packed-refs");
}

#[test]
fn the_run_happens_even_when_nothing_can_be_recorded() {
    let lab = Lab::new();
    // the spool path is under a regular file: nothing can be written there
    let blocker = lab.dir.path().join("blocker");
    std::fs::write(&blocker, "").unwrap();
    let args = ["-e", "puts 'still runs'; warn 'and warns'; exit 3"];
    let direct = lab.run(false, &args, b"");
    let shimmed = lab
        .command(true, &args)
        .env("SPOOL_DIR", blocker.join("spool"))
        .output()
        .unwrap();
    assert_eq!(
        (shimmed.stdout, shimmed.stderr, shimmed.status),
        (direct.stdout, direct.stderr, direct.status)
    );
}

#[test]
fn nested_shims_record_once() {
    let lab = Lab::new();
    // a Ruby program that runs `ruby` again: only the outer run is recorded
    let output = lab.same(&["-e", "system('ruby', '-e', 'puts :inner')"], b"");
    assert_eq!(output.stdout, b"inner\n");
    let (_, run) = lab.only_run();
    assert_eq!(
        run.argv[1..],
        [
            "-e".to_string(),
            "system('ruby', '-e', 'puts :inner')".to_string()
        ]
    );
}

#[test]
fn the_spool_quota_drops_the_oldest_runs() {
    let lab = Lab::new();
    let mut ids = Vec::new();
    for i in 0..6 {
        let output = lab
            .command(true, &["-e", &format!("warn 'x' * 300; exit {i}")])
            .env("SPOOL_MAX_BYTES", "2KiB")
            .output()
            .unwrap();
        assert_eq!(output.status.code(), Some(i));
        ids.push(lab.records().last().map(|e| e.id.clone()).unwrap());
    }
    let kept: Vec<_> = lab.records().into_iter().map(|e| e.id).collect();
    assert!(kept.len() < 6 && !kept.is_empty());
    assert_eq!(kept, ids[6 - kept.len()..], "the newest runs are kept");
    let dropped: usize = std::fs::read_to_string(lab.spool().join("dropped"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert_eq!(dropped, 6 - kept.len());
    let codes: Vec<_> = lab
        .records()
        .into_iter()
        .map(|e| match e.payload {
            Some(Payload::RubyRun(r)) => r.exit_code.unwrap(),
            _ => -1,
        })
        .collect();
    assert_eq!(codes.last(), Some(&5));
}
