//! The data plane (DESIGN §2): what every node, voter or edge, serves from the applied state.
//!
//! * [`sni`]: TLS certificates by SNI, a rustls [`ResolvesServerCert`](rustls::server::ResolvesServerCert)
//!   over the [`CertTable`], and TLS-ALPN-01 challenge certificates for `acme-tls/1` handshakes;
//! * [`http01`]: the port-80 responder (HTTP-01 tokens, a redirect to https for the rest);
//! * [`alpn`]: TLS-ALPN-01 challenge certificates (RFC 8737) and the TLS listener;
//! * [`export`]: certbot's `live/<name>/*.pem` layout for programs that read files;
//! * [`probe`]: a real TLS client that checks what a node serves (the demo, the tests).
//!
//! The [`Dataplane`] holds two immutable tables behind [`ArcSwap`]s: the certificates
//! ([`CertTable`]) and the challenges ([`ChallengeTable`]). Readers (every TLS handshake, every
//! HTTP-01 request) load a table without a lock; writers build a new table and swap it in, so a
//! handshake sees either the old or the new table, never half of an update. Tables are built
//! from the applied state only (never from a command before it is applied), by
//! [`Dataplane::rebuild`] (everything) or [`Dataplane::apply_events`] (only what the core's
//! [`Event`]s name), and [`Dataplane::follow`] keeps them in step with a
//! [`StateMachineStore`], publishing the applied index it reflects.
//!
//! Which names a certificate serves comes from its leaf's subjectAltName, not from the spec:
//! the spec may change (`PutCert`, which emits no event) long before the renewal that covers the
//! new names lands, and a leaf can only ever be valid for the names it holds. The table then
//! depends only on each record's `current` certificate, which only changes with a
//! `CertActivated` or `CertRemoved` event, so incremental updates and a full rebuild agree.

pub mod alpn;
pub mod export;
pub mod http01;
pub mod probe;
pub mod sni;

#[cfg(test)]
mod serve_tests;

use std::cmp::Ordering as CmpOrdering;
use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use certfleet_core::model::{Challenge, ChallengeKind, SealedBlob};
use certfleet_core::{CertId, Event, State, UnixMillis};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::sign::CertifiedKey;
use tokio::sync::watch;

use crate::raft::state_machine::StateMachineStore;
use crate::seal::DataKey;

pub use alpn::ChallengeKeys;

