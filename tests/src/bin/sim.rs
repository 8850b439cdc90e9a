//! Runs the deterministic simulator (`tally_tests::sim`) over many seeds and prints a summary.
//!
//! ```text
//! cargo run -p tally-tests --bin sim -- --seeds 10000            # seeds 0..10000
//! cargo run -p tally-tests --bin sim -- --seeds 500 --start 7000 # seeds 7000..7500
//! cargo run -p tally-tests --bin sim -- --seed 42 --verbose      # replay one seed
//! ```
//!
//! Options: `--appends N` (appends per run), `--disable-sealing` (the negative control: the
//! checker must find violations), `--no-purge` (storage nodes do not purge after a missed
//! recovery, as `storage-node` today), `--verbose` (print faults as they happen), `--keep-going`
//! (do not stop at the first failing seed). Exits with status 1 if any seed failed.

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context as _, bail};
use tally_tests::sim::{self, FaultKind, SimConfig};

#[derive(Debug)]
struct Args {
    start: u64,
    seeds: u64,
    keep_going: bool,
    config: SimConfig,
}

fn parse() -> anyhow::Result<Args> {
    let mut args = Args {
        start: 0,
        seeds: 100,
        keep_going: false,
        config: SimConfig::default(),
    };
    let mut it = std::env::args().skip(1);
    let number = |it: &mut dyn Iterator<Item = String>, flag: &str| -> anyhow::Result<u64> {
        it.next()
            .with_context(|| format!("{flag} needs a number"))?
            .parse()
            .with_context(|| format!("{flag} needs a number"))
    };
    while let Some(a) = it.next() {
        match a.as_str() {
            "--seed" => {
                args.start = number(&mut it, "--seed")?;
                args.seeds = 1;
            }
            "--seeds" => args.seeds = number(&mut it, "--seeds")?,
            "--start" => args.start = number(&mut it, "--start")?,
            "--appends" => {
                args.config.appends = u32::try_from(number(&mut it, "--appends")?)?;
            }
            "--disable-sealing" => args.config.disable_sealing = true,
            "--no-purge" => args.config.purge_missed_recoveries = false,
            "--verbose" => args.config.verbose = true,
            "--keep-going" => args.keep_going = true,
            "-h" | "--help" => {
                println!(
                    "usage: sim [--seeds N] [--start S] [--seed S] [--appends N] \
                     [--disable-sealing] [--no-purge] [--verbose] [--keep-going]"
                );
                std::process::exit(0);
            }
            other => bail!("unknown argument {other:?} (try --help)"),
        }
    }
    Ok(args)
}

fn main() -> ExitCode {
    let args = match parse() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("sim: {e:#}");
            return ExitCode::from(2);
        }
    };
    let started = Instant::now();
    let (mut passed, mut failed) = (0u64, 0u64);
    let (mut acked, mut failed_appends, mut indeterminate) = (0u64, 0u64, 0u64);
    let (mut unverified, mut lost_fast, mut liveness, mut virtual_ms) = (0u64, 0u64, 0u64, 0u64);
    let mut epochs = 0u64;
    let mut faults: BTreeMap<FaultKind, u64> = BTreeMap::new();
    let mut stats: BTreeMap<&'static str, u64> = BTreeMap::new();
    let mut failing = Vec::new();
    for seed in args.start..args.start + args.seeds {
        let report = sim::run(seed, &args.config);
        acked += report.acked;
        failed_appends += report.failed;
        indeterminate += report.indeterminate;
        unverified += report.unverified;
        lost_fast += report.lost_fast;
        liveness += u64::from(!report.liveness.is_empty());
        virtual_ms += report.virtual_ms;
        epochs += u64::from(report.epochs);
        for (k, n) in &report.faults {
            *faults.entry(*k).or_default() += n;
        }
        for (k, n) in &report.stats {
            *stats.entry(*k).or_default() += n;
        }
        if args.config.verbose || args.seeds == 1 {
            println!(
                "seed {seed}: {} acked, {} failed, {} indeterminate, {} epochs, {} events; {}",
                report.acked,
                report.failed,
                report.indeterminate,
                report.epochs,
                report.events,
                report.fault_mix
            );
            for note in &report.liveness {
                println!("  liveness: {note}");
            }
        }
        if report.passed() {
            passed += 1;
        } else {
            failed += 1;
            println!("{}", report.failure_message(&args.config));
            failing.push(seed);
            if !args.keep_going {
                break;
            }
        }
    }
    let runs = passed + failed;
    println!();
    println!("{:<34} {:>12}", "seeds run", runs);
    println!("{:<34} {:>12}", "runs passed", passed);
    println!("{:<34} {:>12}", "runs failed", failed);
    println!("{:<34} {:>12}", "appends acknowledged", acked);
    println!(
        "{:<34} {:>12}",
        "appends failed (certainly not)", failed_appends
    );
    println!("{:<34} {:>12}", "appends indeterminate", indeterminate);
    println!(
        "{:<34} {:>12}",
        "acked lost in fast mode (allowed)", lost_fast
    );
    println!(
        "{:<34} {:>12}",
        "acked unverified (reader stalled)", unverified
    );
    println!("{:<34} {:>12}", "runs with liveness notes", liveness);
    println!("{:<34} {:>12}", "epochs activated", epochs);
    for (k, n) in &faults {
        println!("{:<34} {:>12}", format!("faults: {k}"), n);
    }
    for (k, n) in &stats {
        println!("{:<34} {:>12}", k, n);
    }
    println!("{:<34} {:>12}", "virtual time (s)", virtual_ms / 1000);
    println!(
        "{:<34} {:>12.1}",
        "wall time (s)",
        started.elapsed().as_secs_f64()
    );
    if failing.is_empty() {
        ExitCode::SUCCESS
    } else {
        println!("failing seeds: {failing:?}");
        ExitCode::FAILURE
    }
}
