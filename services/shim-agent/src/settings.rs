//! Settings: environment variables first, then the agent's config files (`KEY=VALUE` lines, the
//! format systemd's EnvironmentFile reads): `$LEARNTRAIL_SHIM_CONFIG` if set, else
//! `~/.config/learntrail/shim.env` over `/etc/learntrail/shim.env`.

use std::{collections::HashMap, ffi::OsString, path::PathBuf};

/// Names the shim reads.
pub mod keys {
    pub const CONFIG: &str = "LEARNTRAIL_SHIM_CONFIG";
    pub const REAL_RUBY: &str = "REAL_RUBY";
    pub const SPOOL_DIR: &str = "SPOOL_DIR";
    pub const SPOOL_MAX_BYTES: &str = "SPOOL_MAX_BYTES";
    pub const STDERR_CAPTURE_BYTES: &str = "STDERR_CAPTURE_BYTES";
    pub const PSEUDONYM_KEY: &str = "PSEUDONYM_KEY";
    pub const SHIM_PROGRAMS: &str = "SHIM_PROGRAMS";
    /// Set in the child's environment: a nested shim (rake running ruby) runs straight through.
    pub const ACTIVE: &str = "LEARNTRAIL_SHIM_ACTIVE";
}

pub const SYSTEM_CONFIG: &str = "/etc/learntrail/shim.env";
pub const DEFAULT_CAPTURE_BYTES: u64 = 64 * 1024;
pub const DEFAULT_SPOOL_MAX_BYTES: u64 = 100 * 1024 * 1024;
pub const DEFAULT_PROGRAMS: &str = "ruby,irb,rake";

#[derive(Debug, Default, Clone)]
pub struct Settings {
    file: HashMap<String, String>,
}

impl Settings {
    /// Reads the config files (a missing or unreadable file is simply skipped).
    pub fn load() -> Self {
        let paths: Vec<PathBuf> = match std::env::var_os(keys::CONFIG) {
            Some(path) => vec![PathBuf::from(path)],
            None => {
                let mut paths = vec![PathBuf::from(SYSTEM_CONFIG)];
                paths.extend(home().map(|h| h.join(".config/learntrail/shim.env")));
                paths
            }
        };
        let mut file = HashMap::new();
        for path in paths {
            if let Ok(text) = std::fs::read_to_string(&path) {
                file.extend(parse_env_file(&text));
            }
        }
        Self { file }
    }

    /// The value of `key`: the environment wins over the files.
    pub fn get(&self, key: &str) -> Option<String> {
        std::env::var(key)
            .ok()
            .or_else(|| self.file.get(key).cloned())
            .filter(|v| !v.trim().is_empty())
    }

    /// The files' values, for settings the environment does not already give.
    pub fn file_only(&self) -> Vec<(String, String)> {
        self.file
            .iter()
            .filter(|(k, _)| std::env::var_os(k).is_none())
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    pub fn spool_dir(&self) -> PathBuf {
        self.get(keys::SPOOL_DIR)
            .map(PathBuf::from)
            .unwrap_or_else(default_spool_dir)
    }

    pub fn spool_max_bytes(&self) -> u64 {
        self.bytes(keys::SPOOL_MAX_BYTES, DEFAULT_SPOOL_MAX_BYTES)
    }

    pub fn capture_bytes(&self) -> u64 {
        self.bytes(keys::STDERR_CAPTURE_BYTES, DEFAULT_CAPTURE_BYTES)
    }

    fn bytes(&self, key: &str, default: u64) -> u64 {
        self.get(key)
            .and_then(|v| learntrail_runtime::units::parse_bytes(&v).ok())
            .unwrap_or(default)
    }

    /// The configured real interpreter for `program` (`REAL_RUBY`, `REAL_IRB`, ...).
    pub fn real_program(&self, program: &str) -> Option<PathBuf> {
        let key = format!(
            "REAL_{}",
            program.to_ascii_uppercase().replace(['-', '.'], "_")
        );
        self.get(&key).map(PathBuf::from)
    }

    pub fn programs(&self) -> Vec<String> {
        self.get(keys::SHIM_PROGRAMS)
            .unwrap_or_else(|| DEFAULT_PROGRAMS.into())
            .split(',')
            .map(|p| p.trim().to_string())
            .filter(|p| !p.is_empty())
            .collect()
    }
}

pub fn home() -> Option<PathBuf> {
    std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .map(PathBuf::from)
}

/// `~/.learntrail/spool`, or a per-user directory under /tmp without a home.
pub fn default_spool_dir() -> PathBuf {
    home()
        .map(|h| h.join(".learntrail/spool"))
        .unwrap_or_else(|| {
            PathBuf::from(format!("/tmp/learntrail-spool-{}", nix::unistd::getuid()))
        })
}

/// `KEY=VALUE` lines; `#` comments, blank lines, an optional `export ` and quotes are allowed.
pub fn parse_env_file(text: &str) -> Vec<(String, String)> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| {
            let l = l.strip_prefix("export ").unwrap_or(l);
            let (key, value) = l.split_once('=')?;
            let value = value.trim();
            let value = value
                .strip_prefix('"')
                .and_then(|v| v.strip_suffix('"'))
                .or_else(|| value.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')))
                .unwrap_or(value);
            Some((key.trim().to_string(), value.to_string()))
        })
        .collect()
}

/// Renders settings as an env file.
pub fn render_env_file(pairs: &[(String, String)]) -> String {
    let mut text = String::from(
        "# Learntrail shim-agent settings (KEY=VALUE). The environment overrides these.\n",
    );
    for (key, value) in pairs {
        text.push_str(&format!("{key}={value}\n"));
    }
    text
}

/// True when the process is running as the agent's CLI rather than as a shim.
pub fn is_agent_name(argv0: &OsString) -> bool {
    let name = std::path::Path::new(argv0)
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("");
    name.starts_with("shim-agent") || name.starts_with("learntrail-shim-agent")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_files() {
        let text = "# comment\nREAL_RUBY=/usr/bin/ruby\nexport SPOOL_DIR=\"/var/spool/lt\"\n\nNATS_URL='nats://h:4222'\nbroken line\n";
        assert_eq!(
            parse_env_file(text),
            [
                ("REAL_RUBY".to_string(), "/usr/bin/ruby".to_string()),
                ("SPOOL_DIR".into(), "/var/spool/lt".into()),
                ("NATS_URL".into(), "nats://h:4222".into())
            ]
        );
        let rendered = render_env_file(&[("A".into(), "1".into())]);
        assert_eq!(
            parse_env_file(&rendered),
            [("A".to_string(), "1".to_string())]
        );
    }

    #[test]
    fn agent_names() {
        assert!(is_agent_name(&"/usr/local/bin/shim-agent".into()));
        assert!(!is_agent_name(&"/home/x/.learntrail/bin/ruby".into()));
        assert!(!is_agent_name(&"irb".into()));
    }
}