/// Why a certificate or a challenge is not served. Each is logged with the certificate's id and
/// counted ([`Dataplane::skipped`]); the node keeps serving everything else.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SkipReason {
    /// The sealed key does not open with this node's data key.
    #[error("its key does not unseal: {0}")]
    Unseal(#[from] crate::seal::SealError),
    /// The unsealed key is not a PKCS#8 key rustls' ring provider can sign with.
    #[error("its key is not a usable PKCS#8 key: {0}")]
    Key(rustls::Error),
    /// The key does not belong to the leaf certificate.
    #[error("its key does not match the leaf certificate: {0}")]
    KeyMismatch(rustls::Error),
    /// The leaf is not a parseable X.509 certificate.
    #[error("its leaf certificate does not parse: {0}")]
    Leaf(String),
    /// The leaf names nothing a client can ask for.
    #[error("its leaf certificate has no DNS or IP subjectAltName")]
    NoNames,
    /// The interned chain the record refers to is missing from the state.
    #[error("its intermediate chain is missing from the state")]
    MissingChain,
    /// The TLS-ALPN-01 challenge certificate could not be built.
    #[error("its TLS-ALPN-01 certificate could not be built: {0}")]
    Alpn(#[from] alpn::AlpnError),
}

/// One certificate as served: the rustls key pair and chain, and the names its leaf covers.
#[derive(Debug)]
pub struct ServedCert {
    /// The certificate record's id.
    pub cert: CertId,
    /// The normalized names of the leaf's subjectAltName (DNS names, lower case, wildcards as
    /// `*.example.com`; IP addresses in canonical text).
    pub names: Vec<Arc<str>>,
    /// The leaf's validity end, as committed.
    pub not_after: UnixMillis,
    /// Leaf first, then the intermediates, and the signing key.
    pub certified: Arc<CertifiedKey>,
    /// The sealed key as committed: the export reopens it, and a rebuild that finds the same
    /// leaf, chain and key reuses this entry instead of unsealing and parsing again.
    sealed_key: SealedBlob,
}

impl ServedCert {
    /// The leaf certificate, DER.
    #[must_use]
    pub fn leaf_der(&self) -> &[u8] {
        self.certified.cert.first().map_or(&[], |der| der.as_ref())
    }

    /// The intermediates, DER, leaf-most first.
    #[must_use]
    pub fn chain_der(&self) -> &[CertificateDer<'static>] {
        self.certified.cert.get(1..).unwrap_or(&[])
    }

    /// The sealed private key, as committed.
    #[must_use]
    pub fn sealed_key(&self) -> &SealedBlob {
        &self.sealed_key
    }

    /// Whether this entry already serves exactly `leaf`, `chain` and `key`.
    fn is(&self, leaf: &[u8], chain: &[Vec<u8>], key: &SealedBlob) -> bool {
        self.sealed_key == *key
            && self.leaf_der() == leaf
            && self.chain_der().len() == chain.len()
            && self
                .chain_der()
                .iter()
                .zip(chain)
                .all(|(a, b)| a.as_ref() == b.as_slice())
    }
}

/// Candidates for one key, the served one first. Usually one; two certificates may cover the
/// same name (overlapping specs), and the order between them must not depend on the order of
/// updates, so that a node that followed events and one that rebuilt serve the same one.
type Candidates<T> = Arc<[Arc<T>]>;

/// The served certificates: by id, by exact name, and by the base of a wildcard.
///
/// Cloning is cheap per entry (reference counts, and the certificate id's string), so a
/// copy-on-write update at 100k certificates costs one clone of three maps of about 100k–300k
/// entries: a few milliseconds and a transient second copy of the maps (not of the
/// certificates), once per batch of events, not once per event.
#[derive(Clone, Debug, Default)]
pub struct CertTable {
    by_cert: BTreeMap<CertId, Arc<ServedCert>>,
    exact: HashMap<Arc<str>, Candidates<ServedCert>>,
    /// `*.example.com` is filed under `example.com`, so a lookup needs no allocation.
    wildcard: HashMap<Arc<str>, Candidates<ServedCert>>,
}

impl CertTable {
    /// The certificate to serve for a normalized name (lower case, no trailing dot): an exact
    /// match first, else a wildcard one label up (`a.b.example.com` matches
    /// `*.b.example.com`, never `*.example.com`; RFC 6125 §6.4.3).
    #[must_use]
    pub fn resolve(&self, name: &str) -> Option<&Arc<ServedCert>> {
        if let Some(found) = self.exact.get(name).and_then(|c| c.first()) {
            return Some(found);
        }
        let (_, parent) = name.split_once('.')?;
        self.wildcard.get(parent).and_then(|c| c.first())
    }

    /// One certificate by id.
    #[must_use]
    pub fn get(&self, cert: &CertId) -> Option<&Arc<ServedCert>> {
        self.by_cert.get(cert)
    }

    /// Every served certificate, by id.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<ServedCert>> {
        self.by_cert.values()
    }

    /// Number of served certificates.
    #[must_use]
    pub fn len(&self) -> usize {
        self.by_cert.len()
    }

    /// Whether nothing is served.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.by_cert.is_empty()
    }

    fn insert(&mut self, served: Arc<ServedCert>) {
        self.remove(&served.cert);
        for name in &served.names {
            let (map, key) = match name.strip_prefix("*.") {
                Some(base) => (&mut self.wildcard, Arc::<str>::from(base)),
                None => (&mut self.exact, name.clone()),
            };
            let others = map.get(&key).map_or(&[][..], |c| &c[..]);
            let mut candidates: Vec<Arc<ServedCert>> = others.to_vec();
            candidates.push(served.clone());
            candidates.sort_by(|a, b| serve_order(a, b));
            map.insert(key, candidates.into());
        }
        self.by_cert.insert(served.cert.clone(), served);
    }

    fn remove(&mut self, cert: &CertId) -> Option<Arc<ServedCert>> {
        let old = self.by_cert.remove(cert)?;
        for name in &old.names {
            let (map, key) = match name.strip_prefix("*.") {
                Some(base) => (&mut self.wildcard, base),
                None => (&mut self.exact, &**name),
            };
            remove_candidate(map, key, |c| c.cert == *cert);
        }
        Some(old)
    }
}

