//! Writes the committed seed corpus: `cargo run --example make_corpus` (from `fuzz/`).
//!
//! Seeds are real encodings made by certfleet-core itself: the commands a leader committed while
//! issuing certificates in the test harness, hand-made commands for every `Op` variant aimed at
//! the fleet fixture of `checks.rs` (so most are accepted and reach deep into `apply`), snapshots
//! of small states after some virtual days, and a few deliberately corrupt inputs. Files are
//! named for what they hold; rerunning overwrites them byte for byte (everything is
//! deterministic) and leaves other files, such as seeds a fuzzer added, alone.
//!
//! Every seed is run through its target's oracle before the program ends, so a generator
//! change that breaks a seed, or a seed that finds a bug, fails here first.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use certfleet_core::command::{AriWindow, Failure, FailureClass, Op, StepRef, WIRE_VERSION, encode};
use certfleet_core::model::{CertRequest, CertSpec, ChallengeKind, IssuerId, Policy, Profile, RenewalReason};
use certfleet_core::name::Identifier;
use certfleet_core::snapshot::{FRAME_HEADER_LEN, SnapshotReader, SnapshotWriter};
use certfleet_core::testing::{self, Harness};
use certfleet_core::time::{DAY_MS, HOUR_MS, MINUTE_MS};
use certfleet_core::{Command, CertId, Cycle, Response, State, Term, apply};
use certfleet_fuzz::checks::{
    self, FIXTURE_START, FLEET_ISSUED, FLEET_OPEN, SNAPSHOT_REPAIR, check_command, check_snapshot, fleet_harness,
    fleet_steps, repair_snapshot,
};

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
    let commands = command_seeds();
    let snapshots = snapshot_seeds();
    write_all(&root.join("command_decode"), &commands);
    write_all(&root.join("snapshot_decode"), &snapshots);
    for (name, bytes) in &commands {
        check_command(bytes);
        println!("command_decode/{name}: {}", describe_command(bytes));
    }
    for (name, bytes) in &snapshots {
        check_snapshot(bytes);
        println!("snapshot_decode/{name}: {}", describe_snapshot(bytes));
    }
    println!("{} command seeds, {} snapshot seeds", commands.len(), snapshots.len());
}

type Seeds = BTreeMap<String, Vec<u8>>;

fn write_all(dir: &Path, seeds: &Seeds) {
    std::fs::create_dir_all(dir).unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));
    for (name, bytes) in seeds {
        let path: PathBuf = dir.join(name);
        std::fs::write(&path, bytes).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
    }
}

fn add(seeds: &mut Seeds, name: impl Into<String>, bytes: Vec<u8>) {
    let name = name.into();
    assert!(seeds.insert(name.clone(), bytes).is_none(), "two seeds named {name}");
}

// ---- command_decode -------------------------------------------------------------------------

