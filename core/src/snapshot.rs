//! Snapshots: a stream of framed, checksummed, versioned records (DESIGN §4).
//!
//! # Format
//! A snapshot is a sequence of frames `len: u32 LE | crc32: u32 LE | payload[len]`, where the
//! CRC-32 (IEEE) covers the payload and the payload is a versioned record ([`WIRE_VERSION`]
//! byte, then postcard). Records come in a fixed order, each kind sorted by key:
//! `Header`, `Account`*, `Chain`*, `Budget`*, `Cert`*, `Footer`. The footer holds the record
//! count and the SHA-256 over every payload before it, which is also [`State::digest`].
//!
//! Both directions are incremental: [`SnapshotWriter::next_frame`] produces one frame at a time,
//! [`SnapshotReader::feed`] accepts bytes in any chunking. Neither needs a buffer the size of the
//! snapshot, and a length field can never make the reader allocate more than
//! [`FRAME_LEN_MAX`].
//!
//! [`WIRE_VERSION`]: crate::command::WIRE_VERSION

use alloc::boxed::Box;
use alloc::collections::btree_map;
use alloc::vec::Vec;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::budget::BudgetKey;
use crate::command::{decode_value, encode_value};
use crate::error::SnapshotError;
use crate::model::{Account, CertId, ChainId, IssuerId, Policy};
use crate::state::{CertRecord, InternedChain, State, chain_id};
use crate::time::UnixMillis;

/// The snapshot format version in the header (2: open cycles carry the CA's committed
/// `Retry-After`; 3: accounts carry a key rollover in progress).
pub const FORMAT_VERSION: u32 = 3;
/// The largest frame payload accepted.
pub const FRAME_LEN_MAX: usize = 4 * 1024 * 1024;
/// Bytes of frame header (length and CRC).
pub const FRAME_HEADER_LEN: usize = 8;

#[derive(Serialize)]
enum RecordRef<'a> {
    Header {
        format: u32,
        clock: UnixMillis,
        policy: &'a Policy,
        accounts: u64,
        chains: u64,
        budgets: u64,
        certs: u64,
    },
    Account {
        issuer: &'a IssuerId,
        account: &'a Account,
    },
    Chain {
        id: &'a ChainId,
        ders: &'a [Vec<u8>],
    },
    Budget {
        key: &'a BudgetKey,
        arrival: UnixMillis,
    },
    Cert {
        id: &'a CertId,
        record: &'a CertRecord,
    },
    Footer {
        records: u64,
        digest: [u8; 32],
    },
}

// Same variant order and field types as `RecordRef`: postcard encodes by position.
#[derive(Deserialize)]
enum Record {
    Header {
        format: u32,
        clock: UnixMillis,
        policy: Policy,
        accounts: u64,
        chains: u64,
        budgets: u64,
        certs: u64,
    },
    Account {
        issuer: IssuerId,
        account: Account,
    },
    Chain {
        id: ChainId,
        ders: Vec<Vec<u8>>,
    },
    Budget {
        key: BudgetKey,
        arrival: UnixMillis,
    },
    Cert {
        id: CertId,
        record: Box<CertRecord>,
    },
    Footer {
        records: u64,
        digest: [u8; 32],
    },
}

/// Every record of a state but the footer, in snapshot order.
struct Records<'a> {
    header: Option<RecordRef<'a>>,
    accounts: btree_map::Iter<'a, IssuerId, Account>,
    chains: btree_map::Iter<'a, ChainId, InternedChain>,
    budgets: Box<dyn Iterator<Item = (&'a BudgetKey, UnixMillis)> + 'a>,
    certs: btree_map::Iter<'a, CertId, CertRecord>,
}

impl<'a> Records<'a> {
    fn new(state: &'a State) -> Self {
        let header = RecordRef::Header {
            format: FORMAT_VERSION,
            clock: state.clock,
            policy: &state.policy,
            accounts: state.accounts.len() as u64,
            chains: state.chains.len() as u64,
            budgets: state.budgets.len() as u64,
            certs: state.certs.len() as u64,
        };
        Self {
            header: Some(header),
            accounts: state.accounts.iter(),
            chains: state.chains.iter(),
            budgets: Box::new(state.budgets.iter()),
            certs: state.certs.iter(),
        }
    }
}

impl<'a> Iterator for Records<'a> {
    type Item = RecordRef<'a>;

