use std::path::Path;

use crate::helpers::{AGENT, Lab};

#[test]
fn install_puts_the_shim_first_in_path_and_uninstall_takes_it_out() {
    let lab = Lab::new();
    let home = lab.home();
    std::fs::write(home.join(".bashrc"), "alias ll='ls -l'\n").unwrap();
    let output = lab
        .agent(&[
            "install",
            "--user",
            "--nats-url",
            "nats://lab-server:4222",
            "--pseudonym-key",
            "k123",
        ])
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
