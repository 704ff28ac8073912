use std::path::Path;

use crate::helpers::{AGENT, Lab};

#[test]
fn install_puts_the_shim_first_in_path_and_uninstall_takes_it_out() {
    let lab = Lab::new();
    let home = lab.home();
    std::fs::write(home.join(".bashrc"), "alias ll='ls -l'\n").unwrap();
    let output = lab
        .agent(&["install", "--user", "--nats-url", "nats://lab-server:4222"])
        .env("PSEUDONYM_KEY", "k123")
        .env_remove("SPOOL_DIR")
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let bin = home.join(".learntrail/bin");
    let agent = Path::new(AGENT).canonicalize().unwrap();
    for program in ["ruby", "irb", "rake"] {
        assert_eq!(
            std::fs::read_link(bin.join(program)).unwrap(),
            agent,
            "{program}"
        );
    }
    let settings = std::fs::read_to_string(home.join(".config/learntrail/shim.env")).unwrap();
    assert!(
        settings.contains("NATS_URL=nats://lab-server:4222"),
        "{settings}"
    );
    assert!(settings.contains("PSEUDONYM_KEY=k123"));
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(home.join(".config/learntrail/shim.env"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(
            mode & 0o777,
            0o600,
            "the key is for this account's eyes only"
        );
    }
    assert!(settings.contains(&format!(
        "SPOOL_DIR={}",
        home.join(".learntrail/spool").display()
    )));
    let real_ruby = settings
        .lines()
        .find_map(|l| l.strip_prefix("REAL_RUBY="))
        .expect("REAL_RUBY recorded");
    assert!(Path::new(real_ruby).is_file() && !real_ruby.starts_with(&bin.display().to_string()));
    let bashrc = std::fs::read_to_string(home.join(".bashrc")).unwrap();
    assert!(bashrc.starts_with("alias ll='ls -l'\n"));
    assert!(bashrc.contains(&format!("export PATH=\"{}:$PATH\"", bin.display())));

    // a new login shell runs ruby through the shim, which reads the installed settings
    let output = std::process::Command::new("bash")
        .args(["-c", "source ~/.bashrc; ruby -e 'puts 6*7'"])
        .env_clear()
        .env("HOME", &home)
        .env("PATH", &lab.path_without_shim)
        .env("USER", "student7")
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&output.stdout),
        "42\n",
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let spooled = crate::helpers::spool_events(&home.join(".learntrail/spool"));
    assert_eq!(spooled.len(), 1, "the run went through the installed shim");

    let status = String::from_utf8(
        lab.agent(&["status"])
            .env_remove("SPOOL_DIR")
            .env_remove("LEARNTRAIL_SHIM_CONFIG")
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    assert!(status.contains("(1 records"), "{status}");
    assert!(
        status.contains(&format!("real ruby:    {real_ruby}")),
        "{status}"
    );

    let output = lab.agent(&["uninstall", "--user"]).output().unwrap();
    assert!(output.status.success());
    assert!(!bin.join("ruby").exists());
    assert_eq!(
        std::fs::read_to_string(home.join(".bashrc")).unwrap(),
        "alias ll='ls -l'\n"
    );
    assert!(
        home.join(".config/learntrail/shim.env").exists(),
        "settings stay"
    );
    assert_eq!(
        crate::helpers::spool_events(&home.join(".learntrail/spool")).len(),
        1,
        "the spool stays"
    );
}

#[test]
fn help_explains_and_bad_flags_exit_64() {
    let lab = Lab::new();
    let help = lab.agent(&["--help"]).output().unwrap();
    assert!(help.status.success());
    let text = String::from_utf8_lossy(&help.stdout);
    for word in [
        "upload",
        "daemon",
        "install",
        "uninstall",
        "status",
        "REAL_RUBY",
    ] {
        assert!(text.contains(word), "--help mentions {word}: {text}");
    }
    let bad = lab.agent(&["upload", "--no-such-flag"]).output().unwrap();
    assert_eq!(bad.status.code(), Some(64));
}

#[test]
fn a_key_in_the_command_line_is_refused() {
    let lab = Lab::new();
    let output = lab
        .agent(&["install", "--user", "--pseudonym-key", "k123"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("ps"),
        "{output:?}"
    );
    assert!(!lab.home().join(".learntrail/bin/ruby").exists());
}

#[test]
fn the_system_layout_keeps_secrets_root_only_and_the_spool_sticky() {
    use std::os::unix::fs::PermissionsExt;
    let lab = Lab::new();
    let root = lab.dir.path().join("root");
    let layout = learntrail_shim_agent::install::Layout {
        bin_dir: root.join("usr/local/learntrail/bin"),
        config_file: root.join("etc/learntrail/shim.env"),
        secrets_file: root.join("etc/learntrail/uploader.env"),
        spool_dir: root.join("var/spool/learntrail"),
        rc_files: Vec::new(),
        profile_script: None,
        shared_spool: true,
    };
    // an older install left the key in the file every account reads
    std::fs::create_dir_all(root.join("etc/learntrail")).unwrap();
    std::fs::write(
        &layout.config_file,
        "PSEUDONYM_KEY=old\nREAL_RUBY=/usr/bin/ruby\n",
    )
    .unwrap();
    learntrail_shim_agent::install::install(
        &layout,
        Path::new(AGENT),
        &["ruby".into()],
        &[("NATS_URL".into(), "nats://lab:4222".into())],
        &[("NATS_TOKEN".into(), "t0ken".into())],
    )
    .unwrap();
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o7777;
    let shared = std::fs::read_to_string(&layout.config_file).unwrap();
    assert_eq!(mode(&layout.config_file), 0o644);
    assert!(shared.contains("NATS_URL=nats://lab:4222"), "{shared}");
    assert!(
        !shared.contains("PSEUDONYM_KEY") && !shared.contains("t0ken"),
        "{shared}"
    );
    let secrets = std::fs::read_to_string(&layout.secrets_file).unwrap();
    assert_eq!(mode(&layout.secrets_file), 0o600);
    assert!(secrets.contains("PSEUDONYM_KEY=old") && secrets.contains("NATS_TOKEN=t0ken"));
    assert_eq!(mode(&layout.spool_dir), 0o1733);
}

#[test]
fn status_into_a_closed_pipe_exits_quietly() {
    let lab = Lab::new();
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader); // `shim-agent status | head -0`: the reader is gone before the first line
    let output = lab
        .agent(&["status"])
        .stdout(writer)
        .stderr(std::process::Stdio::piped())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(output.status.code(), Some(0), "{stderr}");
}