    fn next(&mut self) -> Option<RecordRef<'a>> {
        if let Some(header) = self.header.take() {
            return Some(header);
        }
        if let Some((issuer, account)) = self.accounts.next() {
            return Some(RecordRef::Account { issuer, account });
        }
        if let Some((id, chain)) = self.chains.next() {
            return Some(RecordRef::Chain {
                id,
                ders: &chain.ders,
            });
        }
        if let Some((key, arrival)) = self.budgets.next() {
            return Some(RecordRef::Budget { key, arrival });
        }
        let (id, record) = self.certs.next()?;
        Some(RecordRef::Cert { id, record })
    }
}

/// Calls `f` with the payload of every record but the footer, in order (for digests).
pub(crate) fn for_each_record(state: &State, mut f: impl FnMut(&[u8])) {
    let mut payload = Vec::with_capacity(4096);
    for record in Records::new(state) {
        payload.clear();
        encode_value(&record, &mut payload);
        f(&payload);
    }
}

/// Writes a state as frames, one at a time.
pub struct SnapshotWriter<'a> {
    records: Records<'a>,
    hasher: Sha256,
    count: u64,
    payload: Vec<u8>,
    done: bool,
}

impl<'a> SnapshotWriter<'a> {
    /// A writer over `state`.
    #[must_use]
    pub fn new(state: &'a State) -> Self {
        Self {
            records: Records::new(state),
            hasher: Sha256::new(),
            count: 0,
            payload: Vec::with_capacity(4096),
            done: false,
        }
    }

    /// Appends the next frame to `out`; `false` once the footer has been written.
    pub fn next_frame(&mut self, out: &mut Vec<u8>) -> bool {
        if self.done {
            return false;
        }
        self.payload.clear();
        match self.records.next() {
            Some(record) => {
                encode_value(&record, &mut self.payload);
                self.hasher.update(&self.payload);
                self.count += 1;
            }
            None => {
                let digest = core::mem::take(&mut self.hasher).finalize().into();
                encode_value(
                    &RecordRef::Footer {
                        records: self.count,
                        digest,
                    },
                    &mut self.payload,
                );
                self.done = true;
            }
        }
        assert!(
            self.payload.len() <= FRAME_LEN_MAX,
            "record of {} bytes exceeds the frame limit",
            self.payload.len()
        );
        out.extend_from_slice(&(self.payload.len() as u32).to_le_bytes());
        out.extend_from_slice(&crc32fast::hash(&self.payload).to_le_bytes());
        out.extend_from_slice(&self.payload);
        true
    }

    /// The whole snapshot in one buffer (tests and small states).
    #[must_use]
    pub fn to_vec(state: &State) -> Vec<u8> {
        let mut writer = SnapshotWriter::new(state);
        let mut out = Vec::new();
        while writer.next_frame(&mut out) {}
        out
    }
}

/// Rebuilds a state from frames fed in any chunking; checks every checksum, the record order,
/// each record's content, and the footer's count and digest.
pub struct SnapshotReader {
    buf: Vec<u8>,
    pos: usize,
    state: State,
    frames: u64,
    rank: u8,
    header: Option<[u64; 4]>,
    seen: [u64; 4],
    last_issuer: Option<IssuerId>,
    last_chain: Option<ChainId>,
    last_budget: Option<BudgetKey>,
    last_cert: Option<CertId>,
    hasher: Sha256,
    complete: bool,
    failed: Option<SnapshotError>,
}

impl Default for SnapshotReader {
    fn default() -> Self {
        Self::new()
    }
}

impl SnapshotReader {
    /// A reader expecting a header.
    #[must_use]
    pub fn new() -> Self {
        Self {
            buf: Vec::new(),
            pos: 0,
            state: State::default(),
            frames: 0,
            rank: 0,
            header: None,
            seen: [0; 4],
            last_issuer: None,
            last_chain: None,
            last_budget: None,
            last_cert: None,
            hasher: Sha256::new(),
            complete: false,
            failed: None,
        }
    }

    /// Feeds the next bytes of the stream.
    pub fn feed(&mut self, bytes: &[u8]) -> Result<(), SnapshotError> {
        if let Some(error) = &self.failed {
            return Err(error.clone());
        }
        self.buf.extend_from_slice(bytes);
        let result = self.drain_frames();
        // Keep the buffer to one partial frame: drop consumed bytes.
        if self.pos > 0 {
            self.buf.drain(..self.pos);
            self.pos = 0;
        }
        if let Err(error) = &result {
            self.failed = Some(error.clone());
        }
        result
    }

