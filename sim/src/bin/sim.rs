//! The seed runner. Interface (fixed; scripts rely on it):
//!
//! * `certfleet-sim --seeds A..B`: one line per seed, then exactly `N seeds, M violations`; a
//!   failing seed prints the one command that replays it.
//! * `certfleet-sim --seed S`: the run's lines, then `digest: <hex>` (byte-identical on every
//!   run of that seed).
//!
//! It must be built with `RUSTFLAGS="--cfg madsim"` (see the crate docs).

use std::process::ExitCode;

#[cfg(madsim)]
fn main() -> ExitCode {
    use certfleet_sim::SimOptions;
    use certfleet_sim::cluster::{self, hex};

    let args: Vec<String> = std::env::args().skip(1).collect();
    let (range, single) = match args.as_slice() {
        [flag, value] if flag == "--seed" => match value.parse::<u64>() {
            Ok(seed) => (seed..seed + 1, true),
            Err(_) => return usage(&format!("--seed takes a number, not {value:?}")),
        },
        [flag, value] if flag == "--seeds" => match parse_range(value) {
            Some(range) => (range, false),
            None => return usage(&format!("--seeds takes A..B, not {value:?}")),
        },
        _ => return usage("expected --seed S or --seeds A..B"),
    };
    let mut violations = 0u64;
    let mut runs = 0u64;
    for seed in range {
        let options = SimOptions::from_seed(seed);
        let mut runtime =
            madsim::runtime::Runtime::with_seed_and_config(seed, madsim::Config::default());
        // A run that does not finish within this much virtual time is stuck: a liveness bug.
        runtime.set_time_limit(std::time::Duration::from_secs(cluster::VIRTUAL_SECS_MAX));
        let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            runtime.block_on(async move { cluster::run(&options).await })
        }));
        let outcome = match run {
            Ok(outcome) => outcome,
            Err(panic) => cluster::Outcome::panicked(&*panic),
        };
        runs += 1;
        let digest = hex(&outcome.trace_digest);
        let summary = format!(
            "acked={} unknown={} cycles={} orders={} leader_changes={} lost={} torn={}",
            outcome.acknowledged,
            outcome.unknown,
            outcome.cycles,
            outcome.orders,
            outcome.leader_changes,
            outcome.entries_lost,
            outcome.entries_torn
        );
        if outcome.violations.is_empty() {
            println!("seed {seed} ok {summary} digest={}", &digest[..16]);
        } else {
            violations += outcome.violations.len() as u64;
            println!("seed {seed} FAILED {summary}");
            for violation in &outcome.violations {
                println!("  {violation}");
            }
            println!(
                "  replay: RUSTFLAGS=\"--cfg madsim\" CARGO_TARGET_DIR=$HOME/.cache/certfleet/madsim cargo run -p certfleet-sim --release -- --seed {seed}"
            );
        }
        if single {
            print!("{}", outcome.trace);
            println!("digest: {digest}");
        }
    }
    println!("{runs} seeds, {violations} violations");
    if violations == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

#[cfg(madsim)]
fn parse_range(text: &str) -> Option<std::ops::Range<u64>> {
    let (start, end) = text.split_once("..")?;
    let (start, end) = (start.parse().ok()?, end.parse().ok()?);
    (start < end).then_some(start..end)
}

#[cfg(madsim)]
fn usage(problem: &str) -> ExitCode {
    eprintln!("certfleet-sim: {problem}\nusage: certfleet-sim --seed S | --seeds A..B");
    ExitCode::from(2)
}

#[cfg(not(madsim))]
fn main() -> ExitCode {
    eprintln!(
        "certfleet-sim runs only as a simulation build:\n  RUSTFLAGS=\"--cfg madsim\" CARGO_TARGET_DIR=$HOME/.cache/certfleet/madsim cargo run -p certfleet-sim --release -- --seeds 0..200"
    );
    ExitCode::from(2)
}