/// Which of two certificates covering one name is served: the one that expires later (the
/// fresher), then the smaller id, so the choice is a function of the table's content alone.
fn serve_order(a: &ServedCert, b: &ServedCert) -> CmpOrdering {
    b.not_after
        .cmp(&a.not_after)
        .then_with(|| a.cert.cmp(&b.cert))
}

fn remove_candidate<T>(
    map: &mut HashMap<Arc<str>, Candidates<T>>,
    key: &str,
    is_it: impl Fn(&T) -> bool,
) {
    let Some((key, candidates)) = map.remove_entry(key) else {
        return;
    };
    let kept: Vec<Arc<T>> = candidates.iter().filter(|c| !is_it(c)).cloned().collect();
    if !kept.is_empty() {
        map.insert(key, kept.into());
    }
}

/// A published challenge as served.
#[derive(Debug)]
pub struct ServedChallenge {
    /// The certificate whose cycle published it.
    pub cert: CertId,
    /// The challenge.
    pub challenge: Challenge,
    /// For TLS-ALPN-01, the self-signed certificate carrying the key authorization's digest.
    pub alpn: Option<Arc<CertifiedKey>>,
}

/// The published challenges: HTTP-01 by token, TLS-ALPN-01 by the SNI name it is asked for.
/// Small (bounded by the orders in flight), so copy-on-write is cheap.
#[derive(Clone, Debug, Default)]
pub struct ChallengeTable {
    http01: HashMap<Arc<str>, Candidates<ServedChallenge>>,
    alpn: HashMap<Arc<str>, Candidates<ServedChallenge>>,
    count: usize,
}

impl ChallengeTable {
    /// The key authorization to answer for an HTTP-01 token (RFC 8555 §8.3), if published.
    #[must_use]
    pub fn http01(&self, token: &str) -> Option<&str> {
        let served = self.http01.get(token)?.first()?;
        Some(&served.challenge.key_authorization)
    }

    /// The TLS-ALPN-01 certificate for a normalized SNI name (RFC 8737 §3), if published.
    #[must_use]
    pub fn alpn(&self, name: &str) -> Option<&Arc<CertifiedKey>> {
        self.alpn.get(name)?.first()?.alpn.as_ref()
    }

    /// Number of published HTTP-01 and TLS-ALPN-01 challenges.
    #[must_use]
    pub fn len(&self) -> usize {
        self.count
    }

    /// Whether no challenge is published.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The table key of a challenge: the token, or the SNI name the CA will send.
    fn slot(challenge: &Challenge) -> Option<(bool, Arc<str>)> {
        match challenge.kind {
            ChallengeKind::Http01 => Some((false, challenge.token.as_str().into())),
            ChallengeKind::TlsAlpn01 => Some((true, alpn::sni_name(&challenge.identifier).into())),
            // Published through the DNS hook, not by the data plane.
            ChallengeKind::Dns01 => None,
        }
    }

    fn insert(&mut self, served: Arc<ServedChallenge>) {
        let Some((is_alpn, key)) = Self::slot(&served.challenge) else {
            return;
        };
        self.remove(&served.cert, &served.challenge);
        let map = if is_alpn {
            &mut self.alpn
        } else {
            &mut self.http01
        };
        let mut candidates: Vec<Arc<ServedChallenge>> =
            map.get(&key).map_or(Vec::new(), |c| c.to_vec());
        candidates.push(served);
        // A pending authorization can be shared by two orders (RFC 8555 §7.4; Let's Encrypt
        // reuses them), so one token may be published by two certificates.
        candidates
            .sort_by(|a, b| (&a.cert, &a.challenge.token).cmp(&(&b.cert, &b.challenge.token)));
        map.insert(key, candidates.into());
        self.count += 1;
    }