    /// Ends the stream and returns the state.
    pub fn finish(self) -> Result<State, SnapshotError> {
        if let Some(error) = self.failed {
            return Err(error);
        }
        if !self.complete {
            return Err(SnapshotError::Truncated {
                frames: self.frames,
            });
        }
        // A partial frame after the footer (a whole one is refused as it arrives).
        if !self.buf.is_empty() {
            return Err(SnapshotError::Structure {
                index: self.frames,
                reason: "bytes after the footer",
            });
        }
        Ok(self.state)
    }

    /// Reads a whole snapshot from one buffer.
    pub fn read_all(bytes: &[u8]) -> Result<State, SnapshotError> {
        let mut reader = Self::new();
        reader.feed(bytes)?;
        reader.finish()
    }

    fn drain_frames(&mut self) -> Result<(), SnapshotError> {
        loop {
            let rest = &self.buf[self.pos..];
            if rest.len() < FRAME_HEADER_LEN {
                return Ok(());
            }
            let index = self.frames;
            let len = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
            let stored = u32::from_le_bytes([rest[4], rest[5], rest[6], rest[7]]);
            if len > FRAME_LEN_MAX {
                return Err(SnapshotError::FrameTooLarge {
                    index,
                    len: len as u64,
                    max: FRAME_LEN_MAX as u64,
                });
            }
            if rest.len() < FRAME_HEADER_LEN + len {
                return Ok(());
            }
            if self.complete {
                return Err(SnapshotError::Structure {
                    index,
                    reason: "bytes after the footer",
                });
            }
            let payload = &rest[FRAME_HEADER_LEN..FRAME_HEADER_LEN + len];
            let computed = crc32fast::hash(payload);
            if computed != stored {
                return Err(SnapshotError::Checksum {
                    index,
                    stored,
                    computed,
                });
            }
            let record: Record = decode_value(payload, FRAME_LEN_MAX)
                .map_err(|source| SnapshotError::Decode { index, source })?;
            if !matches!(record, Record::Footer { .. }) {
                self.hasher.update(payload);
            }
            self.pos += FRAME_HEADER_LEN + len;
            self.frames += 1;
            self.install(index, record)?;
        }
    }

    fn install(&mut self, index: u64, record: Record) -> Result<(), SnapshotError> {
        let structure = |reason| SnapshotError::Structure { index, reason };
        let invalid = |reason: String| SnapshotError::Invalid { index, reason };
        let rank = match &record {
            Record::Header { .. } => 1,
            Record::Account { .. } => 2,
            Record::Chain { .. } => 3,
            Record::Budget { .. } => 4,
            Record::Cert { .. } => 5,
            Record::Footer { .. } => 6,
        };
        if (rank == 1) != (self.rank == 0) || rank < self.rank {
            return Err(structure(
                "record out of order (header first, then accounts, chains, budgets, certs, footer)",
            ));
        }
        self.rank = rank;
        match record {
            Record::Header {
                format,
                clock,
                policy,
                accounts,
                chains,
                budgets,
                certs,
            } => {
                if format != FORMAT_VERSION {
                    return Err(invalid(alloc::format!(
                        "snapshot format {format}, this build reads {FORMAT_VERSION}"
                    )));
                }
                policy.check().map_err(|e| invalid(e.to_string()))?;
                self.state.clock = clock;
                self.state.policy = policy;
                self.header = Some([accounts, chains, budgets, certs]);
            }
            Record::Account { issuer, account } => {
                if self
                    .last_issuer
                    .as_ref()
                    .is_some_and(|last| *last >= issuer)
                {
                    return Err(structure("accounts not in strictly increasing order"));
                }
                IssuerId::parse(issuer.as_str()).map_err(|e| invalid(e.to_string()))?;
                account.credentials.check().map_err(invalid)?;
                self.last_issuer = Some(issuer.clone());
                self.state.accounts.insert(issuer, account);
                self.seen[0] += 1;
            }
            Record::Chain { id, ders } => {
                if self.last_chain.is_some_and(|last| last >= id) {
                    return Err(structure("chains not in strictly increasing order"));
                }
                if chain_id(&ders) != id {
                    return Err(invalid("chain id does not match its certificates".into()));
                }
                self.last_chain = Some(id);
                self.state
                    .chains
                    .insert(id, InternedChain { ders, refs: 0 });
                self.seen[1] += 1;
            }
            Record::Budget { key, arrival } => {
                if self.last_budget.as_ref().is_some_and(|last| *last >= key) {
                    return Err(structure("budgets not in strictly increasing order"));
                }
                // apply prunes full buckets, so a stored one is never full at the clock.
                if arrival <= self.state.clock {
                    return Err(invalid(alloc::format!("budget {key} is full but stored")));
                }
                self.last_budget = Some(key.clone());
                self.state.budgets.restore(key, arrival);
                self.seen[2] += 1;
            }
            Record::Cert { id, record } => {
                if self.last_cert.as_ref().is_some_and(|last| *last >= id) {
                    return Err(structure("certificates not in strictly increasing order"));
                }
                self.install_cert(index, id, *record)?;
                self.seen[3] += 1;
            }
            Record::Footer { records, digest } => {
                if Some(self.seen) != self.header {
                    return Err(SnapshotError::Footer {
                        what: "record counts differ from the header",
                    });
                }
                if records != 1 + self.seen.iter().sum::<u64>() {
                    return Err(SnapshotError::Footer {
                        what: "record count",
                    });
                }
                let computed: [u8; 32] = core::mem::take(&mut self.hasher).finalize().into();
                if computed != digest {
                    return Err(SnapshotError::Footer { what: "digest" });
                }
                if self.state.chains.values().any(|chain| chain.refs == 0) {
                    return Err(invalid("a chain no certificate uses".into()));
                }
                self.complete = true;
            }
        }
        Ok(())
    }

