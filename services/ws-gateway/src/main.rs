#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

use learntrail_runtime::{cli, shutdown, telemetry};
use learntrail_ws_gateway::{Config, run};

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let config: Config = cli::parse();
    telemetry::init(&config.log);
    cli::exit(run(config, shutdown::on_signal()).await)
}
