//! learntrail-token: mints an HS256 bearer token for trying the APIs (`make up` prints one).

use clap::Parser;
use learntrail_runtime::{
    auth::{self, Claims, Role},
    cli,
    units::parse_duration,
};

/// Mint a bearer token signed with JWT_SECRET.
#[derive(Debug, Parser)]
#[command(name = "learntrail-token", version, about)]
struct Args {
    /// HS256 secret (or --secret-file)
    #[arg(
        long,
        env = "JWT_SECRET",
        hide_env_values = true,
        required_unless_present = "secret_file"
    )]
    secret: Option<String>,
    /// File holding the secret
    #[arg(long)]
    secret_file: Option<std::path::PathBuf>,
    /// Subject: the learner or client id
    #[arg(long, default_value = "learner-1")]
    sub: String,
    /// Role: student, instructor or service
    #[arg(long, default_value = "student", value_parser = parse_role)]
    role: Role,
    /// Lifetime: the token's exp is now + this (every token expires; student tokens at most
    /// STUDENT_TOKEN_MAX_TTL, 30 days by default)
    #[arg(long, default_value = "24h", value_parser = parse_duration)]
    ttl: std::time::Duration,
}

fn parse_role(text: &str) -> Result<Role, String> {
    serde_json::from_value(serde_json::Value::String(text.into()))
        .map_err(|_| format!("unknown role {text:?} (student, instructor, service)"))
}

fn main() -> anyhow::Result<()> {
    let args: Args = cli::parse();
    let secret = match (&args.secret, &args.secret_file) {
        (_, Some(path)) => std::fs::read_to_string(path)?.trim().to_string(),
        (Some(secret), None) => secret.clone(),
        (None, None) => unreachable!("clap requires one"),
    };
    let now = auth::now();
    let claims = Claims {
        sub: args.sub,
        role: args.role,
        exp: Some(now + args.ttl.as_secs() as i64),
        nbf: None,
        iat: Some(now),
        courses: None,
    };
    cli::print(&format!("{}\n", auth::sign(secret.as_bytes(), &claims)));
    Ok(())
}