    fn install_cert(
        &mut self,
        index: u64,
        id: CertId,
        record: CertRecord,
    ) -> Result<(), SnapshotError> {
        let invalid = |reason: String| SnapshotError::Invalid { index, reason };
        record
            .spec
            .check()
            .map_err(|e| invalid(alloc::format!("certificate {id}: {e}")))?;
        if record.spec.cert_id() != id {
            return Err(invalid(alloc::format!(
                "certificate {id} is filed under the wrong id"
            )));
        }
        if !self.state.accounts.contains_key(&record.spec.issuer) {
            return Err(invalid(alloc::format!(
                "certificate {id} names issuer {} without an account",
                record.spec.issuer
            )));
        }
        if let Some(open) = &record.open {
            if open.cycle != record.cycle {
                return Err(invalid(alloc::format!(
                    "certificate {id}: open cycle {} is not the last begun {}",
                    open.cycle,
                    record.cycle
                )));
            }
            if let Some(key) = open.step.key() {
                key.check().map_err(invalid)?;
            }
        }
        if let Some(current) = &record.current {
            current.key.check().map_err(invalid)?;
            let chain = self.state.chains.get_mut(&current.chain).ok_or_else(|| {
                invalid(alloc::format!("certificate {id} refers to a missing chain"))
            })?;
            chain.refs += 1;
        }
        self.last_cert = Some(id.clone());
        if record.open.is_some() {
            self.state.open.insert(id.clone());
        }
        self.state.certs.insert(id.clone(), record);
        self.state.reindex(&id);
        Ok(())
    }
}