fn command_seeds() -> Seeds {
    let mut seeds = Seeds::new();
    let h = fleet_harness();
    let now = h.now;
    let term = h.term;

    // What a leader really committed building the fleet fixture: two of each kind.
    let mut per_kind: BTreeMap<String, u32> = BTreeMap::new();
    for command in &h.log {
        let kind = kebab(&op_name(&command.op));
        let n = per_kind.entry(kind.clone()).or_default();
        if *n < 2 {
            *n += 1;
            add(&mut seeds, format!("log-{kind}-{n}"), encode(command));
        }
    }

    // Hand-made, one or more per variant, aimed at the fleet fixture.
    let at = |op: Op| encode(&Command { at: now.plus_ms(HOUR_MS), op });
    let id = |name: &str| testing::spec(&[name]).cert_id();
    let step = |name: &str, term: Term| StepRef { cert: id(name), cycle: Cycle(1), term };
    let issuer = |raw: &str| IssuerId::parse(raw).expect("valid issuer");
    let [s0, s1, s2, s3, s4] = FLEET_OPEN;
    let [a, _b] = FLEET_ISSUED;

    add(&mut seeds, "put-cert-new", at(Op::PutCert { spec: testing::spec(&["c.example.com", "www.c.example.com"]), seed: 11 }));
    let changed = testing::spec_with(&[a], ChallengeKind::TlsAlpn01, Profile::Classic);
    add(&mut seeds, "put-cert-changed-spec", at(Op::PutCert { spec: changed, seed: 12 }));
    let wildcard = testing::spec_with(&["*.example.com"], ChallengeKind::Dns01, Profile::Default);
    add(&mut seeds, "put-cert-wildcard-dns01", at(Op::PutCert { spec: wildcard, seed: 13 }));
    let ip = testing::spec_with(&["192.0.2.7", "2001:db8::1"], ChallengeKind::Http01, Profile::ShortLived);
    add(&mut seeds, "put-cert-ip-shortlived", at(Op::PutCert { spec: ip, seed: 14 }));
    add(&mut seeds, "put-cert-label", at(Op::PutCert { spec: spec_from(&["shop.example.com"], "le", Some("shop-frontend")), seed: 15 }));
    add(&mut seeds, "put-cert-unknown-issuer", at(Op::PutCert { spec: spec_from(&["z.example.com"], "zerossl", None), seed: 16 }));

    add(&mut seeds, "remove-cert-issued", at(Op::RemoveCert { cert: id(a) }));
    add(&mut seeds, "remove-cert-open", at(Op::RemoveCert { cert: id(s2) }));
    add(&mut seeds, "remove-cert-unknown", at(Op::RemoveCert { cert: CertId::parse("nope.example.com").expect("valid") }));

    add(&mut seeds, "set-account-replace", at(Op::SetAccount { issuer: issuer(testing::ISSUER), account: testing::account() }));
    let throttled = certfleet_core::model::Account { throttled_until: Some(now.plus_ms(DAY_MS)), ..testing::account() };
    add(&mut seeds, "set-account-new-issuer", at(Op::SetAccount { issuer: issuer("staging"), account: throttled }));

    add(&mut seeds, "set-policy-default", at(Op::SetPolicy { policy: Policy::default() }));
    let tight = Policy { renew_permille: 500, jitter_permille: 100, orders_in_flight_max: 1, scan_per_tick_max: 1, ..Policy::default() };
    add(&mut seeds, "set-policy-tight", at(Op::SetPolicy { policy: tight }));
    add(&mut seeds, "set-policy-invalid", at(Op::SetPolicy { policy: Policy { renew_permille: 1000, ..Policy::default() } }));

    let renew = |cycle| Op::BeginOrder { cert: id(a), cycle: Cycle(cycle), term, reason: RenewalReason::Scheduled };
    add(&mut seeds, "begin-order-renewal", at(renew(2)));
    add(&mut seeds, "begin-order-wrong-cycle", at(renew(5)));
    add(&mut seeds, "begin-order-cycle-open", at(Op::BeginOrder { cert: id(s0), cycle: Cycle(2), term, reason: RenewalReason::Retry }));

    let next = Term(term.0 + 1);
    add(&mut seeds, "resume-order-new-term", at(Op::ResumeOrder { cert: id(s3), cycle: Cycle(1), term: next }));
    add(&mut seeds, "resume-order-same-term", at(Op::ResumeOrder { cert: id(s3), cycle: Cycle(1), term }));

    // The next step of each open cycle (accepted), then fencing and ordering violations.
    for (depth, name) in FLEET_OPEN.iter().enumerate().take(4) {
        let op = fleet_steps(name, term).swap_remove(depth + 1);
        let short = name.split('.').next().unwrap_or(name);
        add(&mut seeds, format!("step-{}-{short}", kebab(&op_name(&op))), at(op));
    }
    let issued = |name: &str, ari_id: Option<&str>| Op::CertIssued {
        step: step(name, term),
        leaf_der: vec![0x30, 0x82, 0x01, 0x0a, 0x02, 0x01],
        chain_der: vec![vec![0x30, 0x82, 0x02], vec![0x30, 0x82, 0x03]],
        not_before: now,
        not_after: now.plus_ms(90 * DAY_MS),
        ari_id: ari_id.map(Into::into),
    };
    add(&mut seeds, "step-cert-issued-s4", at(issued(s4, Some("aYhba4dGQEHhs3uEe6CuLN4ByNQ.AIdlQyE"))));
    add(&mut seeds, "step-cert-issued-out-of-order", at(issued(s0, None)));
    add(&mut seeds, "step-finalized-stale-term", at(Op::Finalized { step: step(s3, Term(0)) }));
    add(&mut seeds, "step-finalized-wrong-cycle", at(Op::Finalized { step: StepRef { cycle: Cycle(2), ..step(s3, term) } }));

    let failure = |class, retry_at, failed: &[&str], account_wide| Failure {
        class,
        problem: Some("urn:ietf:params:acme:error:rateLimited".into()),
        detail: "too many certificates already issued".into(),
        retry_at,
        failed_identifiers: failed.iter().map(|n| Identifier::parse(n).expect("valid")).collect(),
        account_wide,
    };
    let failed = |name, failure| Op::OrderFailed { step: step(name, term), failure, seed: 21 };
    add(&mut seeds, "order-failed-retryable", at(failed(s1, failure(FailureClass::Retryable, None, &[], false))));
    let limited = failure(FailureClass::RateLimited, Some(now.plus_ms(3 * HOUR_MS)), &[], true);
    add(&mut seeds, "order-failed-rate-limited-account", at(failed(s3, limited)));
    add(&mut seeds, "order-failed-authz", at(failed(s2, failure(FailureClass::Permanent, None, &[s2], false))));
    add(&mut seeds, "order-failed-after-finalize", at(failed(s4, failure(FailureClass::Retryable, None, &[], false))));
    add(&mut seeds, "order-failed-foreign-identifier", at(failed(s1, failure(FailureClass::Permanent, None, &[a], false))));

    let window = AriWindow { start: now.plus_ms(40 * DAY_MS), end: now.plus_ms(45 * DAY_MS) };
    let polled = |window, retry_at| Op::RenewalInfoPolled { cert: id(a), cycle: Cycle(1), window, retry_at, seed: 31 };
    add(&mut seeds, "renewal-info-window", at(polled(Some(window), None)));
    add(&mut seeds, "renewal-info-failed-retry-after", at(polled(None, Some(now.plus_ms(6 * HOUR_MS)))));
    let backwards = AriWindow { start: window.end, end: window.start };
    add(&mut seeds, "renewal-info-backwards-window", at(polled(Some(backwards), None)));

    let items = vec![(id(a), now.plus_ms(DAY_MS)), (id(s0), now.plus_ms(DAY_MS)), (id("gone.example.com"), now.plus_ms(DAY_MS))];
    add(&mut seeds, "certs-deferred", at(Op::CertsDeferred { items }));
    add(&mut seeds, "certs-deferred-empty", at(Op::CertsDeferred { items: Vec::new() }));
    let deferred = |name, term, until| Op::OrderDeferred { step: step(name, term), until };
    add(&mut seeds, "order-deferred", at(deferred(s2, term, now.plus_ms(MINUTE_MS))));
    add(&mut seeds, "order-deferred-stale-term", at(deferred(s2, Term(0), now.plus_ms(MINUTE_MS))));
    let le = issuer(testing::ISSUER);
    add(&mut seeds, "roll-account-key", at(Op::RollAccountKey { issuer: le.clone(), credentials: testing::sealed(61) }));
    add(&mut seeds, "roll-account-key-unknown-issuer", at(Op::RollAccountKey { issuer: issuer("zerossl"), credentials: testing::sealed(61) }));
    add(&mut seeds, "account-key-rolled-none-in-progress", at(Op::AccountKeyRolled { issuer: le.clone(), credentials: testing::sealed(61) }));
    let refused = Op::AccountKeyRolloverRefused { issuer: le, credentials: testing::sealed(61), detail: "keyChange is not offered".into() };
    add(&mut seeds, "account-key-rollover-refused", at(refused));

    // Deliberately corrupt.
    let good = seeds["put-cert-new"].clone();
    add(&mut seeds, "bad-empty", Vec::new());
    add(&mut seeds, "bad-version-0", with_byte(&good, 0, 0));
    add(&mut seeds, "bad-version-1", with_byte(&good, 0, 1));
    add(&mut seeds, "bad-version-3", with_byte(&good, 0, 3));
    add(&mut seeds, "bad-trailing-byte", [good.as_slice(), &[0]].concat());
    add(&mut seeds, "bad-truncated", good[..good.len() / 2].to_vec());
    // version | at = 0x80 0x01 | variant 18 (one past the last).
    add(&mut seeds, "bad-unknown-variant", vec![WIRE_VERSION, 0x80, 0x01, 18]);
    // CertsDeferred claiming 2^63 items (core's own `a_huge_length_field_does_not_allocate_its_claim`).
    add(&mut seeds, "bad-huge-length", vec![WIRE_VERSION, 0x80, 0x01, 13, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f]);
    // An 11-byte varint where a u64 fits in 10.
    add(&mut seeds, "bad-overlong-varint", vec![WIRE_VERSION, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01, 1]);
    let bad_utf8 = replace(&seeds["remove-cert-issued"], b"a.example", b"a\xffexample");
    add(&mut seeds, "bad-utf8-cert-id", bad_utf8);
    let plaintext = replace(&seeds["set-account-replace"], b"cfs1", b"MIGH");
    add(&mut seeds, "bad-plaintext-credentials", plaintext);
    seeds
}

