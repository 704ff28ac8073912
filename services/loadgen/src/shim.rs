//! shim-agent benchmark: the latency the shim adds to a Ruby run. Runs `ruby -e 'warn 1'`
//! directly and through the shim, alternating, `runs` times each (stderr captured by the
//! benchmark through a pipe, as in a scripted lab session), and reports p50/p95 of both and the
//! difference. Targets: p50 <= 2 ms and p95 <= 5 ms added.

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Instant,
};

use crate::{
    Bench,
    report::{Phase, verdict},
};

#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Runs of each kind
    #[arg(long, default_value_t = 200)]
    pub runs: usize,
}

impl Default for Args {
    fn default() -> Self {
        Self { runs: 200 }
    }
}

fn find_ruby() -> anyhow::Result<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join("ruby"))
        .find(|p| p.is_file())
        .ok_or_else(|| anyhow::anyhow!("ruby not found in PATH (make deps installs it)"))
}

fn time_run(
    program: &Path,
    spool: &Path,
    real: Option<&Path>,
    expect: &[u8],
) -> anyhow::Result<u64> {
    let mut command = Command::new(program);
    if let Some(real) = real {
        command.env("REAL_RUBY", real);
    }
    let started = Instant::now();
    let output = command
        .args(["-e", "warn 1"])
        .env("SPOOL_DIR", spool)
        .env("PSEUDONYM_KEY", "bench")
        .env("LEARNTRAIL_SHIM_CONFIG", spool.join("none"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()?;
    let micros = started.elapsed().as_micros() as u64;
    anyhow::ensure!(
        output.status.success() && output.stderr == expect,
        "unexpected run: {output:?}"
    );
    Ok(micros)
}

pub fn run(bench: &Bench, args: &Args) -> anyhow::Result<()> {
    let agent = bench.bin_dir.join("shim-agent").canonicalize()?;
    let dir = tempfile::Builder::new()
        .prefix("lt-bench-shim-")
        .tempdir()?;
    let shim = dir.path().join("ruby");
    std::os::unix::fs::symlink(&agent, &shim)?;
    let spool = dir.path().join("spool");
    let real = find_ruby()?;
    // the shim finds the real ruby as the next `ruby` in PATH (its own dir is not in PATH)
    time_run(&shim, &spool, None, b"1\n")?; // warm-up: caches the Ruby version
    let (mut direct, mut shimmed) = (
        Phase::new("ruby -e 'warn 1' directly"),
        Phase::new("ruby -e 'warn 1' through the shim"),
    );
    // Ruby's own start-up varies by milliseconds; the shim over /bin/true shows its cost alone.
    let truth = PathBuf::from("/bin/true");
    let (mut bare, mut bare_shim) = (
        Phase::new("/bin/true directly"),
        Phase::new("shim over /bin/true"),
    );
    for _ in 0..args.runs {
        let _ = direct
            .latency
            .record(time_run(&real, &spool, None, b"1\n")?);
        let _ = shimmed
            .latency
            .record(time_run(&shim, &spool, None, b"1\n")?);
        let _ = bare.latency.record(time_run(&truth, &spool, None, b"")?);
        let _ = bare_shim
            .latency
            .record(time_run(&shim, &spool, Some(&truth), b"")?);
    }
    let records = std::fs::read_dir(&spool)?
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "pb"))
        .count();
    anyhow::ensure!(
        records == 2 * args.runs + 1,
        "every shim run is spooled ({records} records)"
    );
    let added = |q: f64| shimmed.percentile_ms(q) - direct.percentile_ms(q);
    let bare_added = |q: f64| bare_shim.percentile_ms(q) - bare.percentile_ms(q);
    println!("== shim-agent ({} runs each, interleaved) ==", args.runs);
    for phase in [&direct, &shimmed, &bare, &bare_shim] {
        println!(
            "{:<34} p50 {:>7.2} ms   p95 {:>7.2} ms   p99 {:>7.2} ms",
            phase.name,
            phase.percentile_ms(0.50),
            phase.percentile_ms(0.95),
            phase.percentile_ms(0.99)
        );
    }
    println!(
        "targets: added p50 <= 2 ms {} ({:.2} ms); added p95 <= 5 ms {} ({:.2} ms); {} runs spooled",
        verdict(added(0.50) <= 2.0),
        added(0.50),
        verdict(added(0.95) <= 5.0),
        added(0.95),
        records
    );
    println!(
        "shim cost alone (over /bin/true): added p50 {:.2} ms, p95 {:.2} ms",
        bare_added(0.50),
        bare_added(0.95)
    );
    Ok(())
}
