//! Ruby's uncaught-exception and syntax-error reports, parsed from stderr into class, message,
//! file and line. Handles Ruby 2.x/3.1–3.3 (`` `label' `` quoting) and 3.4 (`'Class#label'`),
//! error_highlight snippets, did_you_mean hints, syntax_suggest blocks, Prism's code frames, an
//! optional `<program>: ` prefix and ANSI highlighting on a terminal.

use learntrail_proto::v1::RubyError;

/// Parses the error report that ended the program: the last one in `stderr` (a report the
/// program printed earlier, rescuing an error with `warn e.full_message`, and anything
/// `at_exit` printed come before it), if any.
pub fn parse(stderr: &str) -> Option<RubyError> {
    let text = strip_ansi(stderr);
    let lines: Vec<&str> = text.lines().collect();
    parse_runtime(&lines)
        .or_else(|| parse_syntax(&lines))
        .or_else(|| parse_interpreter(&lines))
}

/// The interpreter's own refusal, with no file or line: `ruby: No such file or directory --
/// nothere.rb (LoadError)`, a learner's most common first error.
fn parse_interpreter(lines: &[&str]) -> Option<RubyError> {
    lines.iter().find_map(|line| {
        let (program, rest) = line.split_once(": ")?;
        let name = program.rsplit('/').next()?;
        if !name.starts_with("ruby") || name.contains(' ') {
            return None;
        }
        let (message, class) = split_class_suffix(rest)?;
        Some(RubyError {
            class_name: class.to_string(),
            message: message.to_string(),
            file: String::new(),
            line: 0,
            syntax_error: class == "SyntaxError",
        })
    })
}

/// A frame: `<file>:<line>:in <quote><label><quote>` (after an optional `\tfrom `).
struct Frame<'a> {
    file: &'a str,
    line: u32,
    /// What follows the frame's closing quote.
    rest: &'a str,
}

fn parse_frame(line: &str) -> Option<Frame<'_>> {
    let at = line.find(":in ")?;
    let (location, after) = (&line[..at], &line[at + 4..]);
    let (file, number) = location.rsplit_once(':')?;
    let line_number = number.parse().ok()?;
    let mut chars = after.char_indices();
    let (_, open) = chars.next()?;
    if open != '`' && open != '\'' {
        return None;
    }
    let close = after[1..].find('\'')? + 1;
    Some(Frame {
        file,
        line: line_number,
        rest: &after[close + 1..],
    })
}

/// A report's first line: `<file>:<line>:in '<label>': <message> (<Class>)`.
fn report_header(line: &str) -> Option<Frame<'_>> {
    if line.starts_with('\t') {
        return None;
    }
    let frame = parse_frame(line)?;
    frame.rest.starts_with(": ").then_some(frame)
}

/// The first line of the report that ended the program. A report is a header, its backtrace
/// (`\tfrom …` lines) and, since Ruby 3.1, the report of its `cause` straight after the
/// backtrace: a header right after a backtrace line belongs to the report before it. The
/// program's report is the last one (a report printed earlier by a rescue, and `at_exit`
/// output, come before it), leaving out a thread's (`#<Thread:…> terminated with exception`
/// above it).
fn fatal_header<'a>(lines: &[&'a str]) -> Option<(usize, Frame<'a>)> {
    let mut last = None;
    // whether a report is open, and whether it is a thread's (the report that follows a
    // thread's backtrace is taken as the program's own: when the main thread joins, the same
    // error ends the program)
    let mut open: Option<bool> = None;
    for (i, line) in lines.iter().enumerate() {
        let Some(frame) = report_header(line) else {
            continue;
        };
        let previous = i.checked_sub(1).map(|p| lines[p]);
        if previous.is_some_and(|p| p.starts_with('\t')) && open == Some(false) {
            continue; // a cause
        }
        let thread = previous.is_some_and(|p| p.contains("terminated with exception"));
        open = Some(thread);
        if !thread {
            last = Some((i, frame));
        }
    }
    last
}

