//! A real Pebble ACME server for integration tests, with `pebble-challtestsrv` as its DNS
//! (every name resolves to 127.0.0.1) and, unless the caller brings its own responders, as the
//! server answering its HTTP-01 and TLS-ALPN-01 validations.
//!
//! Each [`Pebble`] owns a temporary directory (its TLS certificate, config and logs) and two
//! child processes on free loopback ports, so tests run in parallel; dropping it kills both.
//! Validation is real (`PEBBLE_VA_ALWAYS_VALID` is removed from the environment), without
//! Pebble's random validation sleeps, and with nonce rejection off unless asked for.
//!
//! ```ignore
//! let Some(pebble) = Pebble::start_or_skip(PebbleOptions::default()) else { return };
//! // ... an ACME client on pebble.directory_url() trusting pebble.root_pem() ...
//! pebble.add_http01(&token, &key_authorization);
//! assert_eq!(pebble.orders_created(), 1);
//! ```

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};

/// Where Debian installs Pebble.
pub const PEBBLE: &str = "/usr/bin/pebble";
/// Where Debian installs the challenge test server.
pub const CHALLTESTSRV: &str = "/usr/bin/pebble-challtestsrv";
/// How long a server may take to start listening.
pub const START_TIMEOUT: Duration = Duration::from_secs(15);
/// What Pebble logs once per order it creates ("Added order %q to the db").
pub const NEW_ORDER_LOG_LINE: &str = "Added order";

/// How a [`Pebble`] is started. The default: no nonce rejection, no authorization reuse,
/// challtestsrv answering every validation.
#[derive(Clone, Debug, Default)]
pub struct PebbleOptions {
    /// Percentage of nonces Pebble rejects as `badNonce` (`PEBBLE_WFE_NONCEREJECT`; Pebble's
    /// own default is 5, ours 0 so that tests are deterministic).
    pub nonce_reject_percent: u8,
    /// Percentage of orders that reuse a valid authorization (`PEBBLE_AUTHZREUSE`; Pebble's
    /// default 50, ours 0).
    pub authz_reuse_percent: u8,
    /// The port Pebble connects to for HTTP-01 (on 127.0.0.1, since its DNS answers that for
    /// every name); `None`: challtestsrv answers, fed through [`Pebble::add_http01`].
    pub http01_port: Option<u16>,
    /// The port Pebble connects to for TLS-ALPN-01; `None`: challtestsrv answers, fed through
    /// [`Pebble::add_tlsalpn01`].
    pub tlsalpn01_port: Option<u16>,
    /// External account binding required, with this key id and base64url HMAC key.
    pub eab: Option<(String, String)>,
}

/// A running Pebble and challtestsrv.
#[derive(Debug)]
pub struct Pebble {
    pebble: Child,
    challtestsrv: Child,
    directory_url: String,
    root_pem: Vec<u8>,
    management: SocketAddr,
    http01_port: u16,
    tlsalpn01_port: u16,
    dns_port: u16,
    log_path: PathBuf,
    // Last: removed after the children are killed.
    dir: tempfile::TempDir,
}

impl Pebble {
    /// Whether Pebble is installed.
    #[must_use]
    pub fn installed() -> bool {
        Path::new(PEBBLE).exists() && Path::new(CHALLTESTSRV).exists()
    }

    /// Starts Pebble, or returns `None` after saying why the test is skipped when Pebble is not
    /// installed (CI installs it). Any other failure panics: a broken harness must not pass.
    #[must_use]
    pub fn start_or_skip(options: PebbleOptions) -> Option<Self> {
        if !Self::installed() {
            eprintln!("skipping: {PEBBLE} or {CHALLTESTSRV} is not installed (apt install pebble)");
            return None;
        }
        Some(Self::start(options).expect("start pebble"))
    }

    /// Starts Pebble and challtestsrv on free ports and waits until both listen. Ports are
    /// picked by binding port 0 and releasing it, so another process may take one in between:
    /// a start that fails is retried on new ports.
    pub fn start(options: PebbleOptions) -> io::Result<Self> {
        let mut last_error = None;
        for _ in 0..3 {
            match Self::start_once(&options) {
                Ok(pebble) => return Ok(pebble),
                Err(error) => last_error = Some(error),
            }
        }
        Err(last_error.unwrap_or_else(|| io::Error::other("pebble did not start")))
    }

    fn start_once(options: &PebbleOptions) -> io::Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("certfleet-pebble-")
            .tempdir()?;
        let (root_pem, cert_path, key_path) = write_tls_identity(dir.path())?;
        let listen = free_tcp_port()?;
        let pebble_management = free_tcp_port()?;
        let management = free_tcp_port()?;
        let dns_port = free_dns_port()?;
        let http01_port = match options.http01_port {
            Some(port) => port,
            None => free_tcp_port()?,
        };
        let tlsalpn01_port = match options.tlsalpn01_port {
            Some(port) => port,
            None => free_tcp_port()?,
        };
        let loopback = |port: u16| format!("127.0.0.1:{port}");
        let listener_or_off = |ours: Option<u16>, port: u16| match ours {
            Some(_) => String::new(), // the caller answers on that port
            None => loopback(port),
        };

