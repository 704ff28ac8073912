//! One binary, two roles: named `shim-agent` it is the agent's CLI; named anything else (`ruby`,
//! `irb`, `rake` — links made by `shim-agent install`) it is the shim for that program.

fn main() {
    let mut args = std::env::args_os();
    let argv0 = args.next().unwrap_or_default();
    if learntrail_shim_agent::settings::is_agent_name(&argv0) {
        std::process::exit(learntrail_shim_agent::cli::main());
    }
    learntrail_shim_agent::shim::run(argv0, args.collect())
}