fn parse_runtime(lines: &[&str]) -> Option<RubyError> {
    let (index, frame) = fatal_header(lines)?;
    let body = &frame.rest[2..];
    let (message, class_name) = match split_class_suffix(body) {
        Some((message, class)) => (message.to_string(), class.to_string()),
        // `raise ""` prints no class: Ruby's own words for it
        None if body == "unhandled exception" => (String::new(), "RuntimeError".to_string()),
        // an empty message prints the class alone: `raise ArgumentError, ""`, and Ctrl-C
        // (`Interrupt`)
        None if is_constant_path(body) => (String::new(), body.to_string()),
        None => (body.to_string(), String::new()),
    };
    let (mut file, mut line) = user_location(&frame, &lines[index + 1..]);
    let mut message = message;
    // a syntax error in a file it required: the report sits on the `require` line, the error's
    // own place leads its message (`main.rb:1:in 'require_relative': lib.rb:2: syntax error…`)
    if class_name == "SyntaxError"
        && let Some((at, number, detail)) = syntax_location(&message)
    {
        (file, line) = (at.to_string(), number);
        message = detail.to_string();
    }
    Some(RubyError {
        class_name,
        message,
        file,
        line,
        syntax_error: class_is_syntax(&frame, body),
    })
}

fn class_is_syntax(_frame: &Frame<'_>, body: &str) -> bool {
    body.ends_with("(SyntaxError)")
}

/// The report's own location, unless it is inside Ruby itself (`<internal:…>`, the standard
/// library, gems): then the first backtrace frame in the learner's code.
fn user_location(header: &Frame<'_>, rest: &[&str]) -> (String, u32) {
    let internal = |file: &str| {
        file.starts_with("<internal:") || file.contains("/lib/ruby/") || file.contains("/gems/")
    };
    if internal(header.file) {
        let user_frame = rest
            .iter()
            .filter_map(|l| l.strip_prefix("\tfrom "))
            .filter_map(parse_frame)
            .find(|f| !internal(f.file));
        if let Some(frame) = user_frame {
            return (frame.file.to_string(), frame.line);
        }
    }
    (header.file.to_string(), header.line)
}

/// `message (Some::Class)` → (`message`, `Some::Class`).
fn split_class_suffix(text: &str) -> Option<(&str, &str)> {
    let inner = text.strip_suffix(')')?;
    let open = inner.rfind('(')?;
    let class = &inner[open + 1..];
    is_constant_path(class).then(|| (inner[..open].trim_end(), class))
}

/// `Some::Class`: a class name as Ruby prints it.
fn is_constant_path(text: &str) -> bool {
    !text.is_empty()
        && text.split("::").all(|part| {
            part.chars().next().is_some_and(|c| c.is_ascii_uppercase())
                && part.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        })
}

fn parse_syntax(lines: &[&str]) -> Option<RubyError> {
    let whole_mentions_class = lines.iter().any(|l| l.contains("(SyntaxError)"));
    let has_frames = lines.iter().any(|l| parse_frame(l).is_some());
    for (index, raw) in lines.iter().enumerate() {
        let Some((file, line, message)) = syntax_location(raw) else {
            continue;
        };
        let message = message.strip_suffix(" (SyntaxError)").unwrap_or(message);
        // the parser's warnings come before its error, in the same `file:line: ` form
        if message.starts_with("warning: ") {
            continue;
        }
        let plausible = whole_mentions_class || (message.contains("syntax error") && !has_frames);
        if !plausible {
            continue;
        }
        let message = if message.starts_with("syntax error") && message.ends_with("found") {
            prism_detail(&lines[index + 1..]).unwrap_or(message)
        } else {
            message
        };
        return Some(RubyError {
            class_name: "SyntaxError".into(),
            message: message.to_string(),
            file: file.to_string(),
            line,
            syntax_error: true,
        });
    }
    None
}

/// `[<prefix>: ]<file>:<line>: <message>`, trying after each `: ` for a program-name prefix.
fn syntax_location(line: &str) -> Option<(&str, u32, &str)> {
    let mut start = 0;
    loop {
        let candidate = &line[start..];
        if let Some(found) = file_line_message(candidate) {
            return Some(found);
        }
        start += candidate.find(": ")? + 2;
    }
}

