//! The demo's embedded CA: certfleet-ca's RFC 8555 server on a loopback port, validating
//! challenges against the demo's nodes as a CA behind a load balancer would (each validation
//! goes to the next node in turn, so nodes answer challenges they did not create).

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use certfleet_ca::{AcmeServer, CaConfig, ChallengeKind, MapTxt, NetworkValidator, SystemClock};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// A running embedded CA; stops when dropped.
pub struct EmbeddedCa {
    /// Its directory URL (plain HTTP on loopback).
    pub directory_url: String,
    /// The root its certificates chain to (DER), for the demo's TLS client.
    pub root_der: Vec<u8>,
    server: Arc<Mutex<AcmeServer>>,
    task: JoinHandle<()>,
}

impl std::fmt::Debug for EmbeddedCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedCa")
            .field("directory_url", &self.directory_url)
            .finish_non_exhaustive()
    }
}

impl EmbeddedCa {
    /// Starts the CA on a free loopback port, its keys and choices from `seed`, validating
    /// against `nodes` (their IPs) at `http01_port` and `tls_port`. No rate limits: the demo
    /// orders a thousand certificates for one account in a minute, which Let's Encrypt's limits
    /// exist to stop; the cluster's own budgets are what the simulation tests.
    pub async fn start(
        seed: u64,
        nodes: Vec<Ipv4Addr>,
        http01_port: u16,
        tls_port: u16,
    ) -> Result<Self, String> {
        if nodes.is_empty() {
            return Err("the embedded CA needs at least one node to validate against".into());
        }
        let listener = TcpListener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))
            .await
            .map_err(|error| format!("bind the CA's port on 127.0.0.1: {error}"))?;
        let port = listener
            .local_addr()
            .map_err(|error| format!("read the CA's port: {error}"))?
            .port();
        let config = CaConfig::new(format!("http://127.0.0.1:{port}")).without_limits();
        let server = AcmeServer::new(config, seed).map_err(|error| error.to_string())?;
        let directory_url = server.directory_url();
        let root_der = server.root_der().to_vec();
        let server = Arc::new(Mutex::new(server));
        let next = AtomicU64::new(0);
        let resolver = move |_: &certfleet_ca::Identifier, kind: ChallengeKind| {
            let turn = next.fetch_add(1, Ordering::Relaxed);
            // `nodes` is not empty (checked above), so the index is in range.
            let ip = nodes[(turn % nodes.len() as u64) as usize];
            let port = match kind {
                ChallengeKind::TlsAlpn01 => tls_port,
                _ => http01_port,
            };
            vec![SocketAddr::from((ip, port))]
        };
        let validator = NetworkValidator::new(resolver, MapTxt::new(), Default::default())
            .map_err(|error| format!("the CA's TLS-ALPN-01 client: {error}"))?;
        let task = tokio::spawn(certfleet_ca::serve(
            listener,
            server.clone(),
            Arc::new(validator),
            Arc::new(SystemClock),
        ));
        Ok(Self {
            directory_url,
            root_der,
            server,
            task,
        })
    }

    /// Orders the CA has created.
    #[must_use]
    pub fn orders_created(&self) -> u64 {
        self.server
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .stats()
            .orders_created
    }
}

impl EmbeddedCa {
    /// The CA's counters in one line (for a demo that did not finish).
    #[must_use]
    pub fn describe(&self) -> String {
        let server = self
            .server
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let stats = server.stats();
        format!(
            "the CA created {} orders, validated {} ok and {} failed of {} asked, issued {}, \
             refused {} for rate limits; last events: {:?}",
            stats.orders_created,
            stats.validations_succeeded,
            stats.validations_failed,
            stats.validations_requested,
            stats.certificates_issued,
            stats.rate_limited,
            server
                .events()
                .collect::<Vec<_>>()
                .iter()
                .rev()
                .take(5)
                .collect::<Vec<_>>()
        )
    }
}

impl Drop for EmbeddedCa {
    fn drop(&mut self) {
        self.task.abort();
    }
}
