//! The `certfleet` command.

use std::process::ExitCode;

use certfleet::demo::cluster::{self, ClusterOptions, DemoCa};
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
    /// Run a certfleet cluster on this machine, without a network: voters and an edge on
    /// loopback, issuing certificates from the embedded ACME CA (or a given ACME directory),
    /// then check with a real TLS client that every node serves every certificate.
    Demo {
        /// Voters (Raft members that may lead).
        #[arg(long, default_value_t = 3)]
        nodes: u8,
        /// Edges (nodes that serve and answer challenges but never vote).
        #[arg(long, default_value_t = 1)]
        edges: u8,
        /// Certificates to issue.
        #[arg(long, default_value_t = 1000)]
        certs: u32,
        /// An ACME directory to use instead of the embedded CA; it must reach the nodes on
        /// 127.0.0.1.. at --http01-port and --tls-port.
        #[arg(long)]
        directory: Option<String>,
        /// PEM root(s) for the directory's HTTPS.
        #[arg(long)]
        ca_root: Option<std::path::PathBuf>,
        /// HTTP-01 port on every node (default: any free one).
        #[arg(long, default_value_t = 0)]
        http01_port: u16,
        /// TLS port on every node (default: any free one).
        #[arg(long, default_value_t = 0)]
        tls_port: u16,
        /// Seed of the embedded CA (its keys and identifiers).
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Give up after this many seconds.
        #[arg(long, default_value_t = 600)]
        timeout: u64,
        /// Export the certificates as PEM files in certbot's layout (DIR/live/NAME/*.pem) from
        /// the last node.
        #[arg(long, value_name = "DIR")]
        export_dir: Option<std::path::PathBuf>,
        /// Print progress to stderr and one JSON object as the last line of stdout.
        #[arg(long)]
        json: bool,
    },
    /// Run the lifecycle core alone in virtual time: one leader against a model CA, importing
    /// certificates, issuing them within Let's Encrypt's budgets and renewing them for months.
    Lifecycle {
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
            nodes,
            edges,
            certs,
            directory,
            ca_root,
            http01_port,
            tls_port,
            seed,
            timeout,
            export_dir,
            json,
        } => {
            let options = ClusterOptions {
                export_dir,
                voters: nodes,
                edges,
                certs,
                http01_port,
                tls_port,
                timeout: std::time::Duration::from_secs(timeout),
            };
            let ca = match directory {
                Some(url) => {
                    let root_pem = match ca_root
                        .map(|path| std::fs::read(&path).map_err(|error| (path, error)))
                    {
                        Some(Ok(pem)) => Some(pem),
                        Some(Err((path, error))) => {
                            eprintln!("certfleet demo: --ca-root {}: {error}", path.display());
                            return ExitCode::from(2);
                        }
                        None => None,
                    };
                    Some(DemoCa::Directory { url, root_pem })
                }
                None => None,
            };
            run_demo(&options, ca, seed, json)
        }
        Command::Lifecycle {
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
            let report = match demo::run(&options, progress(json)) {
                Ok(report) => report,
                Err(error) => {
                    eprintln!("certfleet lifecycle: {error}");
                    return ExitCode::from(2);
                }
            };
            if json {
                if let Err(code) = print_json(&report) {
                    return code;
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

/// Progress lines: to stdout, or to stderr when stdout carries the JSON report.
fn progress(json: bool) -> impl FnMut(&str) {
    move |line: &str| {
        if json {
            eprintln!("{line}");
        } else {
            println!("{line}");
        }
    }
}

fn print_json(report: &impl serde::Serialize) -> Result<(), ExitCode> {
    match serde_json::to_string(report) {
        Ok(line) => {
            println!("{line}");
            Ok(())
        }
        Err(error) => {
            eprintln!("certfleet: cannot encode the report: {error}");
            Err(ExitCode::FAILURE)
        }
    }
}

/// `certfleet demo`: the embedded CA unless `ca` names a directory.
fn run_demo(options: &ClusterOptions, ca: Option<DemoCa>, seed: u64, json: bool) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("certfleet demo: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let ca = ca.unwrap_or(DemoCa::Embedded { seed });
    let result = runtime.block_on(cluster::run(options, ca, progress(json)));
    let report = match result {
        Ok(report) => report,
        Err(error) => {
            eprintln!("certfleet demo: {error}");
            return ExitCode::from(2);
        }
    };
    if json {
        if let Err(code) = print_json(&report) {
            return code;
        }
    } else {
        print_cluster_report(&report);
    }
    if report.all_served {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn print_cluster_report(report: &cluster::ClusterReport) {
    println!();
    println!("CA                      {}", report.ca);
    println!(
        "nodes                   {} ({} voters)",
        report.nodes, report.voters
    );
    println!(
        "issued                  {} of {}",
        report.issued, report.certs
    );
    println!(
        "ACME orders             {} ({:.3} per certificate)",
        report.orders, report.orders_per_cert
    );
    println!(
        "time                    {:.1} s ({:.1} certificates/s)",
        report.seconds, report.certs_per_second
    );
    println!(
        "propagation             p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms (committed -> served by every node)",
        report.propagation_ms_p50, report.propagation_ms_p99, report.propagation_ms_max
    );
    if let Some(exported) = report.exported {
        println!("exported as PEM         {exported}");
    }
    println!(
        "served everywhere       {} ({} TLS handshakes)",
        if report.all_served { "yes" } else { "NO" },
        report.handshakes
    );
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
