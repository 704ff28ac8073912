#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

use learntrail_notebook_scanner::{Config, run};
use learntrail_runtime::{cli, shutdown, telemetry};

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let config: Config = cli::parse();
    telemetry::init(&config.log);
    cli::exit(run(config, shutdown::on_signal()).await)
}