    fn remove(&mut self, cert: &CertId, challenge: &Challenge) {
        let Some((is_alpn, key)) = Self::slot(challenge) else {
            return;
        };
        let map = if is_alpn {
            &mut self.alpn
        } else {
            &mut self.http01
        };
        let before = map.get(&key).map_or(0, |c| c.len());
        remove_candidate(map, &key, |c| {
            c.cert == *cert && c.challenge.token == challenge.token
        });
        let after = map.get(&key).map_or(0, |c| c.len());
        self.count -= before - after;
    }

    fn find(&self, cert: &CertId, challenge: &Challenge) -> Option<&Arc<ServedChallenge>> {
        let (is_alpn, key) = Self::slot(challenge)?;
        let map = if is_alpn { &self.alpn } else { &self.http01 };
        map.get(&key)?
            .iter()
            .find(|c| c.cert == *cert && c.challenge == *challenge)
    }
}

/// What a certificate table update needs from the state, copied out so that the slow part
/// (unsealing, parsing, building challenge certificates) runs without holding the state.
#[derive(Debug, Default)]
struct Gathered {
    /// Full rebuild (the table starts empty) or an update of the current table.
    full: bool,
    certs: Vec<(CertId, CertSource)>,
    /// Net challenge changes, in (certificate, token) order: `true` publishes, `false`
    /// withdraws (a challenge published and withdrawn in one batch is never built).
    challenges: BTreeMap<(CertId, String), (Challenge, bool)>,
    challenges_touched: bool,
}

#[derive(Debug)]
enum CertSource {
    /// The table already serves exactly this certificate.
    Keep(Arc<ServedCert>),
    /// A certificate to build.
    Build {
        leaf: Vec<u8>,
        chain: Option<Vec<Vec<u8>>>,
        key: SealedBlob,
        not_after: UnixMillis,
    },
    /// Not served any more.
    Gone,
}

/// The data plane of one node: the served tables, and what it has applied.
#[derive(Debug)]
pub struct Dataplane {
    certs: ArcSwap<CertTable>,
    challenges: ArcSwap<ChallengeTable>,
    /// Serializes writers: each update is load, clone, change, store, and two concurrent ones
    /// would lose one's change. Readers never take it.
    writer: Mutex<()>,
    challenge_keys: ChallengeKeys,
    served_index: watch::Sender<u64>,
    skipped: AtomicU64,
}

impl Dataplane {
    /// An empty data plane whose TLS-ALPN-01 certificates use keys from `challenge_keys`.
    #[must_use]
    pub fn new(challenge_keys: ChallengeKeys) -> Self {
        let (served_index, _) = watch::channel(0);
        Self {
            certs: ArcSwap::default(),
            challenges: ArcSwap::default(),
            writer: Mutex::new(()),
            challenge_keys,
            served_index,
            skipped: AtomicU64::new(0),
        }
    }

    /// The certificates served now (a snapshot: later updates do not change it).
    #[must_use]
    pub fn certs(&self) -> Arc<CertTable> {
        self.certs.load_full()
    }

    /// The challenges answered now (a snapshot).
    #[must_use]
    pub fn challenges(&self) -> Arc<ChallengeTable> {
        self.challenges.load_full()
    }

    /// Lock-free access for the per-handshake path.
    pub(crate) fn cert_table(&self) -> arc_swap::Guard<Arc<CertTable>> {
        self.certs.load()
    }

    /// Lock-free access for the per-request path.
    pub(crate) fn challenge_table(&self) -> arc_swap::Guard<Arc<ChallengeTable>> {
        self.challenges.load()
    }

