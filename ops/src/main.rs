//! `tally`: the one binary. Server, dev cluster, CLI and benchmarks (DESIGN §11).
//!
//! Layout: `node` (one node's roles behind one endpoint, shared by `server` and `dev`),
//! `server` (`tally server`), `dev` (`tally dev`, a cluster in one process), `config` (the
//! node's TOML config, layered file → env → flags), `cli` (`tally append`, `tally log`),
//! `signals` (SIGINT / SIGTERM), `bench` (`tally bench`).

use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

mod bench;
mod cli;
mod config;
mod dev;
mod node;
mod server;
mod signals;

/// Tally: a distributed log store.
#[derive(Debug, Parser)]
#[command(name = "tally", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Runs one node: the sequencer and/or storage role (config file, TALLY_* env, flags).
    Server(server::ServerArgs),
    /// Runs a whole cluster in this process on 127.0.0.1 (1 sequencer + 3 storage nodes).
    Dev(dev::DevArgs),
    /// Appends the PAYLOAD, or every line of stdin, to a log; prints each LSN.
    Append(cli::append::AppendArgs),
    /// Creates and shows logs.
    #[command(subcommand)]
    Log(LogCommand),
    /// Benchmarks that print a table and can write JSON (`--json PATH`).
    Bench(bench::BenchArgs),
}

#[derive(Debug, Subcommand)]
enum LogCommand {
    /// Creates a log with its attributes.
    Create(cli::log::LogCreateArgs),
    /// Shows a log's attributes, epoch and node sets.
    Show(cli::log::LogShowArgs),
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}

fn main() -> std::process::ExitCode {
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tally: error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match cli.command {
        Command::Bench(args) => bench::run(args),
        Command::Dev(args) => runtime()?.block_on(dev::run(args)),
        Command::Append(args) => runtime()?.block_on(cli::append::append(args)),
        Command::Log(LogCommand::Create(args)) => runtime()?.block_on(cli::log::create(args)),
        Command::Log(LogCommand::Show(args)) => runtime()?.block_on(cli::log::show(args)),
        Command::Server(args) => {
            let config = server::load_config(&args)?;
            runtime()?.block_on(async move {
                let deps = server::open_store(&config).await?;
                let shutdown = CancellationToken::new();
                let stop = shutdown.clone();
                tokio::spawn(async move {
                    if let Err(e) = signals::wait_for_stop().await {
                        eprintln!("tally server: {e:#}");
                    }
                    stop.cancel();
                });
                let id = config.node_id;
                server::run(config, deps, shutdown, |node| {
                    let roles = node.info.roles;
                    let roles = match (roles.sequencer, roles.storage) {
                        (true, true) => "sequencer,storage",
                        (true, false) => "sequencer",
                        _ => "storage",
                    };
                    println!(
                        "tally server: node {id} ready on {} (roles {roles}, advertised as {})",
                        node.addr, node.info.address
                    );
                })
                .await?;
                println!("tally server: node {id} stopped");
                Ok(())
            })
        }
    }
}
