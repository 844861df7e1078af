//! The `sluice` binary: parses the command line, sets up logging, dispatches
//! to the subcommand and turns its outcome into an exit code (2: bad usage or
//! configuration, 1: runtime failure, 0: success; `verify`: 3 when it found
//! drift).

use std::path::Path;

use clap::Parser;
use sluice::app::status::Targets;
use sluice::cli::{Cli, Command, EXIT_CONFIG, EXIT_RUNTIME};
use sluice::config::Config;

/// mimalloc instead of the system allocator: on the streaming hot path,
/// buffers are allocated on one thread and freed on another (reader ->
/// indexer), which glibc's malloc paid for with about a third of Sluice's
/// CPU (see BENCHMARKS.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    let cli = Cli::parse();
    if let Err(e) = sluice::ops::logging::init(cli.log_format) {
        eprintln!("sluice: {e}");
        std::process::exit(EXIT_CONFIG);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("sluice: cannot start the async runtime: {e}");
            std::process::exit(EXIT_RUNTIME);
        }
    };
    let code = runtime.block_on(dispatch(cli.command));
    // Do not wait for lingering background tasks (HTTP keep-alives, ...).
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    std::process::exit(code);
}

async fn dispatch(command: Command) -> i32 {
    match command {
        Command::Check(args) => sluice::app::check::run(&args.config).await,
        Command::Run(args) => sluice::app::run::main(&args.config).await,
        Command::Status(args) => {
            let Some((cfg, targets)) = load_for_ops(&args.config.config) else {
                return EXIT_CONFIG;
            };
            let outcome = sluice::app::status::status_command(
                &cfg.postgres,
                &cfg.elasticsearch,
                &targets,
                args.json,
            )
            .await;
            print_outcome(
                "status",
                outcome.map_err(|e| (e.to_string(), e.exit_code())),
            )
        }
        Command::Teardown(args) => {
            let Some((cfg, targets)) = load_for_ops(&args.config.config) else {
                return EXIT_CONFIG;
            };
            let outcome = sluice::app::status::teardown_command(
                &cfg.postgres,
                &cfg.elasticsearch,
                &targets,
                args.yes_drop_slot,
            )
            .await;
            print_outcome(
                "teardown",
                outcome.map_err(|e| (e.to_string(), e.exit_code())),
            )
        }
        Command::Snapshot(args) => sluice::app::snapshot::command(&args.request()).await,
        Command::Verify(args) => sluice::app::verify::command(&args.request()).await,
        Command::DeadLetters(c) => sluice::app::dead_letters::command(&c.request()).await,
    }
}

/// A command's text on stdout (exit 0), or its error on stderr with its
/// exit code.
fn print_outcome(command: &str, outcome: Result<String, (String, i32)>) -> i32 {
    match outcome {
        Ok(text) => {
            print!("{text}");
            0
        }
        Err((error, code)) => {
            eprintln!("sluice {command}: {error}");
            code
        }
    }
}

fn load_for_ops(path: &Path) -> Option<(Config, Targets)> {
    match Config::load(path) {
        Ok(cfg) => {
            let targets = Targets::of(&cfg);
            Some((cfg, targets))
        }
        Err(e) => {
            eprintln!("{e}");
            None
        }
    }
}