    /// How many times a certificate or challenge could not be served (a key that does not
    /// unseal, a leaf that does not parse, …); each is logged with the certificate's id.
    #[must_use]
    pub fn skipped(&self) -> u64 {
        self.skipped.load(Ordering::Relaxed)
    }

    /// The last applied log index the tables reflect, as a watch (0 before [`Dataplane::follow`]
    /// served anything): the demo measures propagation, committed → served, with it.
    #[must_use]
    pub fn served_index(&self) -> watch::Receiver<u64> {
        self.served_index.subscribe()
    }

    /// Rebuilds both tables from `state` (after a snapshot install, or at start). Entries whose
    /// leaf, chain and key are unchanged are reused, so this costs unsealing only what changed.
    pub fn rebuild(&self, state: &State, key: &DataKey) {
        let gathered = self.gather_all(state);
        self.commit(gathered, key);
    }

    /// Applies the changes `events` name, reading the certificates they name from `state`
    /// (which must include them: events are drained after their entries are applied).
    ///
    /// Copy-on-write: each table the batch touches is cloned once, changed and swapped in. At
    /// 100k certificates a batch that activates a certificate clones the certificate maps
    /// (see [`CertTable`]: a few ms); a batch of challenge events clones only the small
    /// challenge table.
    pub fn apply_events(&self, events: &[Event], state: &State, key: &DataKey) {
        let gathered = self.gather_events(events, state);
        self.commit(gathered, key);
    }

    /// Follows `store`: after every applied-index change, drains the events and applies them,
    /// or rebuilds after a snapshot install (which clears the events), then publishes the index
    /// now served ([`Dataplane::served_index`]). Runs until the task is dropped.
    ///
    /// The state is read under the store's lock only to copy out what changed; unsealing and
    /// parsing happen outside it so that `apply` is never blocked on the data plane. A full
    /// rebuild of many new certificates runs on this task (unsealing and key parsing, tens of
    /// microseconds each).
    pub async fn follow(self: Arc<Self>, store: StateMachineStore, key: Arc<DataKey>) {
        // Before the first read of the state: an event applied in between is then both in the
        // rebuild and in the queue, which the next pass applies again harmlessly.
        store.keep_events();
        let mut applied = store.applied_index();
        let mut installs_seen = None;
        loop {
            // Read the index before draining: everything up to it has been applied, and its
            // events are in the queue or already handled, so the tables built next reflect at
            // least this index. A later entry applied meanwhile is served early, never late.
            let index = *applied.borrow_and_update();
            let installs = store.snapshot_installs();
            let events = store.drain_events();
            let gathered = if installs_seen == Some(installs) {
                store.read(|state| self.gather_events(&events, state))
            } else {
                // First pass, or a snapshot replaced the state and cleared its events.
                installs_seen = Some(installs);
                store.read(|state| self.gather_all(state))
            };
            self.commit(gathered, &key);
            self.served_index.send_if_modified(|served| {
                let changed = *served != index;
                *served = index;
                changed
            });
            if applied.changed().await.is_err() {
                return; // the store is gone: nothing more will be applied
            }
        }
    }

    fn gather_all(&self, state: &State) -> Gathered {
        let current = self.certs.load();
        let mut gathered = Gathered {
            full: true,
            challenges_touched: true,
            ..Gathered::default()
        };
        for (id, record) in state.certs() {
            if let Some(source) = Self::source(&current, state, id, record.current.as_ref()) {
                gathered.certs.push((id.clone(), source));
            }
        }
        for (id, challenge) in state.challenges() {
            gathered.challenges.insert(
                (id.clone(), challenge.token.clone()),
                (challenge.clone(), true),
            );
        }
        gathered
    }

