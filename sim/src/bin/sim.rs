//! The seed runner. Interface (fixed; scripts rely on it):
//!
//! * `certfleet-sim --seeds A..B [--jobs N] [--mutation NAME]`: one line per seed, then
//!   exactly `N seeds, M violations`; a failing seed prints the one command that replays it.
//! * `certfleet-sim --seed S [--mutation NAME] [--scenario NAME] [--quiet]`: the seed's line,
//!   its trace (not with `--quiet`), then `digest: <hex>` (byte-identical on every run of that
//!   seed).
//! * `--without CLASS[,CLASS…]` (with `--seed` or `--seeds`): the seeds' options with those
//!   fault classes switched off (`SimOptions::CLASSES`), to see which faults a failure needs.
//! * `--safety-hours H` (with `--seed` or `--seeds`): the soak mode, a safety phase of `H`
//!   virtual hours with the workload and faults scaled to it (`SimOptions::soak`).
//! * `--days` (with `--seed` or `--seeds`): the production timescale (`SimOptions::days`):
//!   lifetimes of days, 200–2,000 certificates, a 14-day safety phase, the production policy.
//! * `certfleet-sim --seed S --wire`: the wire scenario (`certfleet_sim::wire`: the production
//!   ACME adapter against the RFC 8555 CA over simulated TCP): its report, then
//!   `digest: <hex>` (byte-identical on every run of that seed; wall time goes to stderr).
//!   `--wire-kill PLAN` replaces the seed's leader kill: `none`, `after-<n>-issued`,
//!   `after-new-order`, `after-challenges-ready` or `after-finalize`.
//!
//! Every seed runs in a process of its own: tokio's and futures' `select!` seed their
//! branch-order RNG from a process-wide counter, so a second run in one process starts from
//! what the first left behind, and a seed's trace would depend on the seeds before it. A
//! batch therefore runs `certfleet-sim --seed S --quiet` once per seed (`--jobs` at a time)
//! and reads its lines.
//!
//! It must be built with `RUSTFLAGS="--cfg madsim"` (see the crate docs).

use std::process::ExitCode;

/// `println!` that ends the process quietly when its reader has gone (see [`emit`]).
#[cfg(madsim)]
macro_rules! say {
    ($($arg:tt)*) => {
        emit(format_args!("{}\n", format_args!($($arg)*)))
    };
}

/// Writes to stdout, ending the process quietly when its reader has gone (`--seed S | head
/// -1`): `print!` panics on the broken pipe, and Rust ignores SIGPIPE. 141 is what a shell
/// reports for a process SIGPIPE ended.
#[cfg(madsim)]
fn emit(text: std::fmt::Arguments<'_>) {
    use std::io::Write as _;
    if std::io::stdout().lock().write_fmt(text).is_err() {
        std::process::exit(141);
    }
}

#[cfg(madsim)]
fn main() -> ExitCode {
    match Args::parse(std::env::args().skip(1).collect()) {
        Ok(args) if args.wire => wire(&args),
        Ok(args) if args.seeds.end - args.seeds.start == 1 && args.single => one(&args),
        Ok(args) => batch(&args),
        Err(problem) => usage(&problem),
    }
}

#[cfg(madsim)]
struct Args {
    seeds: std::ops::Range<u64>,
    single: bool,
    quiet: bool,
    wire: bool,
    wire_kill: Option<certfleet_sim::wire::WireKill>,
    jobs: usize,
    mutation: Option<certfleet::mutation::Mutation>,
    scenario: Option<String>,
    without: Vec<String>,
    safety_hours: u64,
    days: bool,
}

