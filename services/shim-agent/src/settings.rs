//! Settings: environment variables first, then the agent's config files (`KEY=VALUE` lines, the
//! format systemd's EnvironmentFile reads): `$LEARNTRAIL_SHIM_CONFIG` if set, else
//! `~/.config/learntrail/shim.env` over `/etc/learntrail/uploader.env` (the secrets, root only)
//! over `/etc/learntrail/shim.env`.

use std::{
    collections::HashMap,
    ffi::OsString,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
};

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
    /// NATS credentials: secrets, like the pseudonym key.
    pub const NATS_SECRETS: [&str; 4] = ["NATS_CREDS", "NATS_USER", "NATS_PASSWORD", "NATS_TOKEN"];

    /// True for a setting that belongs in a file only its owner can read.
    pub fn is_secret(key: &str) -> bool {
        key == PSEUDONYM_KEY || NATS_SECRETS.contains(&key)
    }
}

/// Settings every account reads (the shim needs them): no secrets.
pub const SYSTEM_CONFIG: &str = "/etc/learntrail/shim.env";
/// The uploader's secrets (pseudonym key, NATS credentials): root only, mode 0600.
pub const SYSTEM_SECRETS: &str = "/etc/learntrail/uploader.env";
pub const DEFAULT_CAPTURE_BYTES: u64 = 64 * 1024;
pub const DEFAULT_SPOOL_MAX_BYTES: u64 = 100 * 1024 * 1024;
pub const DEFAULT_PROGRAMS: &str = "ruby,irb,rake";

#[derive(Debug, Default, Clone)]
pub struct Settings {
    file: HashMap<String, String>,
    /// Files that hold secrets other accounts can read: (file, its secret keys).
    exposed: Vec<(PathBuf, Vec<String>)>,
    /// A secrets file that exists but this account may not read (a student on a system install).
    unreadable_secrets: Option<PathBuf>,
}

impl Settings {
    /// Reads the config files (a missing or unreadable file is simply skipped).
    pub fn load() -> Self {
        let paths: Vec<PathBuf> = match std::env::var_os(keys::CONFIG) {
            Some(path) => vec![PathBuf::from(path)],
            None => {
                let mut paths = vec![PathBuf::from(SYSTEM_CONFIG), PathBuf::from(SYSTEM_SECRETS)];
                paths.extend(home().map(|h| h.join(".config/learntrail/shim.env")));
                paths
            }
        };
        let mut settings = Self::default();
        for path in paths {
            match std::fs::read_to_string(&path) {
                Ok(text) => settings.add_file(&path, &text),
                Err(err) if err.kind() == std::io::ErrorKind::PermissionDenied => {
                    settings.unreadable_secrets = Some(path)
                }
                Err(_) => {}
            }
        }
        settings
    }

    fn add_file(&mut self, path: &Path, text: &str) {
        let pairs = parse_env_file(text);
        let secrets: Vec<String> = pairs
            .iter()
            .filter(|(k, v)| keys::is_secret(k) && !v.trim().is_empty())
            .map(|(k, _)| k.clone())
            .collect();
        let shared = std::fs::metadata(path).is_ok_and(|m| m.permissions().mode() & 0o077 != 0);
        if shared && !secrets.is_empty() {
            self.exposed.push((path.to_path_buf(), secrets));
        }
        self.file.extend(pairs);
    }

    /// What `status` should warn about: no pseudonym key, secrets other accounts can read.
    pub fn warnings(&self) -> Vec<String> {
        let mut warnings = Vec::new();
        match (self.get(keys::PSEUDONYM_KEY), &self.unreadable_secrets) {
            (Some(_), _) => {}
            (None, Some(path)) => warnings.push(format!(
                "pseudonym key: in {} (readable by root only; check it with sudo)",
                path.display()
            )),
            (None, None) => warnings.push(
                "warning:      PSEUDONYM_KEY is not set: runs are uploaded unkeyed (actor \"unkeyed\"), tied to no learner".into(),
            ),
        }
        for (path, secrets) in &self.exposed {
            warnings.push(format!(
                "warning:      {} holds {} and other accounts can read it: chmod 600 {0}",
                path.display(),
                secrets.join(", ")
            ));
        }
        warnings
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

/// Where the Ruby version cache lives: the spool when it is this account's own, else (a shared
/// spool, where another student could plant it) `~/.cache/learntrail`.
pub fn cache_dir(spool: &crate::spool::Spool) -> PathBuf {
    if spool.is_own() || !spool.dir().exists() {
        return spool.dir().to_path_buf();
    }
    let Some(dir) = home().map(|h| h.join(".cache/learntrail")) else {
        return spool.dir().to_path_buf();
    };
    let _ = std::fs::create_dir_all(&dir);
    dir
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
    fn secrets_other_accounts_can_read_are_warned_about() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("shim.env");
        std::fs::write(&path, "PSEUDONYM_KEY=k\nNATS_URL=nats://x\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let mut settings = Settings::default();
        settings.add_file(&path, &std::fs::read_to_string(&path).unwrap());
        let warnings = settings.warnings().join("\n");
        assert!(
            warnings.contains("holds PSEUDONYM_KEY and other accounts can read it"),
            "{warnings}"
        );
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        let mut settings = Settings::default();
        settings.add_file(&path, "PSEUDONYM_KEY=k\n");
        assert!(!settings.warnings().join("").contains("other accounts"));
    }

    #[test]
    fn agent_names() {
        assert!(is_agent_name(&"/usr/local/bin/shim-agent".into()));
        assert!(!is_agent_name(&"/home/x/.learntrail/bin/ruby".into()));
        assert!(!is_agent_name(&"irb".into()));
    }
}
