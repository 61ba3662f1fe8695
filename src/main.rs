//! The `lagrouter` command line: parses arguments and calls into the library.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// PostgreSQL proxy that sends writes to the primary and reads to replicas
/// fresh enough for them, with read-your-writes by LSN.
#[derive(Parser)]
#[command(name = "lagrouter", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the proxy with a configuration file.
    Run {
        /// Configuration file (TOML).
        #[arg(short, long, default_value = "lagrouter.toml")]
        config: PathBuf,
    },
    /// Check a configuration file and print what is wrong, with line and key.
    CheckConfig {
        /// Configuration file (TOML).
        config: PathBuf,
    },
    /// Start a primary, two streaming replicas and lagrouter in a temporary
    /// directory, run a checked workload through it while replica1 lags,
    /// then stop everything and clean up.
    Demo {
        /// How long the workload runs: 60s, 2m, 90 (seconds); at least 10s.
        #[arg(long, default_value = "60s", value_parser = lagrouter::demo::parse_duration)]
        duration: std::time::Duration,
        /// Keep the data directory and logs afterwards (servers still stop).
        #[arg(long)]
        keep: bool,
    },
}

/// mimalloc: the forwarding path allocates small buffers per message and
/// per transaction; glibc's malloc was 15% of lagrouter's user time.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::CheckConfig { config } => lagrouter::cli::check_config(&config),
        Command::Demo { duration, keep } => {
            let rt = match tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("lagrouter: cannot start the runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            rt.block_on(lagrouter::demo::run(lagrouter::demo::DemoOptions {
                duration,
                keep,
            }))
        }
        Command::Run { config } => lagrouter::cli::serve(&config),
    }
}