#[cfg(madsim)]
impl Args {
    fn parse(args: Vec<String>) -> Result<Self, String> {
        use certfleet::mutation::Mutation;
        let mut parsed = Self {
            seeds: 0..0,
            single: false,
            quiet: false,
            wire: false,
            wire_kill: None,
            jobs: 1,
            mutation: None,
            scenario: None,
            without: Vec::new(),
            safety_hours: 1,
            days: false,
        };
        let mut args = args.into_iter();
        while let Some(flag) = args.next() {
            let mut value = || args.next().ok_or(format!("{flag} takes a value"));
            match flag.as_str() {
                "--seed" => {
                    let value = value()?;
                    let seed: u64 = value
                        .parse()
                        .map_err(|_| format!("--seed takes a number, not {value:?}"))?;
                    parsed.seeds = seed..seed + 1;
                    parsed.single = true;
                }
                "--seeds" => {
                    let value = value()?;
                    parsed.seeds = parse_range(&value)
                        .ok_or(format!("--seeds takes A..B with A < B, not {value:?}"))?;
                }
                "--jobs" => {
                    let value = value()?;
                    parsed.jobs = value
                        .parse()
                        .ok()
                        .filter(|jobs| *jobs > 0)
                        .ok_or(format!("--jobs takes a positive number, not {value:?}"))?;
                }
                "--mutation" => {
                    let value = value()?;
                    let names: Vec<&str> = Mutation::ALL.iter().map(|m| m.name()).collect();
                    parsed.mutation = Some(Mutation::parse(&value).ok_or(format!(
                        "no mutation {value:?}; known: {}",
                        names.join(", ")
                    ))?);
                }
                "--scenario" => parsed.scenario = Some(value()?),
                "--safety-hours" => {
                    let value = value()?;
                    parsed.safety_hours = value
                        .parse()
                        .ok()
                        .filter(|hours| (1..=10_000).contains(hours))
                        .ok_or(format!("--safety-hours takes 1 to 10000, not {value:?}"))?;
                }
                "--without" => {
                    let value = value()?;
                    for class in value.split(',') {
                        certfleet_sim::SimOptions::from_seed(0).without(class)?;
                        parsed.without.push(class.to_owned());
                    }
                }
                "--quiet" => parsed.quiet = true,
                "--days" => parsed.days = true,
                "--wire" => parsed.wire = true,
                "--wire-kill" => {
                    use certfleet_sim::wire::WireKill;
                    let value = value()?;
                    parsed.wire_kill = Some(WireKill::parse(&value).ok_or(format!(
                        "no wire kill {value:?}; known: none, after-<n>-issued, after-new-order, after-challenges-ready, after-finalize"
                    ))?);
                }
                other => return Err(format!("unknown argument {other:?}")),
            }
        }
        if parsed.seeds.is_empty() {
            return Err("expected --seed S or --seeds A..B".into());
        }
        if parsed.wire && (!parsed.single || parsed.mutation.is_some() || parsed.scenario.is_some())
        {
            return Err("--wire runs one seed: --seed S --wire".into());
        }
        if parsed.days && (parsed.wire || parsed.safety_hours != 1) {
            return Err("--days sets its own phases: not with --wire or --safety-hours".into());
        }
        if parsed.wire_kill.is_some() && !parsed.wire {
            return Err("--wire-kill needs --wire".into());
        }
        Ok(parsed)
    }

    /// The flags that reproduce this run for one seed.
    fn replay_flags(&self) -> String {
        let mut flags = String::new();
        if let Some(mutation) = self.mutation {
            flags.push_str(&format!(" --mutation {}", mutation.name()));
        }
        if let Some(scenario) = &self.scenario {
            flags.push_str(&format!(" --scenario {scenario}"));
        }
        if !self.without.is_empty() {
            flags.push_str(&format!(" --without {}", self.without.join(",")));
        }
        if self.safety_hours != 1 {
            flags.push_str(&format!(" --safety-hours {}", self.safety_hours));
        }
        if self.days {
            flags.push_str(" --days");
        }
        flags
    }
}