fn spec_from(names: &[&str], issuer: &str, label: Option<&str>) -> CertSpec {
    let request = CertRequest {
        identifiers: names.iter().map(|n| (*n).into()).collect(),
        issuer: issuer.into(),
        label: label.map(Into::into),
        ..CertRequest::default()
    };
    CertSpec::from_request(&request).expect("valid request")
}

fn op_name(op: &Op) -> String {
    let debug = format!("{op:?}");
    debug.split([' ', '{', '(']).next().unwrap_or_default().to_owned()
}

/// `OrderCreated` → `order-created`.
fn kebab(camel: &str) -> String {
    let mut out = String::new();
    for (i, c) in camel.chars().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            out.push('-');
        }
        out.push(c.to_ascii_lowercase());
    }
    out
}

fn with_byte(bytes: &[u8], index: usize, value: u8) -> Vec<u8> {
    let mut out = bytes.to_vec();
    out[index] = value;
    out
}

/// Replaces the first occurrence of `from` (same length as `to`).
fn replace(bytes: &[u8], from: &[u8], to: &[u8]) -> Vec<u8> {
    assert_eq!(from.len(), to.len());
    let at = bytes.windows(from.len()).position(|w| w == from).expect("pattern present");
    let mut out = bytes.to_vec();
    out[at..at + to.len()].copy_from_slice(to);
    out
}

