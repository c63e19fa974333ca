//! The oracles behind the fuzz targets, and the fixture states they apply commands to.
//!
//! Each `check_*` function takes one fuzz input and panics only if certfleet-core breaks a
//! promise it makes about untrusted bytes: a decoder or `apply` panicked, a round trip lost
//! information, or a rejected command changed the state. The fuzz targets call them, and so does
//! the corpus replay test in core (`#[path]`-included there, so this file names only
//! `certfleet_core`, `sha2`, `crc32fast` and `std`, which both crates have).

use std::sync::OnceLock;

use certfleet_core::command::{self, Op, StepRef};
use certfleet_core::model::{Challenge, ChallengeKind, RenewalReason};
use certfleet_core::name::Identifier;
use certfleet_core::snapshot::{FRAME_HEADER_LEN, FRAME_LEN_MAX, SnapshotReader, SnapshotWriter};
use certfleet_core::testing::{self, Harness};
use certfleet_core::time::{DAY_MS, UnixMillis};
use certfleet_core::{Command, Cycle, Response, State, Term, apply, plan};
use sha2::{Digest, Sha256};

/// Bit of a snapshot input's first byte asking the target to repair frame checksums and the
/// footer digest before reading, so mutations reach the record decoder and the content checks
/// instead of all dying at the CRC (libFuzzer cannot solve a CRC-32 or a SHA-256).
pub const SNAPSHOT_REPAIR: u8 = 0x80;
/// Mask of a snapshot input's first byte giving the chunk length fed per call (0: all at once).
pub const SNAPSHOT_CHUNK_MASK: u8 = 0x7f;

/// Leader clock of the fixtures' start.
pub const FIXTURE_START: UnixMillis = UnixMillis(1_700_000_000_000);
/// Certificates the fleet fixture holds open at each order step, in step order.
pub const FLEET_OPEN: [&str; 5] = [
    "s0.example.net",
    "s1.example.net",
    "s2.example.net",
    "s3.example.net",
    "s4.example.net",
];
/// Certificates the fleet fixture has issued (with ARI).
pub const FLEET_ISSUED: [&str; 2] = ["a.example.com", "b.example.org"];

/// `command_decode`: decoding never panics; a decoded command re-encodes to itself; applying it
/// to each fixture never panics; a rejection leaves the state's digest as it was; an accepted
/// command leaves a state that snapshots, reads back and plans without panicking.
pub fn check_command(data: &[u8]) {
    let Ok(command) = command::decode(data) else {
        return;
    };
    let encoded = command::encode(&command);
    assert_eq!(
        command::decode(&encoded).as_ref(),
        Ok(&command),
        "re-encoding changed the command"
    );
    for (name, fixture) in fixtures() {
        let mut state = fixture.clone();
        let before = state.digest();
        let (response, events) = apply(&mut state, &command);
        match response {
            Response::Accepted => check_state(&state),
            Response::Rejected(rejection) => {
                assert!(
                    events.is_empty(),
                    "rejected ({rejection}) with events on the {name} fixture"
                );
                assert_eq!(
                    state.digest(),
                    before,
                    "rejected ({rejection}) but changed the {name} fixture"
                );
            }
        }
    }
}

/// `snapshot_decode`: the first byte is a mode (see [`SNAPSHOT_REPAIR`], [`SNAPSHOT_CHUNK_MASK`]),
/// the rest a snapshot stream. Reading never panics; any chunking gives the same result as one
/// buffer; an error sticks; a state read is written and read back to the same digest, and can be
/// planned on and emptied by `apply`.
pub fn check_snapshot(data: &[u8]) {
    let Some((&mode, stream)) = data.split_first() else {
        return;
    };
    let repaired;
    let stream = if mode & SNAPSHOT_REPAIR != 0 {
        repaired = repair_snapshot(stream);
        repaired.as_slice()
    } else {
        stream
    };
    let chunk_len = match usize::from(mode & SNAPSHOT_CHUNK_MASK) {
        0 => stream.len().max(1),
        n => n,
    };
    let mut reader = SnapshotReader::new();
    let mut first_error = None;
    for chunk in stream.chunks(chunk_len) {
        let fed = reader.feed(chunk);
        match (&first_error, fed) {
            (None, Err(error)) => first_error = Some(error),
            (Some(first), fed) => assert_eq!(
                fed.as_ref(),
                Err(first),
                "a failed reader accepted more bytes"
            ),
            (None, Ok(())) => {}
        }
    }
    let chunked = reader.finish();
    let whole = SnapshotReader::read_all(stream);
    assert_eq!(
        chunked.as_ref().map(State::digest),
        whole.as_ref().map(State::digest),
        "reading in chunks of {chunk_len} differs from reading at once"
    );
    if let Ok(state) = chunked {
        check_state(&state);
    }
}