        let challtestsrv_log = File::create(dir.path().join("challtestsrv.log"))?;
        let challtestsrv = Command::new(CHALLTESTSRV)
            .args(["-management", &loopback(management)])
            .args(["-dns01", &loopback(dns_port)])
            .args([
                "-http01",
                &listener_or_off(options.http01_port, http01_port),
            ])
            .args([
                "-tlsalpn01",
                &listener_or_off(options.tlsalpn01_port, tlsalpn01_port),
            ])
            .args(["-https01", ""])
            .args(["-defaultIPv4", "127.0.0.1"])
            // No AAAA answers: Pebble would otherwise try ::1 first.
            .args(["-defaultIPv6", ""])
            .stdin(Stdio::null())
            .stdout(challtestsrv_log.try_clone()?)
            .stderr(challtestsrv_log)
            .spawn()?;
        let mut children = Children(vec![challtestsrv]);

        let config = serde_json::json!({
            "pebble": {
                "listenAddress": loopback(listen),
                "managementListenAddress": loopback(pebble_management),
                "certificate": cert_path,
                "privateKey": key_path,
                "httpPort": http01_port,
                "tlsPort": tlsalpn01_port,
                "ocspResponderURL": "",
                "externalAccountBindingRequired": options.eab.is_some(),
                "externalAccountMACKeys": options
                    .eab
                    .iter()
                    .map(|(kid, key)| (kid.clone(), serde_json::Value::from(key.as_str())))
                    .collect::<serde_json::Map<_, _>>()
            }
        });
        let config_path = dir.path().join("pebble-config.json");
        fs::write(&config_path, serde_json::to_vec_pretty(&config)?)?;
        let log_path = dir.path().join("pebble.log");
        let pebble_log = File::create(&log_path)?;
        let pebble = Command::new(PEBBLE)
            .arg("-config")
            .arg(&config_path)
            .args(["-dnsserver", &loopback(dns_port)])
            .env_remove("PEBBLE_VA_ALWAYS_VALID")
            .env("PEBBLE_VA_NOSLEEP", "1")
            .env(
                "PEBBLE_WFE_NONCEREJECT",
                options.nonce_reject_percent.to_string(),
            )
            .env("PEBBLE_AUTHZREUSE", options.authz_reuse_percent.to_string())
            .stdin(Stdio::null())
            .stdout(pebble_log.try_clone()?)
            .stderr(pebble_log)
            .spawn()?;
        children.0.push(pebble);