fn describe_command(bytes: &[u8]) -> String {
    let Ok(command) = certfleet_core::command::decode(bytes) else {
        return format!("{:?}", certfleet_core::command::decode(bytes).unwrap_err());
    };
    let answers: Vec<String> = checks::fixtures()
        .iter()
        .map(|(name, state)| {
            let (response, _) = apply(&mut state.clone(), &command);
            match response {
                Response::Accepted => format!("{name}: accepted"),
                Response::Rejected(r) => format!("{name}: {r}"),
            }
        })
        .collect();
    answers.join("; ")
}

// ---- snapshot_decode ------------------------------------------------------------------------

/// Whole buffer, 7-byte chunks, and repaired (so mutations keep valid checksums).
const MODES: [(u8, &str); 3] = [(0, "whole"), (7, "chunks-7"), (SNAPSHOT_REPAIR, "repair")];

fn snapshot_seeds() -> Seeds {
    let mut seeds = Seeds::new();
    let states = snapshot_states();
    for (name, state) in &states {
        let bytes = SnapshotWriter::to_vec(state);
        for (mode, mode_name) in MODES {
            add(&mut seeds, format!("{name}-{mode_name}"), [&[mode], bytes.as_slice()].concat());
        }
    }
    add(&mut seeds, "empty-bytewise", [&[1], SnapshotWriter::to_vec(&State::new()).as_slice()].concat());

    // Deliberately corrupt: framing first (mode 0: checksums as written), then content (repair
    // mode, so only the intended defect remains).
    let fleet = SnapshotWriter::to_vec(&states[1].1);
    let frames = split_frames(&fleet);
    let raw = |bytes: &[u8]| [&[0u8], bytes].concat();
    let repaired = |frames: &[Vec<u8>]| [&[SNAPSHOT_REPAIR], repair_snapshot(&join_frames(frames)).as_slice()].concat();
    add(&mut seeds, "bad-truncated-mid-frame", raw(&fleet[..fleet.len() - 5]));
    add(&mut seeds, "bad-no-footer", raw(&join_frames(&frames[..frames.len() - 1])));
    add(&mut seeds, "bad-checksum", raw(&with_byte(&fleet, 4, fleet[4] ^ 1)));
    add(&mut seeds, "bad-frame-too-large", raw(&[0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0]));
    add(&mut seeds, "bad-bytes-after-footer", raw(&[fleet.as_slice(), &join_frames(&frames[..1])].concat()));
    add(&mut seeds, "bad-trailing-partial-frame", raw(&[fleet.as_slice(), &[1, 0, 0]].concat()));
    add(&mut seeds, "bad-header-only", raw(&join_frames(&frames[..1])));

    let mut swapped = frames.clone();
    swapped.swap(1, frames.len() - 2); // an account after the certificates
    add(&mut seeds, "bad-cert-before-account", repaired(&swapped));
    let mut duplicated = frames.clone();
    duplicated.insert(frames.len() - 2, frames[frames.len() - 2].clone());
    add(&mut seeds, "bad-duplicate-cert", repaired(&duplicated));
    let mut format = frames.clone();
    format[0][2] = 2; // version | Header | format = 2
    add(&mut seeds, "bad-format-version", repaired(&format));
    let mut count = frames.clone();
    let footer = count.last_mut().expect("footer");
    footer[2] += 1; // version | Footer | records + 1
    add(&mut seeds, "bad-footer-count", repaired(&count));
    let chain_index = frames.iter().position(|f| f[1] == 2).expect("fleet has a chain record");
    let mut chain = frames.clone();
    let last = chain[chain_index].len() - 1;
    chain[chain_index][last] ^= 0x40;
    add(&mut seeds, "bad-chain-content", repaired(&chain));
    // Drop every certificate record, with counts to match: the interned chain has no user.
    let mut orphan = frames.clone();
    orphan.retain(|f| f[1] != 4);
    let dropped = u8::try_from(frames.len() - orphan.len()).expect("a few certificates");
    *orphan[0].last_mut().expect("header") = 0; // the header's certificate count, its last field
    orphan.last_mut().expect("footer")[2] -= dropped;
    add(&mut seeds, "bad-orphan-chain", repaired(&orphan));
    seeds
}