/// Runs one seed in this process.
#[cfg(madsim)]
fn one(args: &Args) -> ExitCode {
    use certfleet_sim::SimOptions;
    use certfleet_sim::cluster::{self, hex};
    use certfleet_sim::scenario;

    let seed = args.seeds.start;
    let options = match &args.scenario {
        None => SimOptions::from_seed(seed),
        Some(name) => match scenario::named(name, seed) {
            Some(options) => options,
            None => {
                return usage(&format!(
                    "no scenario {name:?}; known: {}",
                    scenario::NAMES.join(", ")
                ));
            }
        },
    }
    .with_mutation(args.mutation)
    .soak(args.safety_hours);
    let options = if args.days { options.days() } else { options };
    let options = match args
        .without
        .iter()
        .try_fold(options, |options, class| options.without(class))
    {
        Ok(options) => options,
        Err(problem) => return usage(&problem),
    };
    let outcome = cluster::run_seed(&options);
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
        say!("seed {seed} ok {summary} digest={}", &digest[..16]);
    } else {
        say!("seed {seed} FAILED {summary}");
        for violation in &outcome.violations {
            say!("  {violation}");
        }
        say!("  replay: {}", replay_command(seed, args));
    }
    if let Some(name) = args.scenario.as_deref()
        && name.starts_with("kill-")
    {
        match scenario::kill_report(name, &outcome.journal, &outcome.books) {
            Some(report) => say!("scenario: {report}"),
            None => say!("scenario: no kill fired"),
        }
    }
    let fired: Vec<String> = outcome
        .faults_fired
        .iter()
        .map(|(class, count)| format!("{class}:{count}"))
        .collect();
    say!(
        "stats: violations={} cycles={} orders={} extra_orders={} early_lost={} virtual_ms={} installs={} fired={}",
        outcome.violations.len(),
        outcome.cycles,
        outcome.orders,
        outcome.extra_orders,
        outcome.early_lost_with_leader,
        outcome.virtual_ms,
        outcome.snapshot_installs,
        fired.join(",")
    );
    if !args.quiet {
        emit(format_args!("{}", outcome.trace));
    }
    say!("digest: {digest}");
    if outcome.violations.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// Runs the wire scenario for one seed in this process.
#[cfg(madsim)]
fn wire(args: &Args) -> ExitCode {
    use certfleet_sim::cluster::hex;
    use certfleet_sim::wire::{self, WireOptions};

    let seed = args.seeds.start;
    let wall = std::time::Instant::now();
    let mut options = WireOptions::from_seed(seed);
    let mut flags = String::from(" --wire");
    if let Some(kill) = args.wire_kill {
        options.kill = kill;
        flags.push_str(&format!(" --wire-kill {}", kill.name()));
    }
    let report = wire::run(seed, options);
    emit(format_args!("{report}"));
    if !report.violations.is_empty() {
        say!("  replay: {}{flags}", replay_command(seed, args));
    }
    // Wall time is not a function of the seed: stderr, so stdout stays byte-identical.
    eprintln!("wall: {:.2} s", wall.elapsed().as_secs_f64());
    say!("digest: {}", hex(&report.trace_digest));
    if report.violations.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

#[cfg(madsim)]
fn replay_command(seed: u64, args: &Args) -> String {
    format!(
        "RUSTFLAGS=\"--cfg madsim\" CARGO_TARGET_DIR=$HOME/.cache/certfleet/madsim cargo run -p certfleet-sim --release -- --seed {seed}{}",
        args.replay_flags()
    )
}

/// Wall time one standard seed may take in a batch before it is killed and reported stuck
/// (seeds take seconds; a run that loops without letting virtual time pass never reaches
/// madsim's time limit, as `skip-leadership-check` does on some seeds, and would hold the
/// batch forever). A soak run gets this per hour of its safety phase.
#[cfg(madsim)]
const SEED_WALL_SECS_MAX: u64 = 300;

/// Waits for `child` for at most `secs` seconds of wall time, killing it past that; returns its
/// exit status (`None`: killed) and everything it printed. Its output is read on a thread of
/// its own, so a long report cannot fill the pipe and stall the child.
#[cfg(madsim)]
fn wait_at_most(
    mut child: std::process::Child,
    secs: u64,
) -> std::io::Result<(Option<std::process::ExitStatus>, String)> {
    use std::io::Read;
    let mut stdout = child.stdout.take();
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        if let Some(stdout) = stdout.as_mut() {
            // A read error leaves what was read: the caller sees a missing line and says so.
            let _ = stdout.read_to_string(&mut text);
        }
        text
    });
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break Some(status);
        }
        if std::time::Instant::now() >= deadline {
            child.kill()?;
            child.wait()?;
            break None;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    let text = reader.join().unwrap_or_default();
    Ok((status, text))
}

