//! The `sluice` binary: parses the command line and reports errors at the edge.

use clap::Parser;
use sluice::cli::{Cli, Command, EXIT_NOT_IMPLEMENTED, EXIT_RUNTIME, LogFormat};

fn main() {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    let name = match &cli.command {
        Command::Check(args) => {
            let runtime = match tokio::runtime::Runtime::new() {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("sluice: cannot start the async runtime: {e}");
                    std::process::exit(EXIT_RUNTIME);
                }
            };
            let code = runtime.block_on(sluice::check::run(&args.config));
            std::process::exit(code);
        }
        Command::Run(_) => "run",
        Command::Snapshot(_) => "snapshot",
        Command::Status(_) => "status",
        Command::Teardown(_) => "teardown",
    };
    eprintln!("sluice {name}: not built yet (see the open issues); nothing was done");
    std::process::exit(EXIT_NOT_IMPLEMENTED);
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Human => builder.init(),
    }
}
