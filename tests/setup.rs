//! The README's set-up promises, checked as a new user meets them: `make up` builds only what it
//! runs (never the test-only Garage S3 server), `make test` still brings Garage, and a plain
//! `cargo build` needs no system `protoc`.

use std::{
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::Command,
};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .into()
}

/// A directory with an executable `name` that appends its arguments to `log` and exits `status`.
fn stub(dir: &Path, name: &str, log: &Path, status: i32) {
    let path = dir.join(name);
    std::fs::write(
        &path,
        format!(
            "#!/bin/sh\necho \"$*\" >> '{}'\nexit {status}\n",
            log.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// Runs `make <target>` with a stub `cargo` first on PATH and a HOME without ~/.cargo/bin (so no
/// Garage is installed); returns the stub's calls.
fn make_with_stub_cargo(target: &str) -> String {
    let scratch = tempfile::tempdir().unwrap();
    let bin = scratch.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    let log = scratch.path().join("cargo.log");
    stub(&bin, "cargo", &log, 0);
    let path = format!(
        "{}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        bin.display()
    );
    let out = Command::new("make")
        .args(["--no-print-directory", "-C"])
        .arg(root())
        .arg(target)
        .env("PATH", path)
        .env("HOME", scratch.path())
        .env("CARGO", "cargo")
        .env_remove("SKIP_GARAGE")
        .output()
        .expect("make runs");
    assert!(out.status.success(), "make {target}: {out:?}");
    std::fs::read_to_string(&log).unwrap_or_default()
}

#[test]
fn make_up_builds_only_what_it_runs_and_never_garage() {
    let calls = make_with_stub_cargo("build");
    assert!(
        !calls.contains("install garage"),
        "make up built Garage: {calls}"
    );
    let builds: Vec<&str> = calls.lines().filter(|l| l.starts_with("build")).collect();
    assert_eq!(builds.len(), 1, "one release build: {calls}");
    assert!(
        builds[0].starts_with("build --release --bin tracking-api"),
        "{calls}"
    );
    for test_only in ["learntrail-bench", "--bins", "--workspace"] {
        assert!(!builds[0].contains(test_only), "{test_only} in {calls}");
    }

    let calls = make_with_stub_cargo("test-deps");
    assert!(
        calls.contains("install garage --locked"),
        "make test brings Garage: {calls}"
    );
}

#[test]
fn cargo_build_needs_no_protoc() {
    let scratch = tempfile::tempdir().unwrap();
    let bin = scratch.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    let log = scratch.path().join("protoc.log");
    // a protoc that fails, first on PATH, and PROTOC unset
    stub(&bin, "protoc", &log, 1);
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap());
    let out = Command::new(env!("CARGO"))
        .args(["check", "--quiet", "-p", "learntrail-proto"])
        .current_dir(root())
        .env("PATH", path)
        .env_remove("PROTOC")
        .env("CARGO_TARGET_DIR", root().join("target/no-protoc"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        std::fs::read_to_string(&log).unwrap_or_default().is_empty(),
        "protoc was called"
    );
}
