//! The cluster's ACME account (DESIGN §4): one per issuer for the whole cluster, registered
//! once, its credentials sealed with the data key and replicated in `SetAccount`, and rebuilt
//! from the replicated state by whichever node leads.

use std::sync::Arc;
use std::time::Duration;

use certfleet_core::command::{AriWindow, Op};
use certfleet_core::model::{Account, IssuerId, SealedBlob};
use certfleet_core::order::{Action, CaError, Outcome};
use certfleet_core::{Command, UnixMillis};
use openraft::Raft;
use zeroize::Zeroizing;

use crate::acme::{
    AcmeClient, AcmeError, AcmeOptions, KeyChangeOutcome, KeySealer, Transport, describe,
};
use crate::node::{Acme, RolloverOutcome};
use crate::raft::StateMachineStore;
use crate::raft::network;
use crate::raft::types::TypeConfig;

/// Where the cluster's CA is and how to trust it.
#[derive(Clone, Debug)]
pub struct CaEndpoint {
    /// The ACME directory URL.
    pub directory_url: String,
    /// Extra root certificates (PEM) for the CA's HTTPS, as a test CA needs; `None`: the
    /// platform's roots.
    pub root_pem: Option<Vec<u8>>,
    /// Adapter knobs.
    pub options: AcmeOptions,
}

impl CaEndpoint {
    fn transport(&self) -> Result<Transport, AcmeError> {
        Transport::for_directory(&self.directory_url, self.root_pem.clone())
    }
}

/// Makes a fresh [`Transport`] each time an account client is built: the simulation's wire
/// CA, reached over simulated sockets ([`Transport::Custom`]), where the transport
/// [`Transport::for_directory`] would choose cannot work (plain http to a non-loopback host is
/// refused, and hyper-util's pooled client spawns on the real tokio). A factory, not a
/// transport: [`ClusterAcme`] rebuilds its client whenever the committed credentials change.
pub type TransportFactory = Arc<dyn Fn() -> Transport + Send + Sync>;

/// Registers an account for `issuer` at `ca` and commits it, sealed, through `raft`. Done
/// once, before certificates name the issuer (`PutCert` refuses an unknown issuer).
pub async fn register(
    raft: &Raft<TypeConfig>,
    issuer: IssuerId,
    ca: &CaEndpoint,
    contact: &[&str],
    sealer: &KeySealer,
    now: UnixMillis,
) -> Result<(), String> {
    let transport = ca
        .transport()
        .map_err(|error| format!("register an account at {}: {error}", ca.directory_url))?;
    register_with(raft, issuer, ca, transport, contact, sealer, now).await
}

/// [`register`] through `transport` instead of the one `ca`'s URL implies (the simulation's
/// wire CA; see [`TransportFactory`]). `ca.root_pem` is not used.
pub async fn register_with(
    raft: &Raft<TypeConfig>,
    issuer: IssuerId,
    ca: &CaEndpoint,
    transport: Transport,
    contact: &[&str],
    sealer: &KeySealer,
    now: UnixMillis,
) -> Result<(), String> {
    let (client, credentials) = AcmeClient::register(
        transport,
        &ca.directory_url,
        contact,
        None,
        sealer.clone(),
        &ca.options,
        now,
    )
    .await
    .map_err(|error| format!("register an account at {}: {error}", ca.directory_url))?;
    let account = Account {
        directory_url: ca.directory_url.clone(),
        account_url: Some(client.account_url().to_owned()),
        contact: contact.iter().map(|c| (*c).to_owned()).collect(),
        credentials: sealer.seal(credentials.as_bytes()),
        throttled_until: None,
        rollover: None,
    };
    let command = Command {
        at: now,
        op: Op::SetAccount { issuer, account },
    };
    let written = network::write(raft, command, Duration::from_secs(10))
        .await
        .map_err(|error| format!("commit the account: {error}"))?;
    if written.response.is_accepted() {
        Ok(())
    } else {
        Err(format!(
            "the cluster refused the account: {:?}",
            written.response
        ))
    }
}