/// Small states, each reached through `apply` (or the fixture builder core's benches use).
fn snapshot_states() -> Vec<(&'static str, State)> {
    let year = {
        let mut h = Harness::new(3, FIXTURE_START, 90 * DAY_MS);
        h.ca.ari = true;
        h.add(&["a.example.com", "b.example.com", "c.example.org"]);
        h.run_until(FIXTURE_START.plus_ms(200 * DAY_MS));
        h.state
    };
    let failures = {
        let mut h = Harness::new(5, FIXTURE_START, 6 * DAY_MS);
        h.ca.faults.invalid_authz = 2;
        h.ca.faults.unavailable = 3;
        h.ca.faults.rate_limit_new_orders = 1;
        h.ca.faults.rate_limit_retry_ms = 2 * HOUR_MS;
        h.add(&["x.example.com", "y.example.com"]);
        h.run_until(FIXTURE_START.plus_ms(2 * HOUR_MS));
        h.state
    };
    let policy = {
        let mut state = checks::fixtures()[1].1.clone();
        let tight = Policy { renew_permille: 500, jitter_permille: 100, ari_poll_interval_ms: 12 * HOUR_MS, ..Policy::default() };
        let command = Command { at: state.clock(), op: Op::SetPolicy { policy: tight } };
        assert!(apply(&mut state, &command).0.is_accepted());
        state
    };
    vec![
        ("empty", State::new()),
        ("fleet", checks::fixtures()[1].1.clone()),
        ("year-ari", year),
        ("failures", failures),
        ("policy", policy),
        ("populated", testing::populated_state(3, FIXTURE_START, 48)),
    ]
}

/// Frame payloads of a snapshot (checksums dropped).
fn split_frames(bytes: &[u8]) -> Vec<Vec<u8>> {
    let mut frames = Vec::new();
    let mut rest = bytes;
    while !rest.is_empty() {
        let len = u32::from_le_bytes(rest[..4].try_into().expect("4 bytes")) as usize;
        frames.push(rest[FRAME_HEADER_LEN..FRAME_HEADER_LEN + len].to_vec());
        rest = &rest[FRAME_HEADER_LEN + len..];
    }
    frames
}

/// Frames payloads with their lengths and checksums.
fn join_frames(frames: &[Vec<u8>]) -> Vec<u8> {
    let mut out = Vec::new();
    for payload in frames {
        out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        out.extend_from_slice(&crc32fast::hash(payload).to_le_bytes());
        out.extend_from_slice(payload);
    }
    out
}

fn describe_snapshot(bytes: &[u8]) -> String {
    let Some((&mode, stream)) = bytes.split_first() else { return "empty input".into() };
    let stream = if mode & SNAPSHOT_REPAIR != 0 { repair_snapshot(stream) } else { stream.to_vec() };
    match SnapshotReader::read_all(&stream) {
        Ok(state) => format!("ok, {} certificates, {} open", state.cert_count(), state.open_count()),
        Err(e) => format!("error: {e}"),
    }
}
