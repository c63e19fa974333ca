//! The `certfleet` binary as an operator runs it: a real process, real arguments, real exit
//! codes.

use std::process::Command;

fn certfleet() -> Command {
    Command::new(env!("CARGO_BIN_EXE_certfleet"))
}

#[test]
fn demo_runs_a_cluster_on_the_embedded_ca_and_every_node_serves_every_certificate() {
    let export = tempfile::tempdir().unwrap();
    let output = certfleet()
        .args(["demo", "--certs", "30", "--json", "--export-dir"])
        .arg(export.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    let stdout = String::from_utf8(output.stdout).unwrap();
    let last = stdout.lines().last().expect("a report line");
    let report: serde_json::Value = serde_json::from_str(last).unwrap();
    assert_eq!(report["issued"], 30, "{report}");
    assert_eq!(report["orders"], 30, "one order per certificate: {report}");
    assert_eq!(report["nodes"], 4, "3 voters and an edge: {report}");
    assert_eq!(report["all_served"], true, "{report}");
    assert_eq!(report["handshakes"], 4 * 30, "{report}");
    assert_eq!(report["exported"], 30, "{report}");
    for field in ["seconds", "propagation_ms_p50", "propagation_ms_p99"] {
        assert!(
            report[field].as_f64().is_some_and(|v| v >= 0.0),
            "{field}: {report}"
        );
    }
    assert!(
        report["propagation_ms_p50"].as_f64() <= report["propagation_ms_p99"].as_f64(),
        "{report}"
    );
    // The edge's export: certbot's layout, one directory per certificate.
    let live = export.path().join("live");
    let fullchain = std::fs::read_to_string(live.join("www0.shop0.test/fullchain.pem")).unwrap();
    assert_eq!(
        fullchain.matches("BEGIN CERTIFICATE").count(),
        2,
        "leaf and intermediate"
    );
    assert!(live.join("www29.shop0.test/privkey.pem").is_file());
    assert!(
        stderr.contains("every node serves all 30"),
        "progress on stderr: {stderr}"
    );
}

#[test]
fn demo_options_out_of_range_are_named() {
    let output = certfleet().args(["demo", "--nodes", "0"]).output().unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(stderr.contains("--nodes 0 is out of range"), "{stderr}");
}

#[test]
fn a_plain_http_directory_off_this_machine_is_refused() {
    let output = certfleet()
        .args([
            "demo",
            "--certs",
            "1",
            "--timeout",
            "20",
            "--directory",
            "http://ca.example.net/dir",
        ])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(
        stderr.contains("plain http is only accepted for a CA on this machine"),
        "{stderr}"
    );
}

#[test]
fn lifecycle_with_json_ends_stdout_with_one_json_report() {
    let output = certfleet()
        .args([
            "lifecycle",
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
    let output = certfleet()
        .args(["lifecycle", "--certs", "0"])
        .output()
        .unwrap();
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
