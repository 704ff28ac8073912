use std::{
    io::{BufRead, BufReader, Read, Write},
    os::unix::process::ExitStatusExt,
    process::{Command, Stdio},
};

use learntrail_proto::Payload;
use sha2::{Digest, Sha256};

use crate::helpers::{AGENT, Lab, NOBODY};

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
fn a_grandchild_writing_through_the_hand_over_loses_and_reorders_nothing() {
    let lab = Lab::new();
    // the grandchild writes before, while and after the shim hands the stream over
    let script = [
        "-e",
        "fork { 200_000.times { |i| $stderr.write(\"line #{i}\\n\") } }; exit 0",
    ];
    for round in 0..5 {
        let child = lab
            .command(true, &script)
            .stdin(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let output = child.wait_with_output().unwrap();
        assert!(output.status.success());
        let stderr = String::from_utf8(output.stderr).unwrap();
        let lines: Vec<&str> = stderr.lines().collect();
        let expected: Vec<String> = (0..200_000).map(|i| format!("line {i}")).collect();
        if lines != expected {
            let first = lines
                .iter()
                .zip(&expected)
                .position(|(a, b)| a != b)
                .unwrap_or(lines.len().min(expected.len()));
            panic!(
                "round {round}: {} of 200000 lines, first difference at {first}: {:?}",
                lines.len(),
                lines.get(first)
            );
        }
    }
}

#[test]
fn a_closed_stderr_stops_the_program_as_it_does_directly() {
    // `ruby ... 2>&1 >/dev/null | head -1`: the reader of stderr is gone. Directly, Ruby's next
    // write fails (Errno::EPIPE), it exits 1 and never reaches the end of the script
    let lab = Lab::new();
    let script = [
        "-e",
        "100_000.times { |i| $stderr.puts i }; File.write('reached-the-end', '1')",
    ];
    for shim in [false, true] {
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        let mut child = lab
            .command(shim, &script)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(writer)
            .spawn()
            .unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            assert!(std::time::Instant::now() < deadline, "shim {shim}: no end");
            std::thread::sleep(std::time::Duration::from_millis(20));
        };
        assert_eq!(status.code(), Some(1), "shim {shim}");
        assert!(
            !lab.work().join("reached-the-end").exists(),
            "shim {shim}: the program ran on past its closed stderr"
        );
    }
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
fn the_error_that_ends_a_run_is_parsed_past_the_captured_limit() {
    let lab = Lab::new();
    let script = lab.dir.path().join("noisy.rb");
    // a report rescued and printed early, then 200 KiB of warnings, then the fatal error
    std::fs::write(
        &script,
        "begin; raise IOError, 'early'; rescue => e; warn e.full_message; end\n\
         4000.times { |i| warn \"step #{i}: still working on the assignment\" }\n\
         def finish(x)\n  x.fetch(:score)\nend\nfinish(nil)\n",
    )
    .unwrap();
    let output = lab.same(&[script.as_os_str().to_str().unwrap()], b"");
    assert!(!output.status.success());
    let (_, run) = lab.only_run();
    assert!(run.stderr_truncated);
    assert!(run.stderr_bytes > 150_000, "{}", run.stderr_bytes);
    assert_eq!(
        run.stderr.len(),
        64 * 1024,
        "the record keeps the first bytes"
    );
    let error = run.error.expect("the fatal report is parsed");
    assert_eq!(error.class_name, "NoMethodError", "{error:?}");
    assert_eq!(error.line, 4);
    assert!(error.file.ends_with("noisy.rb"), "{error:?}");
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
            // raised in a rescue: Ruby 3.1 prints the cause's report after the error's
            "cause.rb",
            "begin\n  Integer(\"x\")\nrescue => e\n  raise ArgumentError, \"bad input\"\nend\n",
            "ArgumentError",
            "bad input",
            4,
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
        (
            // an empty message: Ruby prints the class alone
            "empty.rb",
            "\nraise ArgumentError, ''\n",
            "ArgumentError",
            "",
            2,
            false,
        ),
        (
            // a parser warning comes before the syntax error
            "warned.rb",
            "x = 1\nif x = 2 then puts 1 end\ndef broken\n",
            "SyntaxError",
            "syntax error, unexpected end-of-input",
            3,
            true,
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

    // a thread's report comes first; the program ended with the NoMethodError (run through the
    // shim alone: the report names the thread's address, which differs from run to run)
    lab.clear_spool();
    let threads = lab.script(
        "thread.rb",
        "t = Thread.new { raise 'worker failed' }\nbegin; t.join; rescue; end\nnil.upcase\n",
    );
    assert_eq!(
        lab.run(true, &[threads.as_os_str()], b"").status.code(),
        Some(1)
    );
    let (_, run) = lab.only_run();
    let error = run.error.unwrap_or_else(|| panic!("{:?}", run.stderr));
    assert!(run.stderr.contains("worker failed"), "{}", run.stderr);
    assert_eq!(
        (error.class_name.as_str(), error.line),
        ("NoMethodError", 3)
    );

    // a syntax error in a required file: its own file and line, not the require's
    lab.clear_spool();
    let lib = lab.script("broken_lib.rb", "def x\n  puts 1\n");
    let main = lab.script("main.rb", "require_relative 'broken_lib'\nputs 2\n");
    assert_eq!(lab.same(&[main.as_os_str()], b"").status.code(), Some(1));
    let (_, run) = lab.only_run();
    let error = run.error.unwrap_or_else(|| panic!("{:?}", run.stderr));
    assert_eq!(
        (
            error.class_name.as_str(),
            error.file,
            error.line,
            error.syntax_error
        ),
        ("SyntaxError", lib.display().to_string(), 2, true)
    );
    assert!(
        error.message.starts_with("syntax error"),
        "{}",
        error.message
    );

    // a script that is not there: the interpreter's own LoadError, with no place
    lab.clear_spool();
    let missing = lab.script("gone.rb", "");
    std::fs::remove_file(&missing).unwrap();
    assert_eq!(lab.same(&[missing.as_os_str()], b"").status.code(), Some(1));
    let (_, run) = lab.only_run();
    let error = run.error.unwrap_or_else(|| panic!("{:?}", run.stderr));
    assert_eq!(
        (error.class_name.as_str(), error.line, error.file.as_str()),
        ("LoadError", 0, "")
    );
    assert!(error.message.contains("gone.rb"), "{}", error.message);
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
    assert_eq!(
        (event.actor.as_str(), machine.user.as_str()),
        ("", ""),
        "the record names no learner: the uploader takes the file's owner"
    );
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

#[test]
fn records_are_private_to_their_owner() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let lab = Lab::new();
    lab.run(true, &["-e", "warn 'secret stderr'"], b"");
    let mode = |path: &std::path::Path| std::fs::metadata(path).unwrap().permissions().mode();
    assert_eq!(mode(&lab.spool()) & 0o7777, 0o700, "a spool of one's own");
    let record = only_record_file(&lab);
    assert_eq!(mode(&record) & 0o777, 0o600);

    // a shared spool (the system install's): each student writes, none reads, lists or
    // deletes another's records
    let lab = Lab::new();
    lab.share_spool();
    let output = lab
        .command_as(NOBODY, &["-e", "warn 'nobody s stderr'"])
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    let record = only_record_file(&lab);
    let meta = std::fs::metadata(&record).unwrap();
    assert_eq!(
        (meta.uid(), meta.permissions().mode() & 0o777),
        (NOBODY, 0o600)
    );
    let other = NOBODY - 1;
    let as_other = |program: &str, arg: &std::path::Path| {
        Command::new("setpriv")
            .args([
                format!("--reuid={other}"),
                format!("--regid={other}"),
                "--clear-groups".into(),
                program.into(),
            ])
            .arg(arg)
            .output()
            .unwrap()
            .status
            .success()
    };
    assert!(!as_other("cat", &record), "another student cannot read it");
    assert!(!as_other("ls", &lab.spool()), "nor list the spool");
    let rm = Command::new("setpriv")
        .args([
            format!("--reuid={other}"),
            format!("--regid={other}"),
            "--clear-groups".into(),
            "rm".into(),
            "-f".into(),
        ])
        .arg(&record)
        .output()
        .unwrap();
    assert!(!rm.status.success() && record.exists(), "nor delete it");
    // and a second student's run lands beside it
    let output = lab
        .command_as(other, &["-e", "warn 'other'"])
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    assert_eq!(lab.records().len(), 2);
}

fn only_record_file(lab: &Lab) -> std::path::PathBuf {
    let records = lab.record_files();
    assert_eq!(records.len(), 1, "{records:?}");
    records.into_iter().next().unwrap()
}

#[test]
fn no_recorded_path_or_text_names_the_home() {
    let lab = Lab::new();
    let home = lab.home().join("student7");
    let hw = home.join("hw");
    std::fs::create_dir_all(&hw).unwrap();
    git(&home, &["init", "-q", "-b", "main"]);
    let script = hw.join("boom.rb");
    std::fs::write(
        &script,
        "warn __FILE__\nwarn Dir.pwd\nFile.read(File.join(Dir.pwd, 'missing'))\n",
    )
    .unwrap();
    let output = lab
        .command(true, &[script.as_os_str(), home.join("arg").as_os_str()])
        .current_dir(&hw)
        .env("HOME", &home)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("student7"),
        "the student still sees their paths"
    );
    let (event, run) = lab.only_run();
    let recorded = format!("{event:?}");
    assert!(!recorded.contains("student7"), "{recorded}");
    assert_eq!(run.cwd, "~/hw");
    assert_eq!(run.script, "~/hw/boom.rb");
    assert_eq!(run.argv[1..], ["~/hw/boom.rb", "~/arg"]);
    assert!(
        run.stderr.starts_with("~/hw/boom.rb\n~/hw\n"),
        "{}",
        run.stderr
    );
    assert_eq!(run.error.unwrap().file, "~/hw/boom.rb");
    assert_eq!(run.git.unwrap().root, "~");
}

#[test]
fn a_record_reaches_the_disk_before_its_name() {
    let lab = Lab::new();
    let trace = lab.dir.path().join("trace");
    let shim = lab.command(true, &["-e", "warn 1"]);
    let output = Command::new("strace")
        .args([
            "-f",
            "-qq",
            "-e",
            "trace=openat,fsync,fdatasync,rename,renameat,renameat2",
            "-o",
        ])
        .arg(&trace)
        .arg("--")
        .arg("ruby")
        .args(["-e", "warn 1"])
        .current_dir(lab.work())
        .env_clear()
        .envs(shim.get_envs().filter_map(|(k, v)| Some((k, v?))))
        .output()
        .expect("strace, to watch the shim's system calls (apt-get install strace)");
    assert!(output.status.success(), "{output:?}");
    let trace = std::fs::read_to_string(trace).unwrap();
    let lines: Vec<&str> = trace.lines().collect();
    let opened = lines
        .iter()
        .position(|l| {
            l.contains("openat(")
                && l.contains("/.tmp-")
                && l.contains("O_CREAT")
                && l.contains(", 0600)")
        })
        .unwrap_or_else(|| panic!("the record's temp file is created: {trace}"));
    let fd = lines[opened].rsplit("= ").next().unwrap().trim();
    let pid = lines[opened].split_whitespace().next().unwrap();
    let renamed = lines
        .iter()
        .position(|l| l.contains("rename") && l.contains("/.tmp-") && l.contains(".pb\""))
        .unwrap_or_else(|| panic!("the record is renamed into place: {trace}"));
    let synced = lines[opened..renamed].iter().any(|l| {
        l.starts_with(pid)
            && (l.contains(&format!("fdatasync({fd})")) || l.contains(&format!("fsync({fd})")))
    });
    assert!(
        synced,
        "fsync before the rename:\n{}",
        lines[opened..=renamed].join("\n")
    );
}
