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
    /// Creates, shows, lists, updates and trims logs.
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
    /// Prints the cluster at a glance: nodes and their state, logs, epochs, release lag, rates.
    Status(cli::status::StatusArgs),
    /// Prints the records of a time range that contain PATTERN, filtered on the storage nodes.
    ///
    /// PATTERN is a substring, or a regular expression with --regex. Matches are printed in
    /// LSN order; exit status 2 means a partial result (too many nodes down to be sure).
    Grep(cli::grep::GrepArgs),
    /// Creates a cluster's TLS certificates.
    #[command(subcommand)]
    Certs(CertsCommand),
    /// Benchmarks that print a table and can write JSON (`--json PATH`).
    Bench(bench::BenchArgs),
}

#[derive(Debug, Subcommand)]
enum LogCommand {
    /// Creates a log with its attributes.
    Create(cli::log::LogCreateArgs),
    /// Shows a log's attributes, epoch and node sets.
    Show(cli::log::LogShowArgs),
    /// Lists every log with its attributes.
    List(cli::log::LogListArgs),
    /// Changes a log's attributes (those given; they apply from its next epoch).
    Update(cli::log::LogUpdateArgs),
    /// Trims a log up to an LSN (inclusive); the same as `tally trim`.
    Trim(cli::read::TrimArgs),
}

#[derive(Debug, Subcommand)]
enum CertsCommand {
    /// Creates a cluster CA and node and client certificates in a directory.
    Init(cli::certs::CertsInitArgs),
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}

fn main() -> std::process::ExitCode {
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) if e.downcast_ref::<cli::Partial>().is_some() => {
            eprintln!("tally: {e:#}");
            std::process::ExitCode::from(2)
        }
        Err(e) => {
            eprintln!("tally: error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run() -> anyhow::Result<()> {
    tally::logging::init();
    let cli = Cli::parse();
    match cli.command {
        Command::Bench(args) => bench::run(args),
        Command::Dev(args) => runtime()?.block_on(dev::run(args)),
        Command::Append(args) => runtime()?.block_on(cli::append::append(args)),
        Command::Log(LogCommand::Create(args)) => runtime()?.block_on(cli::log::create(args)),
        Command::Log(LogCommand::Show(args)) => runtime()?.block_on(cli::log::show(args)),
        Command::Log(LogCommand::List(args)) => runtime()?.block_on(cli::log::list(args)),
        Command::Log(LogCommand::Update(args)) => runtime()?.block_on(cli::log::update(args)),
        Command::Log(LogCommand::Trim(args)) => runtime()?.block_on(cli::read::trim(args)),
        Command::Grep(args) => runtime()?.block_on(cli::grep::grep(args)),
        Command::Certs(CertsCommand::Init(args)) => cli::certs::init(args),
        Command::Read(args) => runtime()?.block_on(cli::read::read(args)),
        Command::Tail(args) => runtime()?.block_on(cli::read::tail(args)),
        Command::FindTime(args) => runtime()?.block_on(cli::read::find_time(args)),
        Command::Trim(args) => runtime()?.block_on(cli::read::trim(args)),
        Command::Status(args) => runtime()?.block_on(cli::status::status(args)),
        Command::Server(args) => server::main(args),
    }
}
