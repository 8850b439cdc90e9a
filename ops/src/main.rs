//! `tally`: the one binary. Server, dev cluster, CLI and benchmarks (DESIGN §11). This file
//! only parses arguments and dispatches; the work lives in the `tally` library (`lib.rs`).

use clap::{Parser, Subcommand};

use tally::{bench, cli, dev, server};

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
    /// Prints a log's records (from the oldest to the tail by default; --follow to keep going).
    Read(cli::read::ReadArgs),
    /// Prints records as they are appended to a log, from its tail on.
    Tail(cli::read::TailArgs),
    /// Prints the first LSN of a log at or after a time.
    FindTime(cli::read::FindTimeArgs),
    /// Trims a log up to an LSN (inclusive).
    Trim(cli::read::TrimArgs),
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
        Command::Read(args) => runtime()?.block_on(cli::read::read(args)),
        Command::Tail(args) => runtime()?.block_on(cli::read::tail(args)),
        Command::FindTime(args) => runtime()?.block_on(cli::read::find_time(args)),
        Command::Trim(args) => runtime()?.block_on(cli::read::trim(args)),
        Command::Server(args) => server::main(args),
    }
}