use alloc::string::{String, ToString};

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{Harness, populated_state};
    use crate::time::DAY_MS;

    const T0: UnixMillis = UnixMillis(1_700_000_000_000);

    /// A state with issued certificates, an open cycle with challenges, budgets and a failure.
    fn busy_state() -> State {
        let mut h = Harness::new(11, T0, 90 * DAY_MS);
        h.add(&["a.example.com", "b.example.com", "c.example.org"]);
        h.run_until(T0.plus_ms(61 * DAY_MS));
        h.add(&["d.example.com"]);
        h.tick();
        h.state
    }

    #[test]
    fn a_round_trip_preserves_the_digest_and_the_indexes() {
        let state = busy_state();
        let bytes = SnapshotWriter::to_vec(&state);
        let read = SnapshotReader::read_all(&bytes).unwrap();
        assert_eq!(read.digest(), state.digest());
        assert_eq!(read.due, state.due, "the due index is rebuilt identically");
        assert_eq!(read.open, state.open);
        assert_eq!(
            read.chains, state.chains,
            "chain reference counts are rebuilt"
        );
        assert_eq!(
            SnapshotWriter::to_vec(&read),
            bytes,
            "re-encoding is byte-identical"
        );
    }

    #[test]
    fn bytes_may_arrive_in_any_chunking() {
        let state = busy_state();
        let bytes = SnapshotWriter::to_vec(&state);
        let mut reader = SnapshotReader::new();
        for byte in &bytes {
            reader.feed(core::slice::from_ref(byte)).unwrap();
        }
        assert_eq!(reader.finish().unwrap().digest(), state.digest());
    }

    #[test]
    fn the_reader_never_buffers_more_than_one_frame() {
        let state = populated_state(300, T0, 1200);
        let bytes = SnapshotWriter::to_vec(&state);
        let mut reader = SnapshotReader::new();
        for chunk in bytes.chunks(1000) {
            reader.feed(chunk).unwrap();
            assert!(
                reader.buf.len() < 4096,
                "buffer grew to {}",
                reader.buf.len()
            );
        }
        assert_eq!(reader.finish().unwrap().digest(), state.digest());
    }

    #[test]
    fn the_digest_is_the_footer_and_differs_between_states() {
        let empty = State::new();
        assert_ne!(empty.digest(), busy_state().digest());
        let bytes = SnapshotWriter::to_vec(&empty);
        assert_eq!(
            SnapshotReader::read_all(&bytes).unwrap().digest(),
            empty.digest()
        );
    }

    #[test]
    fn every_flipped_bit_is_caught() {
        let bytes = SnapshotWriter::to_vec(&busy_state());
        for i in (0..bytes.len()).step_by(7) {
            let mut corrupt = bytes.clone();
            corrupt[i] ^= 0x10;
            assert!(
                SnapshotReader::read_all(&corrupt).is_err(),
                "flip at byte {i} went unnoticed"
            );
        }
    }

    #[test]
    fn a_checksum_mismatch_names_the_frame() {
        let mut bytes = SnapshotWriter::to_vec(&busy_state());
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        assert!(matches!(
            SnapshotReader::read_all(&bytes),
            Err(SnapshotError::Checksum { .. })
        ));
    }

    #[test]
    fn a_truncated_snapshot_is_an_error() {
        let bytes = SnapshotWriter::to_vec(&busy_state());
        for cut in [0, 5, FRAME_HEADER_LEN + 1, bytes.len() / 2, bytes.len() - 1] {
            assert!(
                matches!(
                    SnapshotReader::read_all(&bytes[..cut]),
                    Err(SnapshotError::Truncated { .. })
                ),
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn a_length_field_beyond_the_limit_is_refused_without_allocating() {
        let mut bytes = u32::MAX.to_le_bytes().to_vec();
        bytes.extend_from_slice(&[0; 4]);
        let err = SnapshotReader::read_all(&bytes).unwrap_err();
        assert!(
            matches!(err, SnapshotError::FrameTooLarge { index: 0, .. }),
            "{err}"
        );
    }

    #[test]
    fn records_out_of_order_are_refused() {
        let state = busy_state();
        let mut frames = Vec::new();
        let mut writer = SnapshotWriter::new(&state);
        loop {
            let mut frame = Vec::new();
            if !writer.next_frame(&mut frame) {
                break;
            }
            frames.push(frame);
        }
        // Swap the last two certificate frames (before the footer).
        let n = frames.len();
        frames.swap(n - 2, n - 3);
        let err = SnapshotReader::read_all(&frames.concat()).unwrap_err();
        assert!(matches!(err, SnapshotError::Structure { .. }), "{err}");
        // Drop the header.
        let err = SnapshotReader::read_all(&frames[1..].concat()).unwrap_err();
        assert!(
            matches!(err, SnapshotError::Structure { index: 0, .. }),
            "{err}"
        );
    }

    #[test]
    fn bytes_after_the_footer_are_refused() {
        let mut bytes = SnapshotWriter::to_vec(&State::new());
        bytes.extend_from_slice(&SnapshotWriter::to_vec(&State::new()));
        assert!(matches!(
            SnapshotReader::read_all(&bytes),
            Err(SnapshotError::Structure { .. })
        ));
    }

    #[test]
    fn a_partial_frame_after_the_footer_is_refused() {
        // Found by fuzzing: a whole trailing frame was refused, three stray bytes were not.
        let mut bytes = SnapshotWriter::to_vec(&State::new());
        bytes.extend_from_slice(&[1, 0, 0]);
        let err = SnapshotReader::read_all(&bytes).unwrap_err();
        assert!(
            matches!(
                err,
                SnapshotError::Structure {
                    reason: "bytes after the footer",
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn a_failed_reader_stays_failed() {
        let mut reader = SnapshotReader::new();
        assert!(reader.feed(&[0xff; 8]).is_err());
        assert!(reader.feed(&SnapshotWriter::to_vec(&State::new())).is_err());
    }
}