/// Begins rolling `issuer`'s account key (RFC 8555 §7.3.5): a fresh key for the committed
/// account, sealed, committed through `raft` as `RollAccountKey` before the CA hears of it.
/// The leader's driver then has the CA bind it and commits the outcome; a leader dying at any
/// point leaves the new key in the log for the next one to finish with (DESIGN §4).
pub async fn begin_key_rollover(
    raft: &Raft<TypeConfig>,
    state_machine: &StateMachineStore,
    issuer: IssuerId,
    sealer: &KeySealer,
    now: UnixMillis,
) -> Result<SealedBlob, String> {
    let account = state_machine
        .read(|state| state.account(&issuer).cloned())
        .ok_or_else(|| format!("no account is committed for issuer {issuer}"))?;
    if let Some(rollover) = &account.rollover {
        return Err(format!(
            "issuer {issuer} has a key rollover in progress since {}: it must finish first",
            rollover.requested_at
        ));
    }
    let json = open_credentials(sealer, &account.credentials)
        .map_err(|error| format!("{error} (issuer {issuer})"))?;
    let fresh = crate::acme::credentials_with_new_key(&json)
        .map_err(|error| format!("make a new key for {issuer}'s account: {error}"))?;
    let credentials = sealer.seal(fresh.as_bytes());
    let command = Command {
        at: now,
        op: Op::RollAccountKey {
            issuer,
            credentials: credentials.clone(),
        },
    };
    let written = network::write(raft, command, Duration::from_secs(10))
        .await
        .map_err(|error| format!("commit the key rollover: {error}"))?;
    if written.response.is_accepted() {
        Ok(credentials)
    } else {
        Err(format!(
            "the cluster refused the key rollover: {:?}",
            written.response
        ))
    }
}

/// The CA as a node's driver reaches it: the issuer's committed account, rebuilt on first use
/// and again whenever the committed credentials change.
pub struct ClusterAcme {
    issuer: IssuerId,
    ca: CaEndpoint,
    state_machine: StateMachineStore,
    sealer: KeySealer,
    /// `None`: the transport `ca`'s URL implies.
    transport: Option<TransportFactory>,
    client: tokio::sync::Mutex<Option<(SealedBlob, Arc<AcmeClient>)>>,
}

impl std::fmt::Debug for ClusterAcme {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterAcme")
            .field("issuer", &self.issuer)
            .field("directory_url", &self.ca.directory_url)
            .finish_non_exhaustive()
    }
}

impl ClusterAcme {
    /// The account of `issuer` at `ca`, read from `state_machine`.
    #[must_use]
    pub fn new(
        issuer: IssuerId,
        ca: CaEndpoint,
        state_machine: StateMachineStore,
        sealer: KeySealer,
    ) -> Self {
        Self {
            issuer,
            ca,
            state_machine,
            sealer,
            transport: None,
            client: tokio::sync::Mutex::new(None),
        }
    }

    /// [`ClusterAcme::new`], reaching the CA through transports `transport` makes instead of
    /// the one `ca`'s URL implies (the simulation's wire CA; see [`TransportFactory`]).
    #[must_use]
    pub fn with_transport(
        issuer: IssuerId,
        ca: CaEndpoint,
        state_machine: StateMachineStore,
        sealer: KeySealer,
        transport: TransportFactory,
    ) -> Self {
        Self {
            transport: Some(transport),
            ..Self::new(issuer, ca, state_machine, sealer)
        }
    }

    fn transport(&self) -> Result<Transport, CaError> {
        match &self.transport {
            Some(make) => Ok(make()),
            None => self
                .ca
                .transport()
                .map_err(|error| local_failure(format!("reach the CA: {error}"))),
        }
    }

    /// The credentials JSON inside `blob`.
    fn open(&self, blob: &SealedBlob) -> Result<Zeroizing<String>, CaError> {
        open_credentials(&self.sealer, blob).map_err(local_failure)
    }

