//! `chaos`: the chaos harness (see `tally_tests::chaos`).
//!
//! ```text
//! cargo run --release -p tally-tests --bin chaos -- [--duration SECS] [--seed N] [--json PATH]
//!     [--control none|no-seal|no-fsync] [--dir DIR] …
//! ```
//!
//! Prints a table and exits 0 when every safety count is zero (1 otherwise). The same binary
//! runs the cluster's nodes: `chaos node --config FILE` is `tally server --config FILE` with
//! the fault-injecting UDP layer compiled in.

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use tally_tests::chaos::{self, ChaosConfig};

#[derive(Debug, Parser)]
#[command(name = "chaos", args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    node: Option<NodeCommand>,
    #[command(flatten)]
    config: ChaosConfig,
    /// Write the report as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
enum NodeCommand {
    /// Runs one node (what `tally server` runs).
    Node(tally::server::ServerArgs),
}

fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    if let Some(NodeCommand::Node(args)) = cli.node {
        return match tally::server::main(args) {
            Ok(()) => std::process::ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("chaos node: error: {e:#}");
                std::process::ExitCode::FAILURE
            }
        };
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("chaos: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(chaos::run(cli.config)) {
        Ok(report) => {
            print!("{}", report.table());
            if let Some(path) = cli.json {
                let text = serde_json::to_string_pretty(&report).expect("report serializes");
                if let Err(e) = std::fs::write(&path, text) {
                    eprintln!("chaos: cannot write {}: {e}", path.display());
                    return std::process::ExitCode::FAILURE;
                }
            }
            if report.passed() {
                std::process::ExitCode::SUCCESS
            } else {
                std::process::ExitCode::from(1)
            }
        }
        Err(e) => {
            eprintln!("chaos: error: {e:#}");
            std::process::ExitCode::from(2)
        }
    }
}