fn file_line_message(text: &str) -> Option<(&str, u32, &str)> {
    let mut parts = text.splitn(3, ':');
    let file = parts.next()?;
    let number = parts.next()?;
    let message = parts.next()?.strip_prefix(' ')?;
    if file.is_empty() || file.starts_with(' ') || file.contains(": ") {
        return None;
    }
    Some((file, number.parse().ok()?, message))
}

/// Prism (3.4) puts the detail under the code frame: `      |    ^ unexpected end-of-input, …`.
fn prism_detail<'a>(rest: &[&'a str]) -> Option<&'a str> {
    rest.iter().find_map(|l| {
        let (_, after_bar) = l.split_once('|')?;
        let marker = after_bar.trim_start();
        let text = marker.strip_prefix('^')?.trim_start_matches('~').trim();
        (!text.is_empty()).then_some(text)
    })
}

/// Removes ANSI escape sequences (Ruby highlights its report on a terminal).
pub fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            if chars.peek() == Some(&'[') {
                chars.next();
                for c in chars.by_ref() {
                    if c.is_ascii_alphabetic() {
                        break;
                    }
                }
            }
            continue;
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(stderr: &str) -> (String, String, String, u32, bool) {
        let e = parse(stderr).expect("an error report");
        (e.class_name, e.message, e.file, e.line, e.syntax_error)
    }

    #[test]
    fn a_cause_is_not_the_error() {
        // Ruby 3.1's own output of `raise ArgumentError, "bad input"` in a rescue: the cause's
        // report follows the error's backtrace
        let stderr = "cause.rb:4:in `rescue in <main>': bad input (ArgumentError)\n\
                      \tfrom cause.rb:1:in `<main>'\n\
                      cause.rb:2:in `Integer': invalid value for Integer(): \"x\" (ArgumentError)\n\
                      \tfrom cause.rb:2:in `<main>'\n";
        assert_eq!(
            parsed(stderr),
            (
                "ArgumentError".into(),
                "bad input".into(),
                "cause.rb".into(),
                4,
                false
            )
        );
        // a thread's report with a backtrace, then the program's own
        let thread = "#<Thread:0x1 t.rb:1 run> terminated with exception (report_on_exception is true):\n\
                      t.rb:2:in `work': worker failed (RuntimeError)\n\
                      \tfrom t.rb:1:in `block in <main>'\n\
                      t.rb:5:in `<main>': undefined method `upcase' for nil:NilClass (NoMethodError)\n";
        let (class, _, _, line, _) = parsed(thread);
        assert_eq!((class.as_str(), line), ("NoMethodError", 5));
        // the same after a report the program printed itself and went on
        let after = format!("early.rb:1:in `<main>': early (IOError)\nworking\n{stderr}");
        assert_eq!(parsed(&after).1, "bad input");
    }

    #[test]
    fn the_last_report_ended_the_program() {
        // Ruby 3.1's own output of a rescued error printed with `warn e.full_message`, an
        // at_exit message, then the error that ended the program
        let stderr = "noisy.rb:1:in `<main>': early (IOError)\n\
                      bye\n\
                      noisy.rb:4:in `finish': undefined method `fetch' for nil:NilClass (NoMethodError)\n\
                      \tfrom noisy.rb:6:in `<main>'\n";
        assert_eq!(
            parsed(stderr),
            (
                "NoMethodError".into(),
                "undefined method `fetch' for nil:NilClass".into(),
                "noisy.rb".into(),
                4,
                false
            )
        );
    }

    #[test]
    fn the_report_that_ended_the_program_not_a_threads_or_a_warning() {
        // Ruby 3.1's own output: a thread's report, then the fatal one
        let threads = "#<Thread:0x00007f61ce567b10 t.rb:1 run> terminated with exception (report_on_exception is true):\n\
                       t.rb:1:in `block in <main>': worker failed (RuntimeError)\n\
                       t.rb:3:in `<main>': undefined method `upcase' for nil:NilClass (NoMethodError)\n";
        let (class, _, _, line, _) = parsed(threads);
        assert_eq!((class.as_str(), line), ("NoMethodError", 3));
        // Ruby 3.2/3.3: a parser warning above a report that names (SyntaxError)
        let warned = "t.rb:2: warning: found `= literal' in conditional, should be ==\n\
                      t.rb:3: syntax error, unexpected end-of-input (SyntaxError)\n";
        let (class, message, _, line, syntax) = parsed(warned);
        assert_eq!(
            (class.as_str(), message.as_str(), line, syntax),
            (
                "SyntaxError",
                "syntax error, unexpected end-of-input",
                3,
                true
            )
        );
    }

    fn t(
        class: &str,
        message: &str,
        file: &str,
        line: u32,
        syntax: bool,
    ) -> (String, String, String, u32, bool) {
        (class.into(), message.into(), file.into(), line, syntax)
    }

    #[test]
    fn an_empty_message_leaves_the_class_alone() {
        // Ctrl-C during `sleep`, as Ruby 3.1 prints it
        let interrupt = "-e:1:in `sleep': Interrupt\n\tfrom -e:1:in `<main>'\n";
        assert_eq!(parsed(interrupt), t("Interrupt", "", "-e", 1, false));
        let nested = "x.rb:3:in '<main>': Grading::ScoreError\n";
        assert_eq!(
            parsed(nested),
            t("Grading::ScoreError", "", "x.rb", 3, false)
        );
        // a message that is not a class name stays a message
        let lower = "x.rb:3:in '<main>': oops\n";
        assert_eq!(parsed(lower), t("", "oops", "x.rb", 3, false));
    }

    #[test]
    fn runtime_errors_across_versions() {
        let ruby31 = "nomethod.rb:2:in `foo': undefined method `bar' for nil:NilClass (NoMethodError)\n\n  x.bar\n   ^^^^\n\tfrom nomethod.rb:5:in `<main>'\n";
        assert_eq!(
            parsed(ruby31),
            t(
                "NoMethodError",
                "undefined method `bar' for nil:NilClass",
                "nomethod.rb",
                2,
                false
            )
        );
        let ruby33 = "nomethod.rb:2:in `foo': undefined method `bar' for nil (NoMethodError)\n\tfrom nomethod.rb:5:in `<main>'\n";
        assert_eq!(parsed(ruby33).0, "NoMethodError");
        let ruby34 = "nomethod_int.rb:3:in 'Calc#run': undefined method 'time' for an instance of Integer (NoMethodError)\nDid you mean?  times\n\tfrom nomethod_int.rb:6:in '<main>'\n";
        assert_eq!(
            parsed(ruby34),
            t(
                "NoMethodError",
                "undefined method 'time' for an instance of Integer",
                "nomethod_int.rb",
                3,
                false
            )
        );
        assert_eq!(
            parsed("raise_custom.rb:3:in 'Object#go': custom failure (MyError)\n"),
            t("MyError", "custom failure", "raise_custom.rb", 3, false)
        );
        assert_eq!(
            parsed("app.rb:9:in 'run': nope (Shop::Cart::Empty)\n").0,
            "Shop::Cart::Empty"
        );
        assert_eq!(
            parsed("noarg.rb:2:in '<main>': MyError (MyError)\n"),
            t("MyError", "MyError", "noarg.rb", 2, false)
        );
        assert_eq!(
            parsed("emptymsg.rb:1:in '<main>': unhandled exception\n"),
            t("RuntimeError", "", "emptymsg.rb", 1, false)
        );
        assert_eq!(parsed("multiline.rb:2:in 'Object#f': line one (ArgumentError)\nline two\n\tfrom multiline.rb:4:in '<main>'\n").1, "line one");
        assert_eq!(
            parsed(
                "(irb):62:in `caesar_cipher': undefined method `split' for nil (NoMethodError)\n"
            )
            .2,
            "(irb)"
        );
        assert_eq!(parsed("argerr.rb:1:in 'two': wrong number of arguments (given 1, expected 2) (ArgumentError)\n").1, "wrong number of arguments (given 1, expected 2)");
    }

    #[test]
    fn errors_inside_ruby_point_at_the_learners_code() {
        let ruby34 = "<internal:kernel>:288:in 'Kernel#Integer': invalid value for Integer(): \"zz\" (ArgumentError)\n\tfrom conv.rb:1:in '<main>'\n";
        assert_eq!(
            parsed(ruby34),
            t(
                "ArgumentError",
                "invalid value for Integer(): \"zz\"",
                "conv.rb",
                1,
                false
            )
        );
        let load = "/usr/lib/ruby/3.1.0/rubygems/core_ext/kernel_require.rb:85:in `require': cannot load such file -- nothere (LoadError)\n\tfrom /usr/lib/ruby/3.1.0/rubygems/core_ext/kernel_require.rb:85:in `require'\n\tfrom load.rb:1:in `<main>'\n";
        assert_eq!(
            parsed(load),
            t(
                "LoadError",
                "cannot load such file -- nothere",
                "load.rb",
                1,
                false
            )
        );
    }

    #[test]
    fn syntax_errors_across_versions() {
        let ruby31 = "syntax.rb:4: syntax error, unexpected end-of-input, expecting `end'\n";
        assert_eq!(
            parsed(ruby31),
            t(
                "SyntaxError",
                "syntax error, unexpected end-of-input, expecting `end'",
                "syntax.rb",
                4,
                true
            )
        );
        let ruby32 = "test.rb: --> test.rb\nUnmatched `end', missing keyword (`do', `def`, `if`, etc.) ?\n> 1  def foo\n> 2  end\n> 3  end # No newline at end of file\ntest.rb:3: syntax error, unexpected `end' (SyntaxError)\nend # No newline at end of file\n^~~\n";
        assert_eq!(
            parsed(ruby32),
            t(
                "SyntaxError",
                "syntax error, unexpected `end'",
                "test.rb",
                3,
                true
            )
        );
        let prefixed = "ruby: r.rb:3: syntax error, unexpected `end' (SyntaxError)\n";
        assert_eq!(parsed(prefixed).2, "r.rb");
        let ruby34 = "syntax.rb:4: syntax errors found (SyntaxError)\n  2 |   puts \"hi\"\n  3 | \n> 4 | foo\n    |    ^ unexpected end-of-input, assuming it is closing the parent top level context\n> 5 | \n    | ^ expected an `end` to close the `def` statement\n";
        assert_eq!(
            parsed(ruby34),
            t(
                "SyntaxError",
                "unexpected end-of-input, assuming it is closing the parent top level context",
                "syntax.rb",
                4,
                true
            )
        );
        let rc1 = "/root/.rbenv/versions/3.4.0-rc1/bin/ruby: -e:1: syntax error found (SyntaxError)\n> 1 | def foo(...) super(...) {} end\n    |                         ^~ both block arg and actual block given; only one block is allowed\n";
        assert_eq!(
            parsed(rc1),
            t(
                "SyntaxError",
                "both block arg and actual block given; only one block is allowed",
                "-e",
                1,
                true
            )
        );
        let loaded = "-e:1:in `load': syntax.rb:4: syntax error, unexpected end-of-input, expecting `end' (SyntaxError)\n";
        let e = parse(loaded).unwrap();
        assert_eq!(
            (e.class_name.as_str(), e.syntax_error),
            ("SyntaxError", true)
        );
    }

    #[test]
    fn ordinary_stderr_is_not_an_error() {
        assert_eq!(parse("1\nwarning: something\n"), None);
        assert_eq!(parse(""), None);
        assert_eq!(
            parse("main.rb:3: warning: assigned but unused variable - x\n"),
            None
        );
    }

    #[test]
    fn highlighted_reports_parse() {
        let highlighted = "t.rb:1:in `<main>': \u{1b}[1mboom (\u{1b}[1;4mRuntimeError\u{1b}[m\u{1b}[1m)\u{1b}[m\n";
        assert_eq!(
            parsed(highlighted),
            t("RuntimeError", "boom", "t.rb", 1, false)
        );
    }
}
