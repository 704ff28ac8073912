//! `install` and `uninstall`: links named `ruby`, `irb`, ... to this binary in a directory put
//! ahead of the real interpreter in PATH, the agent's settings file, the spool directory, and the
//! PATH change in the shells' start-up files (between markers, so it can be taken out again).
//!
//! The system install splits the settings: `/etc/learntrail/shim.env` (0644: every student's
//! shim reads it) holds no secret; the pseudonym key and NATS credentials go to
//! `/etc/learntrail/uploader.env` (0600, root: the uploader reads it). Its spool is `1733`
//! (sticky, like `/tmp` but not listable): every student creates records there, none can read,
//! list or delete another's. A per-user install keeps everything in its own `0600` shim.env and
//! a `0700` spool.

use std::{
    fs, io,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
};

use crate::settings::{self, keys};

const BEGIN: &str = "# >>> learntrail shim >>>";
const END: &str = "# <<< learntrail shim <<<";

/// Where an installation lives.
#[derive(Debug, Clone)]
pub struct Layout {
    pub bin_dir: PathBuf,
    pub config_file: PathBuf,
    /// Where the secrets go (the config file itself for a per-user install).
    pub secrets_file: PathBuf,
    pub spool_dir: PathBuf,
    /// Start-up files that get the PATH block.
    pub rc_files: Vec<PathBuf>,
    /// A file of its own that sets PATH (Linux /etc/profile.d), if the scope has one.
    pub profile_script: Option<PathBuf>,
    /// The spool is shared by every account (system scope).
    pub shared_spool: bool,
}

impl Layout {
    /// One account: `~/.learntrail/bin`, `~/.config/learntrail/shim.env`, `~/.learntrail/spool`.
    pub fn user(home: &Path) -> Self {
        Self {
            bin_dir: home.join(".learntrail/bin"),
            config_file: home.join(".config/learntrail/shim.env"),
            secrets_file: home.join(".config/learntrail/shim.env"),
            spool_dir: home.join(".learntrail/spool"),
            rc_files: [".profile", ".bashrc", ".zshrc"]
                .iter()
                .map(|f| home.join(f))
                .collect(),
            profile_script: None,
            shared_spool: false,
        }
    }

    /// Every account of the machine (needs root).
    pub fn system() -> Self {
        let macos = cfg!(target_os = "macos");
        Self {
            bin_dir: PathBuf::from("/usr/local/learntrail/bin"),
            config_file: PathBuf::from(settings::SYSTEM_CONFIG),
            secrets_file: PathBuf::from(settings::SYSTEM_SECRETS),
            spool_dir: PathBuf::from("/var/spool/learntrail"),
            rc_files: if macos {
                vec!["/etc/zshrc".into(), "/etc/bashrc".into()]
            } else {
                Vec::new()
            },
            profile_script: (!macos).then(|| PathBuf::from("/etc/profile.d/learntrail-shim.sh")),
            shared_spool: true,
        }
    }
}

/// Installs for `programs`, linking to `exe`. `extra` settings (NATS_URL, ...) are written to
/// the settings file and `secrets` (PSEUDONYM_KEY, NATS credentials) to the secrets file;
/// existing settings are kept (a secret found in a shared settings file moves to the secrets
/// file). Returns what was done.
pub fn install(
    layout: &Layout,
    exe: &Path,
    programs: &[String],
    extra: &[(String, String)],
    secrets: &[(String, String)],
) -> io::Result<Vec<String>> {
    let mut done = Vec::new();
    fs::create_dir_all(&layout.bin_dir)?;
    let real_ruby = find_real("ruby", &layout.bin_dir, exe);
    for program in programs {
        let link = layout.bin_dir.join(program);
        match fs::symlink_metadata(&link) {
            Ok(meta) if meta.file_type().is_symlink() => fs::remove_file(&link)?,
            Ok(_) => {
                return Err(io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    format!(
                        "{} exists and is not a link; not replacing it",
                        link.display()
                    ),
                ));
            }
            Err(_) => {}
        }
        std::os::unix::fs::symlink(exe, &link)?;
        done.push(format!("linked {} -> {}", link.display(), exe.display()));
    }

    let mut config = read_settings(&layout.config_file);
    let same_file = layout.secrets_file == layout.config_file;
    let mut secret_config = Vec::new();
    if !same_file {
        // secrets never stay in a file every account reads
        secret_config = read_settings(&layout.secrets_file);
        for (key, value) in config.iter().filter(|(k, _)| keys::is_secret(k)) {
            set(&mut secret_config, key, value.clone(), false);
        }
        config.retain(|(k, _)| !keys::is_secret(k));
    }
    if let Some(real) = &real_ruby {
        set(
            &mut config,
            keys::REAL_RUBY,
            real.display().to_string(),
            false,
        );
    }
    set(
        &mut config,
        keys::SPOOL_DIR,
        layout.spool_dir.display().to_string(),
        false,
    );
    set(&mut config, keys::SHIM_PROGRAMS, programs.join(","), true);
    for (key, value) in extra {
        set(&mut config, key, value.clone(), true);
    }
    for (key, value) in secrets {
        let target = if same_file {
            &mut config
        } else {
            &mut secret_config
        };
        set(target, key, value.clone(), true);
    }
    if let Some(parent) = layout.config_file.parent() {
        fs::create_dir_all(parent)?;
    }
    if same_file {
        // one account's own file: readable by that account alone
        write_settings(&layout.config_file, &config, 0o600)?;
        done.push(format!(
            "settings in {} (mode 0600)",
            layout.config_file.display()
        ));
    } else {
        write_settings(&layout.config_file, &config, 0o644)?;
        write_settings(&layout.secrets_file, &secret_config, 0o600)?;
        done.push(format!("settings in {}", layout.config_file.display()));
        done.push(format!(
            "secrets in {} (mode 0600)",
            layout.secrets_file.display()
        ));
    }
    match &real_ruby {
        Some(real) => done.push(format!("real ruby: {}", real.display())),
        None => {
            done.push("warning: no real ruby found in PATH; set REAL_RUBY in the settings".into())
        }
    }

    fs::create_dir_all(&layout.spool_dir)?;
    // shared: every student creates records (wx), none lists the spool (no r) or deletes
    // another's (sticky bit); own: this account alone
    let mode = if layout.shared_spool { 0o1733 } else { 0o700 };
    fs::set_permissions(&layout.spool_dir, fs::Permissions::from_mode(mode))?;
    done.push(format!("spool in {}", layout.spool_dir.display()));

    let block = format!(
        "{BEGIN}\nexport PATH=\"{}:$PATH\"\n{END}\n",
        layout.bin_dir.display()
    );
    for rc in &layout.rc_files {
        let text = fs::read_to_string(rc).unwrap_or_default();
        fs::write(rc, format!("{}{block}", without_block(&text)))?;
        done.push(format!("PATH set in {}", rc.display()));
    }
    if let Some(script) = &layout.profile_script {
        fs::write(script, &block)?;
        done.push(format!("PATH set in {}", script.display()));
    }
    Ok(done)
}