    fn gather_events(&self, events: &[Event], state: &State) -> Gathered {
        let current = self.certs.load();
        let mut gathered = Gathered::default();
        let mut touched = std::collections::BTreeSet::new();
        for event in events {
            match event {
                Event::CertActivated { cert, .. } | Event::CertRemoved { cert } => {
                    touched.insert(cert.clone());
                }
                Event::ChallengePublished { cert, challenge } => {
                    gathered.challenges_touched = true;
                    gathered.challenges.insert(
                        (cert.clone(), challenge.token.clone()),
                        (challenge.clone(), true),
                    );
                }
                Event::ChallengeWithdrawn { cert, challenge } => {
                    gathered.challenges_touched = true;
                    gathered.challenges.insert(
                        (cert.clone(), challenge.token.clone()),
                        (challenge.clone(), false),
                    );
                }
            }
        }
        for cert in touched {
            // The state is the truth: a certificate activated then removed in one batch is gone.
            let issued = state.cert(&cert).and_then(|r| r.current.as_ref());
            let source = Self::source(&current, state, &cert, issued).unwrap_or(CertSource::Gone);
            gathered.certs.push((cert, source));
        }
        gathered
    }

    /// What to do for one certificate; `None` if it has nothing to serve.
    fn source(
        current: &CertTable,
        state: &State,
        id: &CertId,
        issued: Option<&certfleet_core::model::IssuedCert>,
    ) -> Option<CertSource> {
        let issued = issued?;
        let chain = state.chain(&issued.chain);
        if let (Some(served), Some(chain)) = (current.get(id), chain)
            && served.is(&issued.leaf_der, chain, &issued.key)
        {
            return Some(CertSource::Keep(served.clone()));
        }
        Some(CertSource::Build {
            leaf: issued.leaf_der.clone(),
            chain: chain.map(<[Vec<u8>]>::to_vec),
            key: issued.key.clone(),
            not_after: issued.not_after,
        })
    }

    /// Builds what was gathered and swaps the tables.
    fn commit(&self, gathered: Gathered, key: &DataKey) {
        // The lock guards no data, only the load-clone-store sequence: a poisoned one is fine.
        let _writer = self
            .writer
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if gathered.full || !gathered.certs.is_empty() {
            let current = self.certs.load_full();
            let mut table = if gathered.full {
                CertTable::default()
            } else {
                (*current).clone()
            };
            for (id, source) in gathered.certs {
                match source {
                    CertSource::Keep(served) => table.insert(served),
                    CertSource::Gone => {
                        table.remove(&id);
                    }
                    CertSource::Build {
                        leaf,
                        chain,
                        key: sealed,
                        not_after,
                    } => match build_served(&id, leaf, chain, sealed, not_after, key) {
                        Ok(served) => table.insert(Arc::new(served)),
                        Err(reason) => {
                            self.skip(&id, &reason);
                            // Keep serving the previous certificate, if any: it may well still
                            // be valid, and serving nothing is certainly worse.
                            if let Some(previous) = current.get(&id) {
                                table.insert(previous.clone());
                            }
                        }
                    },
                }
            }
            self.certs.store(Arc::new(table));
        }
        if gathered.challenges_touched {
            let current = self.challenges.load_full();
            let mut table = if gathered.full {
                ChallengeTable::default()
            } else {
                (*current).clone()
            };
            for ((cert, _), (challenge, published)) in gathered.challenges {
                if !published {
                    table.remove(&cert, &challenge);
                    continue;
                }
                if let Some(existing) = current.find(&cert, &challenge) {
                    table.insert(existing.clone());
                    continue;
                }
                match self.build_challenge(&cert, challenge) {
                    Ok(Some(served)) => table.insert(Arc::new(served)),
                    Ok(None) => {}
                    Err(reason) => self.skip(&cert, &reason),
                }
            }
            self.challenges.store(Arc::new(table));
        }
    }

    fn build_challenge(
        &self,
        cert: &CertId,
        challenge: Challenge,
    ) -> Result<Option<ServedChallenge>, SkipReason> {
        let alpn = match challenge.kind {
            ChallengeKind::Dns01 => return Ok(None),
            ChallengeKind::Http01 => None,
            ChallengeKind::TlsAlpn01 => Some(alpn::challenge_certified_key(
                &challenge.identifier,
                &challenge.key_authorization,
                &self.challenge_keys.key_pair(cert, &challenge.token)?,
            )?),
        };
        Ok(Some(ServedChallenge {
            cert: cert.clone(),
            challenge,
            alpn,
        }))
    }