/// What every state reachable from a log or a snapshot must allow: it snapshots and reads back
/// to the same digest, the planner runs on it now and a year on, and every certificate can be
/// removed (which walks the due index and releases every chain).
fn check_state(state: &State) {
    let bytes = SnapshotWriter::to_vec(state);
    let reread = SnapshotReader::read_all(&bytes)
        .unwrap_or_else(|e| panic!("a written snapshot does not read back: {e}"));
    assert_eq!(
        reread.digest(),
        state.digest(),
        "a snapshot round trip changed the digest"
    );
    let now = state.clock();
    for at in [now, now.plus_ms(365 * DAY_MS)] {
        let _ = plan(state, at, Term(1));
    }
    let mut emptied = state.clone();
    let certs: Vec<_> = state.certs().map(|(id, _)| id.clone()).collect();
    for cert in certs {
        let command = Command {
            at: now,
            op: Op::RemoveCert { cert: cert.clone() },
        };
        let (response, _) = apply(&mut emptied, &command);
        assert_eq!(response, Response::Accepted, "removing {cert}");
    }
    assert_eq!(emptied.cert_count(), 0);
}

/// Recomputes every complete frame's CRC-32 and, in a footer-shaped frame (the wire version, variant 5,
/// count, 32-byte digest), the digest over the payloads before it. Stops at the first frame whose
/// length exceeds the limit or the input.
#[must_use]
pub fn repair_snapshot(stream: &[u8]) -> Vec<u8> {
    const FOOTER_TAG: [u8; 2] = [command::WIRE_VERSION, 5];
    let mut out = stream.to_vec();
    let mut hasher = Sha256::new();
    let mut pos = 0;
    while out.len() - pos >= FRAME_HEADER_LEN {
        let len = u32::from_le_bytes(out[pos..pos + 4].try_into().expect("4 bytes")) as usize;
        let start = pos + FRAME_HEADER_LEN;
        if len > FRAME_LEN_MAX || out.len() - start < len {
            break;
        }
        let payload = &mut out[start..start + len];
        if payload.len() >= FOOTER_TAG.len() + 1 + 32 && payload.starts_with(&FOOTER_TAG) {
            let digest: [u8; 32] = std::mem::take(&mut hasher).finalize().into();
            payload[len - 32..].copy_from_slice(&digest);
        } else {
            hasher.update(&*payload);
        }
        let crc = crc32fast::hash(payload);
        out[pos + 4..start].copy_from_slice(&crc.to_le_bytes());
        pos = start + len;
    }
    out
}

/// The states `check_command` applies to: an empty one, and [`fleet`].
pub fn fixtures() -> &'static [(&'static str, State)] {
    static FIXTURES: OnceLock<Vec<(&'static str, State)>> = OnceLock::new();
    FIXTURES.get_or_init(|| vec![("empty", State::new()), ("fleet", fleet_harness().state)])
}

/// A leader three virtual days in: an account for [`testing::ISSUER`], the [`FLEET_ISSUED`]
/// certificates issued by an ARI-enabled CA, and one open cycle held at each step of DESIGN §5
/// ([`FLEET_OPEN`]: begun, order created, challenges published, key prepared, finalized), so that
/// every order-step command has a cycle it can advance.
#[must_use]
pub fn fleet_harness() -> Harness {
    let mut h = Harness::new(7, FIXTURE_START, 90 * DAY_MS);
    h.ca.ari = true;
    h.add(&FLEET_ISSUED);
    h.run_until(FIXTURE_START.plus_ms(3 * DAY_MS));
    h.add(&FLEET_OPEN);
    let term = h.term;
    for (depth, name) in FLEET_OPEN.iter().enumerate() {
        for op in fleet_steps(name, term).into_iter().take(depth + 1) {
            let response = h.commit(op);
            assert_eq!(response, Response::Accepted, "fixture step for {name}");
        }
    }
    h
}

/// The order-step commands that open and advance a first cycle of `name` up to finalized.
#[must_use]
pub fn fleet_steps(name: &str, term: Term) -> Vec<Op> {
    let cert = testing::spec(&[name]).cert_id();
    let step = StepRef {
        cert: cert.clone(),
        cycle: Cycle(1),
        term,
    };
    let order_url = format!("https://acme.test/order/{name}");
    let challenge = Challenge {
        identifier: Identifier::parse(name).expect("fixture name"),
        kind: ChallengeKind::Http01,
        token: format!("tok-{}", name.replace('.', "_")),
        key_authorization: format!("tok-{}.thumbprint", name.replace('.', "_")),
        url: format!("{order_url}/chall/0"),
    };
    vec![
        Op::BeginOrder {
            cert,
            cycle: Cycle(1),
            term,
            reason: RenewalReason::Initial,
        },
        Op::OrderCreated {
            step: step.clone(),
            order_url: order_url.clone(),
            authorizations: vec![format!("{order_url}/authz/0")],
        },
        Op::ChallengesPublished {
            step: step.clone(),
            challenges: vec![challenge],
        },
        Op::KeyPrepared {
            step: step.clone(),
            key: testing::sealed(9),
        },
        Op::Finalized { step },
    ]
}
