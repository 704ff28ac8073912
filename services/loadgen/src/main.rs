#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

use clap::Parser;
use learntrail_loadgen::{Bench, run};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let bench = Bench::parse();
    run(bench).await
}