    fn skip(&self, cert: &CertId, reason: &SkipReason) {
        self.skipped.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(cert = %cert, reason = %reason, "data plane: not serving");
    }
}

/// Bounds on a data-plane listener's connections, so that slow or many clients cost bounded
/// memory and cannot hold the node's sockets forever.
#[derive(Clone, Copy, Debug)]
pub struct ConnectionLimits {
    /// Deadline for a whole connection (handshake, request and answer).
    pub timeout_ms: u64,
    /// Connections served at once; further ones wait in the kernel's accept backlog.
    pub connections_max: usize,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        Self {
            timeout_ms: 10_000,
            connections_max: 1024,
        }
    }
}

/// Waits for a free connection slot, then accepts. `None` after an accept error (logged, after
/// a short pause: `EMFILE` would otherwise make the loop spin).
async fn accept(
    listener: &tokio::net::TcpListener,
    slots: &Arc<tokio::sync::Semaphore>,
) -> Option<(tokio::net::TcpStream, tokio::sync::OwnedSemaphorePermit)> {
    // Slot first: excess connections wait in the kernel's backlog, not in our memory. The
    // semaphore is never closed, so this only ever waits.
    let permit = Arc::clone(slots).acquire_owned().await.ok()?;
    match listener.accept().await {
        Ok((stream, _peer)) => Some((stream, permit)),
        Err(error) => {
            tracing::warn!(%error, "data plane: accept failed");
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            None
        }
    }
}

/// Unseals, parses and checks one certificate.
fn build_served(
    id: &CertId,
    leaf: Vec<u8>,
    chain: Option<Vec<Vec<u8>>>,
    sealed: SealedBlob,
    not_after: UnixMillis,
    key: &DataKey,
) -> Result<ServedCert, SkipReason> {
    let chain = chain.ok_or(SkipReason::MissingChain)?;
    let names = leaf_names(&leaf)?;
    let pkcs8 = key.open(&sealed)?;
    // Borrowed from the zeroizing buffer: the plaintext key is never copied.
    let der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(pkcs8.as_slice()));
    let signing = rustls::crypto::ring::sign::any_supported_type(&der).map_err(SkipReason::Key)?;
    let mut ders = Vec::with_capacity(1 + chain.len());
    ders.push(CertificateDer::from(leaf));
    ders.extend(chain.into_iter().map(CertificateDer::from));
    let certified = CertifiedKey::new(ders, signing);
    match certified.keys_match() {
        // Ring keys always expose their public key; `Unknown` would only mean "cannot tell".
        Ok(()) | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {}
        Err(error) => return Err(SkipReason::KeyMismatch(error)),
    }
    Ok(ServedCert {
        cert: id.clone(),
        names,
        not_after,
        certified: Arc::new(certified),
        sealed_key: sealed,
    })
}

/// The normalized DNS and IP names of a leaf's subjectAltName (RFC 5280 §4.2.1.6).
fn leaf_names(leaf: &[u8]) -> Result<Vec<Arc<str>>, SkipReason> {
    use x509_parser::extensions::GeneralName;
    let (_, parsed) = x509_parser::parse_x509_certificate(leaf)
        .map_err(|error| SkipReason::Leaf(error.to_string()))?;
    let san = parsed
        .subject_alternative_name()
        .map_err(|error| SkipReason::Leaf(error.to_string()))?
        .ok_or(SkipReason::NoNames)?;
    let mut names: Vec<Arc<str>> = Vec::new();
    for general in &san.value.general_names {
        let name = match general {
            GeneralName::DNSName(dns) => match sni::normalize(dns) {
                Some(name) => name,
                None => continue, // not a name a client can send; nothing to serve it for
            },
            GeneralName::IPAddress(bytes) => match ip_from_bytes(bytes) {
                Some(ip) => ip.to_string(),
                None => continue,
            },
            _ => continue,
        };
        names.push(name.into());
    }
    names.sort();
    names.dedup();
    if names.is_empty() {
        return Err(SkipReason::NoNames);
    }
    Ok(names)
}

