#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::{net::SocketAddr, time::Duration};

use clap::Parser;
use learntrail_fake_eagle::{Api, FakeEagle, MeterSpec, Mode};

/// fake-eagle: many simulated Rainforest Eagle meters (cloud relay and local APIs) over HTTP.
///
/// Meters 000001, 000002, ... (hex, --first upwards) get password pw-<cloud_id> and e-mail
/// meter-<cloud_id>@example.org.
#[derive(Debug, Parser)]
#[command(name = "fake-eagle", version, about)]
struct Args {
    /// Where to listen
    #[arg(long, env = "FAKE_EAGLE_ADDR", default_value = "127.0.0.1:9445")]
    addr: SocketAddr,
    /// How many meters to simulate
    #[arg(long, env = "FAKE_EAGLE_METERS", default_value_t = 3)]
    meters: u32,
    /// The first cloud id, in hex
    #[arg(long, default_value = "000001", value_parser = parse_hex)]
    first: u32,
    /// The API every generated meter speaks
    #[arg(long, value_enum, default_value = "cloud")]
    api: Api,
    /// A meter's mode, as CLOUD_ID=MODE (ok, bad_credentials, slow, down, malformed); repeatable
    #[arg(long = "mode", env = "FAKE_EAGLE_MODES", value_delimiter = ',', value_parser = parse_mode)]
    modes: Vec<(String, Mode)>,
    /// Meters whose demand is negative (solar export), comma-separated cloud ids
    #[arg(long, env = "FAKE_EAGLE_EXPORT", value_delimiter = ',')]
    export: Vec<String>,
    /// How long a slow meter takes to answer
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    slow: Duration,
}

fn parse_hex(text: &str) -> Result<u32, String> {
    u32::from_str_radix(text, 16).map_err(|e| e.to_string())
}

fn parse_mode(text: &str) -> Result<(String, Mode), String> {
    let (id, mode) = text.split_once('=').ok_or("expected CLOUD_ID=MODE")?;
    Ok((id.to_ascii_lowercase(), mode.parse()?))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .init();
    let fake = FakeEagle::new(args.slow);
    for n in args.first..args.first + args.meters {
        let id = format!("{n:06x}");
        let mut spec = MeterSpec::demo(&id, args.api);
        spec.export = args.export.contains(&id);
        fake.add(&id, spec);
    }
    for (id, mode) in &args.modes {
        fake.set_mode(id, *mode);
    }
    let listener = tokio::net::TcpListener::bind(args.addr).await?;
    tracing::info!(addr = %listener.local_addr()?, meters = args.meters, "fake-eagle listening");
    fake.serve(listener).await?;
    Ok(())
}
