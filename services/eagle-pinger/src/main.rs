#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

use clap::Parser as _;
use learntrail_eagle_pinger::{Config, admin, run};
use learntrail_runtime::{cli, shutdown, telemetry};

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let command = std::env::args().nth(1);
    if matches!(command.as_deref(), Some("import" | "rekey")) {
        let admin = admin::Admin::try_parse().unwrap_or_else(|err| {
            let _ = err.print();
            std::process::exit(if err.use_stderr() { cli::EX_USAGE } else { 0 })
        });
        return cli::exit(admin::run(admin).await);
    }
    let config: Config = cli::parse();
    telemetry::init(&config.log);
    cli::exit(run(config, shutdown::on_signal()).await)
}