    async fn client(&self, now: UnixMillis) -> Result<Arc<AcmeClient>, CaError> {
        let committed = self
            .state_machine
            .read(|state| state.account(&self.issuer).map(|a| a.credentials.clone()))
            .ok_or_else(|| {
                local_failure(format!(
                    "no account is committed for issuer {:?}",
                    self.issuer
                ))
            })?;
        let mut slot = self.client.lock().await;
        if let Some((credentials, client)) = slot.as_ref()
            && *credentials == committed
        {
            return Ok(client.clone());
        }
        let json = self.open(&committed)?;
        let client = AcmeClient::from_credentials(
            self.transport()?,
            &json,
            self.sealer.clone(),
            &self.ca.options,
            now,
        )
        .await
        .map_err(|error| match error.ca() {
            Some(ca) => ca.clone(),
            None => local_failure(format!("rebuild the account: {error}")),
        })?;
        let client = Arc::new(client);
        *slot = Some((committed, client.clone()));
        Ok(client)
    }
}

impl Acme for ClusterAcme {
    async fn perform(&self, action: Action, now: UnixMillis) -> Outcome {
        match self.client(now).await {
            Ok(client) => client.perform(action, now).await,
            Err(error) => {
                tracing::warn!(issuer = ?self.issuer, error = %describe(&error), "no ACME account");
                Outcome::Failed(error)
            }
        }
    }

    async fn renewal_info(&self, ari_id: &str, now: UnixMillis) -> Option<AriWindow> {
        self.client(now).await.ok()?.renewal_info(ari_id, now).await
    }

    async fn roll_account_key(
        &self,
        old: SealedBlob,
        new: SealedBlob,
        now: UnixMillis,
    ) -> RolloverOutcome {
        let new = match self.open(&new) {
            Ok(new) => new,
            // Committed credentials this node cannot open never will be (another data key):
            // retrying would hold the issuer's renewals for good.
            Err(error) => return RolloverOutcome::Refused(error.detail),
        };
        let attempt = async {
            let old = self.open(&old)?;
            Ok::<_, CaError>(
                crate::acme::roll_account_key(self.transport()?, &old, &new, &self.ca.options, now)
                    .await,
            )
        };
        match attempt.await {
            Ok(Ok(KeyChangeOutcome::Rolled)) => RolloverOutcome::Rolled,
            Ok(Ok(KeyChangeOutcome::Refused(detail))) => RolloverOutcome::Refused(detail),
            // Credentials that cannot be read never will be: retrying would hold the issuer's
            // renewals for good. Nothing was sent to the CA with them.
            Ok(Err(error @ AcmeError::Credentials(_))) => {
                RolloverOutcome::Refused(format!("the new credentials are unusable: {error}"))
            }
            Ok(Err(error)) => RolloverOutcome::Failed(match error.ca() {
                Some(ca) => ca.clone(),
                None => local_failure(format!("roll the account key: {error}")),
            }),
            Err(error) => RolloverOutcome::Failed(error),
        }
    }
}

/// The account credentials JSON sealed in `blob`.
fn open_credentials(sealer: &KeySealer, blob: &SealedBlob) -> Result<Zeroizing<String>, String> {
    let mut bytes = sealer
        .open(blob)
        .map_err(|error| format!("open the account credentials: {error}"))?;
    // Moved out, not copied: the buffer goes on zeroized on drop, as the `String`'s.
    String::from_utf8(std::mem::take(&mut *bytes))
        .map(Zeroizing::new)
        .map_err(|error| {
            // The bytes are a key in clear: wipe them before the error drops them.
            let mut bytes = error.into_bytes();
            zeroize::Zeroize::zeroize(&mut bytes);
            "the account credentials are not UTF-8 JSON".to_owned()
        })
}

/// A failure on this side of the CA (credentials, transport set-up); it holds every call of
/// the account.
fn local_failure(detail: String) -> CaError {
    CaError {
        status: None,
        problem: None,
        detail,
        retry_at: None,
        account_wide: true,
    }
}