/// Runs every seed of the range in a child process of its own, `--jobs` at a time, and
/// prints their lines in seed order.
#[cfg(madsim)]
fn batch(args: &Args) -> ExitCode {
    use std::process::{Command, Stdio};

    let exe = match std::env::current_exe() {
        Ok(exe) => exe,
        Err(error) => return usage(&format!("cannot find this program to run seeds: {error}")),
    };
    let wall = std::time::Instant::now();
    let mut totals = Totals::default();
    let seeds: Vec<u64> = args.seeds.clone().collect();
    for chunk in seeds.chunks(args.jobs) {
        let children: Vec<(u64, std::io::Result<std::process::Child>)> = chunk
            .iter()
            .map(|&seed| {
                let mut command = Command::new(&exe);
                command
                    .args(["--seed", &seed.to_string(), "--quiet"])
                    .stdout(Stdio::piped())
                    .stderr(Stdio::null());
                if let Some(mutation) = args.mutation {
                    command.args(["--mutation", mutation.name()]);
                }
                if !args.without.is_empty() {
                    command.args(["--without", &args.without.join(",")]);
                }
                if args.safety_hours != 1 {
                    command.args(["--safety-hours", &args.safety_hours.to_string()]);
                }
                if args.days {
                    command.arg("--days");
                }
                (seed, command.spawn())
            })
            .collect();
        for (seed, child) in children {
            // A days run is 14 days of safety and one of liveness: 360 standard hours.
            let hours = if args.days { 360 } else { args.safety_hours };
            let limit = SEED_WALL_SECS_MAX * hours;
            let output = child.and_then(|child| wait_at_most(child, limit));
            let text = match &output {
                Ok((_, stdout)) => stdout.clone(),
                Err(_) => String::new(),
            };
            let mut seen = false;
            for line in text.lines() {
                if let Some(stats) = line.strip_prefix("stats: ") {
                    totals.add(stats);
                } else if !line.starts_with("digest: ") {
                    seen |= line.starts_with("seed ");
                    say!("{line}");
                }
            }
            if !seen {
                // The child died before reporting (an abort, a signal): a violation too.
                let status = match output {
                    Ok((Some(status), _)) => status.to_string(),
                    Ok((None, _)) => format!("stuck: killed after {limit} s of wall time"),
                    Err(error) => error.to_string(),
                };
                say!("seed {seed} FAILED the run did not report ({status})");
                say!("  replay: {}", replay_command(seed, args));
                totals.violations += 1;
            }
            totals.runs += 1;
        }
    }
    // A batch in which a fault class never fired tested less than it claims (SIMULATION
    // "Faults"); small batches are exempt.
    if totals.runs >= BATCH_RUNS_MIN && args.mutation.is_none() {
        let days_classes: &[&str] = if args.days {
            &certfleet_sim::cluster::DAYS_FAULT_CLASSES
        } else {
            &[]
        };
        for class in certfleet_sim::cluster::FAULT_CLASSES
            .iter()
            .chain(days_classes)
        {
            if totals.fired.get(*class).copied().unwrap_or(0) == 0 {
                say!("fault class {class} never fired in {} seeds", totals.runs);
                totals.violations += 1;
            }
        }
    }
    let fired: Vec<String> = totals
        .fired
        .iter()
        .map(|(class, count)| format!("{class}={count}"))
        .collect();
    say!("faults fired: {}", fired.join(" "));
    say!("snapshots installed: {}", totals.installs);
    say!(
        "calls before a Retry-After a deposed leader received and could not commit: {}",
        totals.early_lost
    );
    say!(
        "{} cycles, {} orders ({:.5} orders per cycle, {} beyond the first of their cycle); {:.1} virtual hours ({:.2} per seed); {:.1} seeds per minute",
        totals.cycles,
        totals.orders,
        totals.orders as f64 / totals.cycles.max(1) as f64,
        totals.extra_orders,
        totals.virtual_ms as f64 / 3_600_000.0,
        totals.virtual_ms as f64 / 3_600_000.0 / totals.runs.max(1) as f64,
        totals.runs as f64 * 60.0 / wall.elapsed().as_secs_f64().max(0.001)
    );
    say!("{} seeds, {} violations", totals.runs, totals.violations);
    if totals.violations == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

#[cfg(madsim)]
#[derive(Default)]
struct Totals {
    runs: u64,
    violations: u64,
    cycles: u64,
    orders: u64,
    extra_orders: u64,
    early_lost: u64,
    virtual_ms: u64,
    installs: u64,
    fired: std::collections::BTreeMap<String, u64>,
}

#[cfg(madsim)]
impl Totals {
    /// Adds a child's `stats:` line (`violations=1 cycles=2 … fired=a:1,b:2`).
    fn add(&mut self, stats: &str) {
        for field in stats.split_whitespace() {
            let Some((key, value)) = field.split_once('=') else {
                continue;
            };
            let number = value.parse::<u64>().unwrap_or(0);
            match key {
                "violations" => self.violations += number,
                "cycles" => self.cycles += number,
                "orders" => self.orders += number,
                "extra_orders" => self.extra_orders += number,
                "early_lost" => self.early_lost += number,
                "virtual_ms" => self.virtual_ms += number,
                "installs" => self.installs += number,
                "fired" => {
                    for pair in value.split(',') {
                        if let Some((class, count)) = pair.split_once(':') {
                            *self.fired.entry(class.to_owned()).or_default() +=
                                count.parse::<u64>().unwrap_or(0);
                        }
                    }
                }
                _ => {}
            }
        }
    }
}

/// Batches at least this large must fire every fault class.
#[cfg(madsim)]
const BATCH_RUNS_MIN: u64 = 50;

#[cfg(madsim)]
fn parse_range(text: &str) -> Option<std::ops::Range<u64>> {
    let (start, end) = text.split_once("..")?;
    let (start, end) = (start.parse().ok()?, end.parse().ok()?);
    (start < end).then_some(start..end)
}

#[cfg(madsim)]
fn usage(problem: &str) -> ExitCode {
    eprintln!(
        "certfleet-sim: {problem}\nusage: certfleet-sim --seeds A..B [--jobs N] [--mutation NAME] [--without CLASS,..] [--safety-hours H | --days]\n       certfleet-sim --seed S [--mutation NAME] [--scenario NAME] [--quiet] [--without CLASS,..] [--safety-hours H | --days]\n       certfleet-sim --seed S --wire [--wire-kill PLAN]"
    );
    ExitCode::from(2)
}

#[cfg(not(madsim))]
fn main() -> ExitCode {
    eprintln!(
        "certfleet-sim runs only as a simulation build:\n  RUSTFLAGS=\"--cfg madsim\" CARGO_TARGET_DIR=$HOME/.cache/certfleet/madsim cargo run -p certfleet-sim --release -- --seeds 0..200"
    );
    ExitCode::from(2)
}
