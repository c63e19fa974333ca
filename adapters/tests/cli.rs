//! The `certfleet` binary as an operator runs it: a real process, real arguments, real exit
//! codes.

use std::process::Command;

fn certfleet() -> Command {
    Command::new(env!("CARGO_BIN_EXE_certfleet"))
}

#[test]
fn demo_with_json_ends_stdout_with_one_json_report() {
    let output = certfleet()
        .args([
            "demo",
            "--certs",
            "60",
            "--days",
            "40",
            "--lifetime-days",
            "6",
            "--json",
        ])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8(output.stdout).unwrap();
    let last = stdout.lines().last().expect("a report line");
    let report: serde_json::Value = serde_json::from_str(last).unwrap();
    assert_eq!(report["certs"], 60);
    assert_eq!(report["nodes"], 1);
    assert_eq!(report["all_served"], true);
    // 6-day certificates renew every ~3 days: about 13 issuances each in 40 days.
    let issued = report["issued"].as_u64().unwrap();
    assert!((60 * 12..=60 * 14).contains(&issued), "issued {issued}");
    assert_eq!(
        report["orders"], report["issued"],
        "one order per issued certificate"
    );
    assert!(
        !String::from_utf8_lossy(&output.stderr).is_empty(),
        "progress goes to stderr with --json"
    );
}

#[test]
fn a_bad_option_is_named_and_exits_2() {
    let output = certfleet().args(["demo", "--certs", "0"]).output().unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(stderr.contains("--certs 0 is out of range"), "{stderr}");
}

#[test]
fn an_unknown_subcommand_is_refused_with_usage() {
    let output = certfleet().arg("frobnicate").output().unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("Usage"));
}
