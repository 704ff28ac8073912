//! Home directories out of recorded text: a pseudonym is worthless when the same record says
//! `/home/alice/hw/x.rb`. Every path and text of a `RubyRun` has the account's home replaced by
//! `~` (`~/hw/x.rb`). The shim does it with its own home (from the account database, and
//! `$HOME` when that differs); the uploader does it again with the home of the record's owner.

use learntrail_proto::v1::RubyRun;

/// The home directories to hide, longest first (so `/home/al/x` never leaves `…/x` of a longer
/// home half-replaced).
#[derive(Debug, Clone, Default)]
pub struct Homes(Vec<String>);

impl Homes {
    /// `paths` as homes; `/`, empty and relative ones are skipped (they would hide everything).
    pub fn new<I, S>(paths: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut homes: Vec<String> = Vec::new();
        for path in paths {
            let path = path.as_ref().trim_end_matches('/');
            if path.len() < 2 || !path.starts_with('/') {
                continue;
            }
            let variants = std::fs::canonicalize(path)
                .ok()
                .and_then(|p| p.to_str().map(str::to_string));
            for home in std::iter::once(path.to_string()).chain(variants) {
                if home.len() >= 2 && !homes.contains(&home) {
                    homes.push(home);
                }
            }
        }
        homes.sort_by_key(|h| std::cmp::Reverse(h.len()));
        Self(homes)
    }

    /// The home of the account running us (the account database's, and `$HOME`).
    pub fn of_current_user() -> Self {
        let from_passwd = nix::unistd::User::from_uid(nix::unistd::getuid())
            .ok()
            .flatten()
            .map(|u| u.dir.to_string_lossy().into_owned());
        let from_env = std::env::var("HOME").ok();
        Self::new(from_passwd.into_iter().chain(from_env))
    }

    /// `text` with each home, where it stands as a whole path (`/home/al` but not
    /// `/home/alice`), replaced by `~`.
    pub fn text(&self, text: &str) -> String {
        let mut out = text.to_string();
        for home in &self.0 {
            out = replace_path(&out, home);
        }
        out
    }

    fn in_place(&self, text: &mut String) {
        if self.0.iter().any(|home| text.contains(home.as_str())) {
            *text = self.text(text);
        }
    }

    /// Every path and text of `run`: argv, cwd, script, interpreter, stderr, the parsed error,
    /// and the git root and remote.
    pub fn run(&self, run: &mut RubyRun) {
        for arg in &mut run.argv {
            self.in_place(arg);
        }
        for text in [
            &mut run.cwd,
            &mut run.script,
            &mut run.interpreter,
            &mut run.stderr,
        ] {
            self.in_place(text);
        }
        if let Some(error) = run.error.as_mut() {
            self.in_place(&mut error.file);
            self.in_place(&mut error.message);
        }
        if let Some(git) = run.git.as_mut() {
            self.in_place(&mut git.root);
            self.in_place(&mut git.remote_url);
        }
    }
}

/// A character that continues a file name: `home` followed or preceded by one is part of a
/// longer name, not the home itself.
fn continues_name(c: char) -> bool {
    c.is_alphanumeric() || matches!(c, '_' | '-' | '.' | '@' | '+')
}

fn replace_path(text: &str, home: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut copied = 0;
    for (at, _) in text.match_indices(home) {
        let before = text[..at].chars().last();
        let after = text[at + home.len()..].chars().next();
        if before.is_some_and(continues_name) || after.is_some_and(continues_name) {
            continue;
        }
        out.push_str(&text[copied..at]);
        out.push('~');
        copied = at + home.len();
    }
    out.push_str(&text[copied..]);
    out
}

#[cfg(test)]
mod tests {
    use learntrail_proto::v1::{GitState, RubyError};

    use super::*;

    #[test]
    fn homes_become_a_tilde_only_as_whole_paths() {
        let homes = Homes::new(["/home/al", "/", ""]);
        assert_eq!(homes.text("/home/al/hw/x.rb"), "~/hw/x.rb");
        assert_eq!(homes.text("/home/al"), "~");
        assert_eq!(
            homes.text("from /home/al/x.rb:3:in `go' (/home/al)"),
            "from ~/x.rb:3:in `go' (~)"
        );
        assert_eq!(homes.text("/home/alice/x.rb"), "/home/alice/x.rb");
        assert_eq!(homes.text("/mnt/home/al/x"), "/mnt/home/al/x");
        assert_eq!(homes.text("cd:/home/al/x"), "cd:~/x");
        assert_eq!(Homes::new(["/"]).text("/usr/bin/ruby"), "/usr/bin/ruby");
    }

    #[test]
    fn every_recorded_path_and_text_is_covered() {
        let home = "/home/student7";
        let at = |s: &str| format!("{home}/{s}");
        let mut run = RubyRun {
            argv: vec!["ruby".into(), at("hw.rb"), format!("--out={home}/o")],
            cwd: home.into(),
            script: at("hw.rb"),
            interpreter: at(".rbenv/versions/3.3.0/bin/ruby"),
            stderr: format!("{}:1:in `<main>': boom (RuntimeError)\n", at("hw.rb")),
            error: Some(RubyError {
                file: at("hw.rb"),
                message: format!("No such file or directory @ rb_sysopen - {}", at("x")),
                ..Default::default()
            }),
            git: Some(GitState {
                root: home.into(),
                remote_url: format!("file://{home}/bare.git"),
                ..Default::default()
            }),
            ..Default::default()
        };
        Homes::new([home]).run(&mut run);
        let text = format!("{run:?}");
        assert!(!text.contains("student7"), "{text}");
        assert_eq!(run.script, "~/hw.rb");
        assert_eq!(run.argv[2], "--out=~/o");
        assert_eq!(run.git.unwrap().root, "~");
    }
}
