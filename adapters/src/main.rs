//! The `certfleet` command.

use std::process::ExitCode;

use certfleet::demo::{self, DemoOptions};
use clap::{Parser, Subcommand};

/// certfleet: TLS certificates for a fleet of reverse proxies, ordered once, served everywhere.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the certificate lifecycle end to end on this machine, without a network.
    ///
    /// Today this runs the lifecycle core as one leader against a model CA in virtual time
    /// (the replicated cluster and the real ACME path are not built yet): it imports the
    /// certificates, issues them within Let's Encrypt's rate budgets, renews them for the given
    /// number of days, and checks that every certificate is served and ordered once per cycle.
    Demo {
        /// Certificates to import.
        #[arg(long, default_value_t = 1000)]
        certs: u32,
        /// Virtual days to run.
        #[arg(long, default_value_t = 120)]
        days: u32,
        /// Lifetime of issued certificates in days (90 classic, 45 tlsserver, 6 shortlived).
        #[arg(long, default_value_t = 90)]
        lifetime_days: u32,
        /// Seed of every choice in the run; the same seed gives the same state digest.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Print progress to stderr and one JSON object as the last line of stdout.
        #[arg(long)]
        json: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Demo {
            certs,
            days,
            lifetime_days,
            seed,
            json,
        } => {
            let options = DemoOptions {
                certs,
                days,
                lifetime_days,
                seed,
            };
            let progress = |line: &str| {
                if json {
                    eprintln!("{line}");
                } else {
                    println!("{line}");
                }
            };
            let report = match demo::run(&options, progress) {
                Ok(report) => report,
                Err(error) => {
                    eprintln!("certfleet demo: {error}");
                    return ExitCode::from(2);
                }
            };
            if json {
                match serde_json::to_string(&report) {
                    Ok(line) => println!("{line}"),
                    Err(error) => {
                        eprintln!("certfleet demo: cannot encode the report: {error}");
                        return ExitCode::FAILURE;
                    }
                }
            } else {
                print_report(&report);
            }
            if report.all_served {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

fn print_report(report: &demo::DemoReport) {
    println!();
    println!("mode                  {}", report.mode);
    println!("certificates          {}", report.certs);
    println!("virtual days          {}", report.virtual_days);
    println!(
        "issued                {} ({} renewals)",
        report.issued, report.renewals
    );
    println!(
        "orders at the CA      {} ({:.3} per issued certificate)",
        report.orders, report.orders_per_issued
    );
    println!(
        "first issuance done   after {:.1} virtual hours (paced by the 300 orders / 3 h budget)",
        report.initial_issuance_hours
    );
    println!(
        "planner scan per tick at most {} entries",
        report.planner_scanned_max
    );
    println!(
        "all served unexpired  {}",
        if report.all_served { "yes" } else { "NO" }
    );
    println!("state digest          {}", report.state_digest);
    println!("wall time             {:.2} s", report.seconds);
}