        let deadline = Instant::now() + START_TIMEOUT;
        let mut waiting = vec![
            (1, listen, "pebble"),
            (0, management, "pebble-challtestsrv"),
        ];
        if options.http01_port.is_none() {
            waiting.push((0, http01_port, "pebble-challtestsrv http-01"));
        }
        if options.tlsalpn01_port.is_none() {
            waiting.push((0, tlsalpn01_port, "pebble-challtestsrv tls-alpn-01"));
        }
        for (child, port, what) in waiting {
            loop {
                if TcpStream::connect((Ipv4Addr::LOCALHOST, port)).is_ok() {
                    break;
                }
                if let Some(status) = children.0[child].try_wait()? {
                    return Err(io::Error::other(format!(
                        "{what} exited with {status} before listening on {port}; log:\n{}",
                        fs::read_to_string(dir.path().join(if child == 1 {
                            "pebble.log"
                        } else {
                            "challtestsrv.log"
                        }))
                        .unwrap_or_default()
                    )));
                }
                if Instant::now() > deadline {
                    return Err(io::Error::other(format!(
                        "{what} is not listening on {port} after {START_TIMEOUT:?}"
                    )));
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        let pebble = children.0.pop().expect("pebble was pushed");
        let challtestsrv = children.0.pop().expect("challtestsrv was pushed");
        Ok(Self {
            pebble,
            challtestsrv,
            directory_url: format!("https://localhost:{listen}/dir"),
            root_pem,
            management: SocketAddr::from((Ipv4Addr::LOCALHOST, management)),
            http01_port,
            tlsalpn01_port,
            dns_port,
            log_path,
            dir,
        })
    }

    /// The ACME directory URL.
    #[must_use]
    pub fn directory_url(&self) -> &str {
        &self.directory_url
    }

    /// The root a client must trust to reach the directory (it signed Pebble's HTTPS leaf;
    /// it is not the CA that issues the test certificates).
    #[must_use]
    pub fn root_pem(&self) -> &[u8] {
        &self.root_pem
    }

    /// The port Pebble validates HTTP-01 on.
    #[must_use]
    pub fn http01_port(&self) -> u16 {
        self.http01_port
    }

    /// The port Pebble validates TLS-ALPN-01 on.
    #[must_use]
    pub fn tlsalpn01_port(&self) -> u16 {
        self.tlsalpn01_port
    }

    /// The UDP and TCP port of the DNS server Pebble resolves names with.
    #[must_use]
    pub fn dns_port(&self) -> u16 {
        self.dns_port
    }

    /// The temporary directory holding the config and logs (removed on drop).
    #[must_use]
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Pebble's log file.
    #[must_use]
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// Pebble's log so far.
    #[must_use]
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// Orders Pebble has created so far (its log lines for them).
    #[must_use]
    pub fn orders_created(&self) -> usize {
        self.log()
            .lines()
            .filter(|line| line.contains(NEW_ORDER_LOG_LINE))
            .count()
    }

    /// Makes challtestsrv answer `GET /.well-known/acme-challenge/<token>` with
    /// `key_authorization`.
    pub fn add_http01(&self, token: &str, key_authorization: &str) {
        self.manage(
            "/add-http01",
            &serde_json::json!({ "token": token, "content": key_authorization }),
        );
    }

    /// Makes challtestsrv answer TLS-ALPN-01 for `host` with a certificate for
    /// `key_authorization`.
    pub fn add_tlsalpn01(&self, host: &str, key_authorization: &str) {
        self.manage(
            "/add-tlsalpn01",
            &serde_json::json!({ "host": host, "content": key_authorization }),
        );
    }

    /// Makes Pebble's DNS answer `host`'s A query with `ip` (instead of 127.0.0.1), so that
    /// its validation of `host` goes to the node listening there.
    pub fn add_a(&self, host: &str, ip: Ipv4Addr) {
        let fqdn = if host.ends_with('.') {
            host.to_owned()
        } else {
            format!("{host}.")
        };
        self.manage(
            "/add-a",
            &serde_json::json!({ "host": fqdn, "addresses": [ip.to_string()] }),
        );
    }

    /// Publishes TXT `value` at `name` (e.g. `_acme-challenge.example.com`) in Pebble's DNS.
    pub fn set_txt(&self, name: &str, value: &str) {
        let fqdn = if name.ends_with('.') {
            name.to_owned()
        } else {
            format!("{name}.")
        };
        self.manage(
            "/set-txt",
            &serde_json::json!({ "host": fqdn, "value": value }),
        );
    }

    /// POSTs JSON to challtestsrv's management API; panics unless it answers 200.
    fn manage(&self, path: &str, body: &serde_json::Value) {
        let body = body.to_string();
        let mut stream = TcpStream::connect(self.management).expect("challtestsrv management");
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .expect("read timeout");
        write!(
            stream,
            "POST {path} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            self.management,
            body.len()
        )
        .expect("write to challtestsrv");
        let mut response = String::new();
        stream
            .read_to_string(&mut response)
            .expect("read from challtestsrv");
        assert!(
            response.starts_with("HTTP/1.1 200"),
            "challtestsrv {path} {body}: {response}"
        );
    }
}

impl Drop for Pebble {
    fn drop(&mut self) {
        for child in [&mut self.pebble, &mut self.challtestsrv] {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Children killed on drop while `start` is still assembling a [`Pebble`].
struct Children(Vec<Child>);

impl Drop for Children {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A root CA and a `localhost` / `127.0.0.1` leaf it signed, for Pebble's HTTPS (webpki refuses
/// a self-signed CA certificate used as a server's leaf). Returns the root PEM and the paths of
/// the leaf's certificate and key.
fn write_tls_identity(dir: &Path) -> io::Result<(Vec<u8>, PathBuf, PathBuf)> {
    let rcgen_error = |e: rcgen::Error| io::Error::other(e.to_string());
    let root_key = KeyPair::generate().map_err(rcgen_error)?;
    let mut root_params = CertificateParams::new(Vec::<String>::new()).map_err(rcgen_error)?;
    root_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    root_params
        .distinguished_name
        .push(DnType::CommonName, "certfleet test root for pebble");
    let root_cert = root_params.self_signed(&root_key).map_err(rcgen_error)?;
    let root = Issuer::new(root_params, root_key);

    let leaf_key = KeyPair::generate().map_err(rcgen_error)?;
    let mut leaf_params =
        CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
            .map_err(rcgen_error)?;
    leaf_params
        .distinguished_name
        .push(DnType::CommonName, "localhost");
    let leaf = leaf_params
        .signed_by(&leaf_key, &root)
        .map_err(rcgen_error)?;

    let cert_path = dir.join("localhost.pem");
    let key_path = dir.join("localhost.key");
    fs::write(&cert_path, leaf.pem())?;
    fs::write(&key_path, leaf_key.serialize_pem())?;
    Ok((root_cert.pem().into_bytes(), cert_path, key_path))
}

fn free_tcp_port() -> io::Result<u16> {
    Ok(TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?
        .local_addr()?
        .port())
}

/// A port free for both UDP and TCP (the DNS server listens on both).
fn free_dns_port() -> io::Result<u16> {
    for _ in 0..20 {
        let udp = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))?;
        let port = udp.local_addr()?.port();
        if TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok() {
            return Ok(port);
        }
    }
    Err(io::Error::other("no port free for both UDP and TCP"))
}