fn ip_from_bytes(bytes: &[u8]) -> Option<IpAddr> {
    match bytes.len() {
        4 => <[u8; 4]>::try_from(bytes).ok().map(IpAddr::from),
        16 => <[u8; 16]>::try_from(bytes).ok().map(IpAddr::from),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::seal::Nonces;

    fn served(cert: &str, names: &[&str], not_after: u64) -> Arc<ServedCert> {
        let key = rcgen::KeyPair::generate().unwrap();
        let params = rcgen::CertificateParams::new(
            names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>(),
        )
        .unwrap();
        let leaf = params.self_signed(&key).unwrap();
        let data_key = DataKey::new([1; 4], &[1; 32]);
        let sealed = data_key.seal(&key.serialize_der(), Nonces::new(1).next());
        Arc::new(
            build_served(
                &CertId::parse(cert).unwrap(),
                leaf.der().to_vec(),
                Some(vec![]),
                sealed,
                UnixMillis(not_after),
                &data_key,
            )
            .unwrap(),
        )
    }

    fn resolved(table: &CertTable, name: &str) -> Option<String> {
        table.resolve(name).map(|s| s.cert.as_str().to_owned())
    }

    #[test]
    fn a_wildcard_matches_exactly_one_label_and_an_exact_name_wins() {
        let mut table = CertTable::default();
        table.insert(served("wild", &["*.b.example.com"], 10));
        table.insert(served("exact", &["x.b.example.com"], 10));
        assert_eq!(resolved(&table, "a.b.example.com").as_deref(), Some("wild"));
        assert_eq!(
            resolved(&table, "x.b.example.com").as_deref(),
            Some("exact")
        );
        // One label only (RFC 6125 §6.4.3): neither deeper nor the base itself.
        assert_eq!(resolved(&table, "z.a.b.example.com"), None);
        assert_eq!(resolved(&table, "b.example.com"), None);
        assert_eq!(resolved(&table, "example.com"), None);
    }

    #[test]
    fn overlapping_certificates_serve_the_later_expiry_whatever_the_update_order() {
        let old = served("old", &["www.example.com"], 10);
        let new = served("new", &["www.example.com", "example.com"], 20);
        let mut one = CertTable::default();
        one.insert(old.clone());
        one.insert(new.clone());
        let mut two = CertTable::default();
        two.insert(new);
        two.insert(old);
        assert_eq!(resolved(&one, "www.example.com").as_deref(), Some("new"));
        assert_eq!(resolved(&two, "www.example.com").as_deref(), Some("new"));
        // Removing the preferred one falls back to the other, and only it.
        one.remove(&CertId::parse("new").unwrap());
        assert_eq!(resolved(&one, "www.example.com").as_deref(), Some("old"));
        assert_eq!(resolved(&one, "example.com"), None);
        assert_eq!(one.len(), 1);
    }

    #[test]
    fn names_come_from_the_leaf_normalized() {
        let served = served("c", &["WWW.Example.com", "*.Example.com", "192.0.2.7"], 10);
        let names: Vec<&str> = served.names.iter().map(|n| &**n).collect();
        assert_eq!(names, ["*.example.com", "192.0.2.7", "www.example.com"]);
    }

    #[test]
    fn a_key_that_does_not_match_the_leaf_is_refused() {
        let key = rcgen::KeyPair::generate().unwrap();
        let other = rcgen::KeyPair::generate().unwrap();
        let leaf = rcgen::CertificateParams::new(vec!["a.example.com".to_owned()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let data_key = DataKey::new([1; 4], &[1; 32]);
        let sealed = data_key.seal(&other.serialize_der(), Nonces::new(1).next());
        let result = build_served(
            &CertId::parse("a").unwrap(),
            leaf.der().to_vec(),
            Some(vec![]),
            sealed,
            UnixMillis(1),
            &data_key,
        );
        assert!(
            matches!(result, Err(SkipReason::KeyMismatch(_))),
            "{result:?}"
        );
    }
}