/// Removes the links to `exe` and the PATH changes. The settings and the spool stay (records
/// not yet uploaded are not lost). Returns what was done.
pub fn uninstall(layout: &Layout, exe: &Path) -> io::Result<Vec<String>> {
    let mut done = Vec::new();
    if let Ok(entries) = fs::read_dir(&layout.bin_dir) {
        for entry in entries.flatten() {
            let target = fs::read_link(entry.path());
            if target.as_deref().is_ok_and(|t| same_file(t, exe)) {
                fs::remove_file(entry.path())?;
                done.push(format!("removed {}", entry.path().display()));
            }
        }
        let _ = fs::remove_dir(&layout.bin_dir); // only if empty
    }
    for rc in &layout.rc_files {
        if let Ok(text) = fs::read_to_string(rc)
            && text.contains(BEGIN)
        {
            fs::write(rc, without_block(&text))?;
            done.push(format!("PATH restored in {}", rc.display()));
        }
    }
    if let Some(script) = &layout.profile_script
        && fs::remove_file(script).is_ok()
    {
        done.push(format!("removed {}", script.display()));
    }
    done.push(format!(
        "kept {} and the spool {} (run `shim-agent upload` to ship what is left)",
        layout.config_file.display(),
        layout.spool_dir.display()
    ));
    Ok(done)
}

fn read_settings(path: &Path) -> Vec<(String, String)> {
    fs::read_to_string(path)
        .map(|t| settings::parse_env_file(&t))
        .unwrap_or_default()
}

fn set(config: &mut Vec<(String, String)>, key: &str, value: String, overwrite: bool) {
    match config.iter_mut().find(|(k, _)| k == key) {
        Some(entry) if overwrite => entry.1 = value,
        Some(_) => {}
        None => config.push((key.to_string(), value)),
    }
}

/// Writes a settings file with `mode` from its first byte (a temp file and a rename: a secret
/// is never in a file with a wider mode, not even for a moment).
fn write_settings(path: &Path, pairs: &[(String, String)], mode: u32) -> io::Result<()> {
    crate::spool::write_replacing(path, settings::render_env_file(pairs).as_bytes(), mode)?;
    // the mode given at creation is narrowed by the umask; make it exact
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
}

fn same_file(a: &Path, b: &Path) -> bool {
    match (fs::canonicalize(a), fs::canonicalize(b)) {
        (Ok(a), Ok(b)) => a == b,
        _ => a == b,
    }
}

/// `text` without the learntrail block.
fn without_block(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut inside = false;
    for line in text.split_inclusive('\n') {
        match line.trim_end() {
            BEGIN => inside = true,
            END => inside = false,
            _ if !inside => out.push_str(line),
            _ => {}
        }
    }
    out
}

/// The first `program` in PATH outside `skip_dir` that is not `exe` itself.
pub fn find_real(program: &str, skip_dir: &Path, exe: &Path) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .filter(|dir| !same_file(dir, skip_dir))
        .map(|dir| dir.join(program))
        .find(|candidate| {
            candidate.is_file() && !same_file(candidate, exe) && !crate::shim::is_shim(candidate)
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_come_out_cleanly() {
        let original = "alias ll='ls -l'\n";
        let with = format!("{original}{BEGIN}\nexport PATH=\"/x:$PATH\"\n{END}\n");
        assert_eq!(without_block(&with), original);
        assert_eq!(without_block(original), original);
    }
}
