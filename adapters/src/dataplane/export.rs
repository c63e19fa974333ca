//! PEM export in certbot's layout (`live/<name>/{cert,chain,fullchain,privkey}.pem`), for
//! programs that read certificates from files (nginx, HAProxy) rather than through the data
//! plane's own TLS listener (DESIGN §2).
//!
//! [`Exporter::follow`] writes the [`Dataplane`]'s certificate table after every change of its
//! served index; [`Exporter::export`] writes one table (the `certfleet export` subcommand, tests).
//!
//! * **Layout.** `<root>/live/<dir>/` per served certificate, where `<dir>` is the certificate
//!   id made safe for a file name ([`dir_name`]): `cert.pem` (the leaf), `chain.pem` (the
//!   intermediates), `fullchain.pem` (exactly `cert.pem` then `chain.pem`) and `privkey.pem`
//!   (PKCS#8, `PRIVATE KEY`). Line endings are LF, as certbot writes them.
//! * **Durability.** Each file is written to a temporary file in its directory, synced, renamed
//!   over the old one, and the directory is synced before the certificate is reported written
//!   and before the reload command runs: a crash leaves each file whole, old or new.
//! * **Secrecy.** `privkey.pem` (and its temporary file) is created with mode 0600, never
//!   widened afterwards; a `privkey.pem` found with group or other bits is rewritten.
//!   Directories the export creates are 0700, as certbot's `live/`: the consumer that needs the
//!   key must run as this user or as root anyway, so 0700 costs it nothing, and it keeps the
//!   key unreadable even if a later hand or tool widens `privkey.pem`. Existing directories'
//!   modes are left alone, so an operator can grant a group access (0750) and keep it.
//! * **Ownership.** A directory is the export's only if it holds the marker file
//!   [`MARKER_FILE`]; it is created with its marker in place (made under a staging name, then
//!   renamed), so a crash never leaves an unmarked one behind. Only marked directories are ever
//!   written into or removed; anything else under `live/` is left as it is.
//! * **Incremental.** A certificate whose files already hold exactly the bytes to write is not
//!   rewritten: in memory, by the served entry last exported (the data plane reuses entries, so
//!   usually a pointer comparison); after a start, by comparing with the files on disk.
//!   The in-memory record trusts that nobody else edits the exported files while the process
//!   lives; a restart re-checks them all.
//! * **Consistency.** A certificate's four files are replaced one after the other, so a
//!   program reading them on its own schedule may briefly see a new leaf with the old key (as
//!   with certbot's own layout). The reload command runs once after the whole batch is on disk,
//!   and is the point at which the files agree.
//! * **Failures.** A key that does not unseal, or a file that cannot be written, fails that
//!   certificate only (logged with its id, counted, returned in [`ExportReport::failed`]); its
//!   previous files stay. A failing reload command is logged and counted and retried at the
//!   next export. Nothing here panics on what it finds on disk.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{ChildStderr, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

use certfleet_core::CertId;
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use super::{CertTable, Dataplane, ServedCert};
use crate::seal::{DataKey, SealError};

/// The longest directory name [`dir_name`] makes; longer ids get a prefix and a hash. File
/// names are limited to 255 bytes on the usual file systems; the margin leaves room for the
/// staging name (`.<dir>.certfleet-new`).
pub const DIR_NAME_LEN_MAX: usize = 200;

/// The file that marks a directory under `live/` as made by the export. Only directories that
/// hold it are ever written into or removed.
pub const MARKER_FILE: &str = ".certfleet-export";

/// How long a reload command may run before it is killed, unless configured otherwise.
pub const RELOAD_TIMEOUT_DEFAULT: Duration = Duration::from_secs(30);

/// How much of a failed reload command's standard error goes into [`ReloadError::Failed`].
pub const RELOAD_STDERR_KEPT_BYTES_MAX: usize = 2048;

/// How much of an over-long id's escaped form its hashed name keeps, so that it stays
/// recognizable: 128 + `~` + 64 hex digits fits [`DIR_NAME_LEN_MAX`].
const DIR_NAME_PREFIX_LEN: usize = 128;

const CERT_FILE: &str = "cert.pem";
const CHAIN_FILE: &str = "chain.pem";
const FULLCHAIN_FILE: &str = "fullchain.pem";
const PRIVKEY_FILE: &str = "privkey.pem";

/// Every file the export writes in a certificate's directory, the marker last: removal goes in
/// this order, so a directory loses its marker only once nothing else of the export's is left.
const OWN_FILES: [&str; 5] = [
    CERT_FILE,
    CHAIN_FILE,
    FULLCHAIN_FILE,
    PRIVKEY_FILE,
    MARKER_FILE,
];

/// Suffix of a directory being created (`.<dir>.certfleet-new`). It starts with a dot, which
/// [`dir_name`] never makes, so it cannot be a certificate's directory.
const STAGING_SUFFIX: &str = ".certfleet-new";

/// How long to wait for a reload command's standard error to close once it has exited: a
/// daemon it started may hold the pipe open for as long as it lives.
const RELOAD_STDERR_GRACE: Duration = Duration::from_millis(200);

/// [`Exporter::follow`] retries after a failure (a certificate or the reload command) even if
/// the table does not change, backing off between these bounds.
const RETRY_MIN: Duration = Duration::from_secs(1);
const RETRY_MAX: Duration = Duration::from_secs(300);

#[cfg(unix)]
const DIR_MODE: u32 = 0o700;
#[cfg(unix)]
const PUBLIC_FILE_MODE: u32 = 0o644;
#[cfg(unix)]
const SECRET_FILE_MODE: u32 = 0o600;

/// Where and how to export.
#[derive(Clone, Debug)]
pub struct ExportConfig {
    /// The export root; certificates go under `<root>/live/`. Created (0700) if missing.
    pub root: PathBuf,
    /// The command run after a batch that changed anything: program, then its arguments, run
    /// without a shell (`["systemctl", "reload", "nginx"]`). `None` runs nothing.
    pub reload: Option<Vec<String>>,
    /// How long the reload command may run before it is killed.
    pub reload_timeout: Duration,
}

impl ExportConfig {
    /// Exports under `root`, with no reload command.
    #[must_use]
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self {
            root: root.into(),
            reload: None,
            reload_timeout: RELOAD_TIMEOUT_DEFAULT,
        }
    }
}

/// Why the export, or one certificate's export, failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ExportError {
    /// The reload command is an empty list (an operator error).
    #[error("the export's reload command is empty: give a program, then its arguments")]
    EmptyReload,
    /// The export root or its `live/` directory could not be made, read or synced.
    #[error("export directory {path}: {source}")]
    Root {
        /// The directory.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// A certificate's key does not open with the exporter's data key.
    #[error("certificate {cert}: its key does not unseal: {source}")]
    Unseal {
        /// The certificate.
        cert: CertId,
        /// Why.
        source: SealError,
    },
    /// A certificate's directory or one of its files could not be written.
    #[error("certificate {cert}: writing {path}: {source}")]
    Write {
        /// The certificate.
        cert: CertId,
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// A certificate's directory exists but is not the export's (no marker file): it is left
    /// alone and the certificate is not exported.
    #[error(
        "certificate {cert}: {path} exists and was not made by certfleet's export (it has no \
         .certfleet-export); left alone"
    )]
    Foreign {
        /// The certificate.
        cert: CertId,
        /// The directory.
        path: PathBuf,
    },
    /// Two certificates map to one directory name (only through a SHA-256 collision of
    /// over-long ids): the second is not exported.
    #[error("certificates {cert} and {other} both map to {path}; {cert} is not exported")]
    Collision {
        /// The certificate not exported.
        cert: CertId,
        /// The certificate exported there.
        other: CertId,
        /// The directory.
        path: PathBuf,
    },
    /// The directory of a certificate no longer served could not be removed.
    #[error("removing {path}: {source}")]
    Remove {
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// The directory of a certificate no longer served holds files the export did not write:
    /// nothing in it is removed.
    #[error("{path} holds files certfleet's export did not write ({found}); left in place")]
    Occupied {
        /// The directory.
        path: PathBuf,
        /// The foreign entries' names.
        found: String,
    },
}

impl ExportError {
    /// The certificate the error is about, if it is about one.
    #[must_use]
    pub fn cert(&self) -> Option<&CertId> {
        match self {
            Self::Unseal { cert, .. }
            | Self::Write { cert, .. }
            | Self::Foreign { cert, .. }
            | Self::Collision { cert, .. } => Some(cert),
            Self::EmptyReload | Self::Root { .. } | Self::Remove { .. } | Self::Occupied { .. } => {
                None
            }
        }
    }
}

/// Why the reload command failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReloadError {
    /// The program could not be started.
    #[error("reload command {program} could not start: {source}")]
    Spawn {
        /// The program.
        program: String,
        /// The OS error.
        source: io::Error,
    },
    /// The program's state could not be read (it was killed and reaped).
    #[error("reload command {program} could not be waited for: {source}")]
    Wait {
        /// The program.
        program: String,
        /// The OS error.
        source: io::Error,
    },
    /// The program exited unsuccessfully.
    #[error("reload command {program} failed ({status}): {stderr}")]
    Failed {
        /// The program.
        program: String,
        /// How it exited.
        status: ExitStatus,
        /// The start of its standard error.
        stderr: String,
    },
    /// The program ran past its deadline and was killed.
    #[error("reload command {program} did not finish within {timeout_ms} ms and was killed")]
    TimedOut {
        /// The program.
        program: String,
        /// The deadline.
        timeout_ms: u128,
    },
}

/// What one [`Exporter::export`] did.
#[derive(Debug, Default)]
pub struct ExportReport {
    /// Certificates with at least one file written.
    pub written: usize,
    /// Certificates whose files already held exactly what was to be written.
    pub unchanged: usize,
    /// Directories of certificates no longer served that were removed.
    pub removed: usize,
    /// What failed: certificates not (fully) exported, directories not removed.
    pub failed: Vec<ExportError>,
    /// The reload command's outcome, if it ran: after a batch that wrote or removed anything,
    /// or at the export after one where it failed.
    pub reloaded: Option<Result<(), ReloadError>>,
}

impl ExportReport {
    /// Whether anything on disk changed.
    #[must_use]
    pub fn changed(&self) -> bool {
        self.written > 0 || self.removed > 0
    }
}

/// Running totals of an [`Exporter`], readable while [`Exporter::follow`] owns it.
#[derive(Debug, Default)]
pub struct ExportCounters {
    exports: AtomicU64,
    written: AtomicU64,
    removed: AtomicU64,
    failed: AtomicU64,
    reloads: AtomicU64,
    reloads_failed: AtomicU64,
}

impl ExportCounters {
    /// Exports run (batches).
    #[must_use]
    pub fn exports(&self) -> u64 {
        self.exports.load(Ordering::Relaxed)
    }

    /// Certificates written.
    #[must_use]
    pub fn written(&self) -> u64 {
        self.written.load(Ordering::Relaxed)
    }

    /// Directories removed.
    #[must_use]
    pub fn removed(&self) -> u64 {
        self.removed.load(Ordering::Relaxed)
    }

    /// Failures: certificates not exported, directories not removed (each also logged).
    #[must_use]
    pub fn failed(&self) -> u64 {
        self.failed.load(Ordering::Relaxed)
    }

    /// Reload commands run.
    #[must_use]
    pub fn reloads(&self) -> u64 {
        self.reloads.load(Ordering::Relaxed)
    }

    /// Reload commands that failed to start, exited unsuccessfully or timed out.
    #[must_use]
    pub fn reloads_failed(&self) -> u64 {
        self.reloads_failed.load(Ordering::Relaxed)
    }
}

/// Writes certificate tables to disk in certbot's layout (see the module documentation).
#[derive(Debug)]
pub struct Exporter {
    live: PathBuf,
    key: Arc<DataKey>,
    reload: Option<Reload>,
    /// The export's directories under `live/`, by name, with the entry last written there;
    /// `None` when its files must be compared with the disk (found at start, or a failure).
    dirs: BTreeMap<String, Option<Arc<ServedCert>>>,
    /// A directory was created or removed in `live/` and `live/` is not synced yet.
    live_unsynced: bool,
    /// Something changed since the reload command last succeeded.
    reload_pending: bool,
    counters: Arc<ExportCounters>,
}

impl Exporter {
    /// An exporter under `config.root`, opening keys with `key`. Creates `<root>/live/` if
    /// missing and adopts the directories a previous run left there (they are compared with
    /// the first table exported, and removed if it does not hold their certificate).
    pub fn new(config: ExportConfig, key: Arc<DataKey>) -> Result<Self, ExportError> {
        let reload = match config.reload {
            None => None,
            Some(argv) => {
                let mut argv = argv.into_iter();
                let program = argv.next().ok_or(ExportError::EmptyReload)?;
                Some(Reload {
                    program,
                    args: argv.collect(),
                    timeout: config.reload_timeout,
                })
            }
        };
        let live = config.root.join("live");
        let root_error = |path: &Path| {
            let path = path.to_owned();
            move |source| ExportError::Root { path, source }
        };
        let mut builder = fs::DirBuilder::new();
        builder.recursive(true);
        #[cfg(unix)]
        std::os::unix::fs::DirBuilderExt::mode(&mut builder, DIR_MODE);
        builder.create(&live).map_err(root_error(&live))?;
        // The entry of `live/` itself must survive a crash, or directories synced into it could
        // vanish with it.
        sync_dir(&config.root).map_err(root_error(&config.root))?;
        let mut dirs = BTreeMap::new();
        for entry in fs::read_dir(&live).map_err(root_error(&live))? {
            let entry = entry.map_err(root_error(&live))?;
            // The export's names are ASCII; anything else is not its.
            let Ok(name) = entry.file_name().into_string() else {
                continue;
            };
            let path = entry.path();
            // `file_type` does not follow symbolic links: a link is never the export's.
            let is_dir = entry.file_type().is_ok_and(|t| t.is_dir());
            if !is_dir || !is_marked(&path) {
                continue;
            }
            if name.starts_with('.') {
                // A directory being created when a process stopped: it holds only a marker.
                if let Err(error) = remove_export_dir(&path) {
                    tracing::warn!(%error, "export: a staging directory stays");
                }
                continue;
            }
            dirs.insert(name, None);
        }
        Ok(Self {
            live,
            key,
            reload,
            dirs,
            live_unsynced: false,
            reload_pending: false,
            counters: Arc::default(),
        })
    }

    /// The `live/` directory the certificates' directories are in.
    #[must_use]
    pub fn live(&self) -> &Path {
        &self.live
    }

    /// The running totals, shared: they stay readable once [`Exporter::follow`] owns this.
    #[must_use]
    pub fn counters(&self) -> Arc<ExportCounters> {
        Arc::clone(&self.counters)
    }

    /// Writes `table`: every certificate whose files differ, then removes the directories of
    /// certificates it does not hold, then runs the reload command if anything changed (or if
    /// it failed last time). Blocking (file writes, syncs, the reload command): call it from a
    /// thread that may block, as [`Exporter::follow`] does.
    pub fn export(&mut self, table: &CertTable) -> ExportReport {
        let mut report = ExportReport::default();
        let mut exported: BTreeMap<String, &CertId> = BTreeMap::new();
        for served in table.iter() {
            let name = dir_name(&served.cert);
            if let Some(other) = exported.get(&name) {
                let error = ExportError::Collision {
                    cert: served.cert.clone(),
                    other: (*other).clone(),
                    path: self.live.join(&name),
                };
                tracing::warn!(cert = %served.cert, %error, "export: certificate not exported");
                report.failed.push(error);
                continue;
            }
            exported.insert(name.clone(), &served.cert);
            if let Some(Some(last)) = self.dirs.get(&name)
                && same_source(last, served)
            {
                report.unchanged += 1;
                continue;
            }
            match self.export_cert(served, &name) {
                Ok(written) => {
                    if written {
                        report.written += 1;
                    } else {
                        report.unchanged += 1;
                    }
                    self.dirs.insert(name, Some(Arc::clone(served)));
                }
                Err(error) => {
                    tracing::warn!(
                        cert = %served.cert,
                        %error,
                        "export: certificate not exported; its previous files, if any, stay"
                    );
                    // Compare with the disk next time: some of its files may have changed.
                    if let Some(last) = self.dirs.get_mut(&name) {
                        *last = None;
                    }
                    report.failed.push(error);
                }
            }
        }
        let stale: Vec<String> = self
            .dirs
            .keys()
            .filter(|name| !exported.contains_key(*name))
            .cloned()
            .collect();
        for name in stale {
            match remove_export_dir(&self.live.join(&name)) {
                Ok(removed) => {
                    if removed {
                        report.removed += 1;
                        self.live_unsynced = true;
                    }
                    self.dirs.remove(&name);
                }
                Err(error) => {
                    // Kept in `dirs`: the removal is tried again at the next export.
                    tracing::warn!(%error, "export: directory of a certificate no longer served stays");
                    report.failed.push(error);
                }
            }
        }
        if self.live_unsynced {
            match sync_dir(&self.live) {
                Ok(()) => self.live_unsynced = false,
                Err(source) => {
                    let error = ExportError::Root {
                        path: self.live.clone(),
                        source,
                    };
                    tracing::warn!(%error, "export: live directory not synced");
                    report.failed.push(error);
                }
            }
        }
        self.reload_pending |= report.changed();
        if let Some(reload) = &self.reload
            && self.reload_pending
        {
            let result = reload.run();
            self.counters.reloads.fetch_add(1, Ordering::Relaxed);
            match &result {
                Ok(()) => {
                    self.reload_pending = false;
                    tracing::debug!(program = %reload.program, "export: reload command succeeded");
                }
                Err(error) => {
                    self.counters.reloads_failed.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(%error, "export: reload command failed; retried at the next export");
                }
            }
            report.reloaded = Some(result);
        }
        let counters = &self.counters;
        counters.exports.fetch_add(1, Ordering::Relaxed);
        counters
            .written
            .fetch_add(report.written as u64, Ordering::Relaxed);
        counters
            .removed
            .fetch_add(report.removed as u64, Ordering::Relaxed);
        counters
            .failed
            .fetch_add(report.failed.len() as u64, Ordering::Relaxed);
        report
    }

    /// Exports the data plane's table whenever its served index changes, until the data plane
    /// is dropped (its index watch then closes). After a failure it retries on its own, backing
    /// off from 1 s to 5 min, since the table may not change again for weeks.
    ///
    /// Nothing is exported while the served index is 0 (nothing served yet): at start the table
    /// is empty until the first rebuild, and exporting it would remove every directory a
    /// previous run left and reload the server onto missing files.
    // madsim deprecates `spawn_blocking` (blocking is not allowed in a simulation). The export
    // writes real files and never runs under the simulation; it only has to compile there.
    #[cfg_attr(madsim, allow(deprecated))]
    pub async fn follow(self, dataplane: Arc<Dataplane>) {
        let mut served = dataplane.served_index();
        // Weak, and the strong one dropped (shadowing would keep it until the end): this task
        // must not be what keeps the data plane, and so its watch, alive.
        let weak = Arc::downgrade(&dataplane);
        drop(dataplane);
        let mut exporter = self;
        let mut retry: Option<Duration> = None;
        loop {
            let index = *served.borrow_and_update();
            if index > 0 {
                let Some(table) = weak.upgrade().map(|d| d.certs()) else {
                    return;
                };
                let joined = tokio::task::spawn_blocking(move || {
                    let report = exporter.export(&table);
                    (exporter, report)
                })
                .await;
                let report;
                (exporter, report) = match joined {
                    Ok(done) => done,
                    Err(error) => {
                        // Only a panic gets here, and the exporter went with it.
                        tracing::error!(%error, "export: stopped");
                        return;
                    }
                };
                let failed = !report.failed.is_empty() || matches!(report.reloaded, Some(Err(_)));
                retry = failed.then(|| retry.map_or(RETRY_MIN, |last| (last * 2).min(RETRY_MAX)));
                if report.changed() || failed {
                    tracing::info!(
                        index,
                        written = report.written,
                        removed = report.removed,
                        unchanged = report.unchanged,
                        failed = report.failed.len(),
                        reloaded = ?report.reloaded.as_ref().map(Result::is_ok),
                        "export: done"
                    );
                }
            }
            let open = match retry {
                None => served.changed().await.is_ok(),
                Some(pause) => tokio::select! {
                    changed = served.changed() => changed.is_ok(),
                    () = tokio::time::sleep(pause) => true,
                },
            };
            if !open {
                return;
            }
        }
    }

    /// Writes the files of one certificate that differ. `Ok(true)` if any was written.
    fn export_cert(&mut self, served: &ServedCert, name: &str) -> Result<bool, ExportError> {
        let cert = &served.cert;
        // Before touching the disk: a key that does not unseal leaves the previous files whole.
        let rendered = render(served, &self.key)?;
        let dir = self.live.join(name);
        if self.make_dir(&dir, name, cert)? {
            self.live_unsynced = true;
        }
        // The directory is the export's from here on, even if a write below fails.
        self.dirs.entry(name.to_owned()).or_insert(None);
        let write_error = |path, source| ExportError::Write {
            cert: cert.clone(),
            path,
            source,
        };
        let mut written = false;
        for (file, bytes, secret) in rendered.files() {
            if same_on_disk(&dir.join(file), bytes, secret) {
                continue;
            }
            write_atomic(&dir, file, bytes, secret)
                .map_err(|(path, source)| write_error(path, source))?;
            written = true;
        }
        if written {
            sync_dir(&dir).map_err(|source| write_error(dir.clone(), source))?;
        }
        Ok(written)
    }

    /// Makes the directory `dir` (named `name`) for `cert`, or checks that the one there is the
    /// export's. `Ok(true)` if it was made now.
    fn make_dir(&self, dir: &Path, name: &str, cert: &CertId) -> Result<bool, ExportError> {
        let write_error = |path: &Path, source| ExportError::Write {
            cert: cert.clone(),
            path: path.to_owned(),
            source,
        };
        match fs::symlink_metadata(dir) {
            Ok(meta) if meta.is_dir() && is_marked(dir) => return Ok(false),
            Ok(_) => {
                return Err(ExportError::Foreign {
                    cert: cert.clone(),
                    path: dir.to_owned(),
                });
            }
            Err(error) if error.kind() == io::ErrorKind::NotFound => {}
            Err(source) => return Err(write_error(dir, source)),
        }
        // Made whole under a staging name, then renamed: the directory appears with its marker
        // already in it, so a crash cannot leave an unmarked directory that would block this
        // certificate (as foreign) for good.
        let staging = self.live.join(format!(".{name}{STAGING_SUFFIX}"));
        if fs::symlink_metadata(&staging).is_ok() {
            // Left by a crash. Not the export's (unmarked)? Then creating it fails below.
            remove_export_dir(&staging)?;
        }
        create_dir(&staging).map_err(|source| write_error(&staging, source))?;
        let marker = format!(
            "Made by certfleet's PEM export for certificate {:?}.\n\
             The export removes this directory when the certificate is no longer served;\n\
             a file added here keeps it from doing so.\n",
            cert.as_str()
        );
        write_atomic(&staging, MARKER_FILE, marker.as_bytes(), false)
            .map_err(|(path, source)| write_error(&path, source))?;
        sync_dir(&staging).map_err(|source| write_error(&staging, source))?;
        fs::rename(&staging, dir).map_err(|source| write_error(dir, source))?;
        Ok(true)
    }
}

/// The directory name of a certificate under `live/`: the id itself if it is made only of
/// ASCII letters, digits and `-._,*:@+=` and does not start with a dot; otherwise every other
/// byte (and a leading dot) becomes `%XX`, so `/`, NUL, `.`, `..` and hidden names cannot occur.
/// The mapping is one-to-one (`%` itself is escaped). A name that would exceed
/// [`DIR_NAME_LEN_MAX`] bytes becomes its first 128 bytes, `~`, and the hex SHA-256 of the id;
/// `~` never occurs in an escaped name, so the two forms cannot meet.
#[must_use]
pub fn dir_name(cert: &CertId) -> String {
    dir_name_of(cert.as_str())
}

fn dir_name_of(id: &str) -> String {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let mut escaped = String::with_capacity(id.len());
    for (at, byte) in id.bytes().enumerate() {
        let kept = byte.is_ascii_alphanumeric()
            || matches!(byte, b'-' | b'_' | b',' | b'*' | b':' | b'@' | b'+' | b'=')
            || (byte == b'.' && at > 0);
        if kept {
            escaped.push(char::from(byte));
        } else {
            escaped.push('%');
            escaped.push(char::from(HEX[usize::from(byte >> 4)]));
            escaped.push(char::from(HEX[usize::from(byte & 0xf)]));
        }
    }
    if !escaped.is_empty() && escaped.len() <= DIR_NAME_LEN_MAX {
        return escaped;
    }
    // ASCII only, so any byte index is a character boundary; do not cut an escape in two.
    let mut cut = DIR_NAME_PREFIX_LEN.min(escaped.len());
    if let Some(percent) = escaped[..cut].rfind('%')
        && percent + 3 > cut
    {
        cut = percent;
    }
    let digest = Sha256::digest(id.as_bytes());
    let mut name = String::with_capacity(cut + 1 + 64);
    name.push_str(&escaped[..cut]);
    name.push('~');
    for byte in digest {
        name.push(char::from(HEX[usize::from(byte >> 4)].to_ascii_lowercase()));
        name.push(char::from(
            HEX[usize::from(byte & 0xf)].to_ascii_lowercase(),
        ));
    }
    name
}

/// The reload command, checked.
#[derive(Clone, Debug)]
struct Reload {
    program: String,
    args: Vec<String>,
    timeout: Duration,
}

impl Reload {
    /// Runs the command without a shell, standard input and output closed, standard error
    /// captured; kills it at the deadline. Blocking.
    fn run(&self) -> Result<(), ReloadError> {
        let program = || self.program.clone();
        let mut child = Command::new(&self.program)
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|source| ReloadError::Spawn {
                program: program(),
                source,
            })?;
        let stderr = child.stderr.take().and_then(drain_stderr);
        let deadline = Instant::now() + self.timeout;
        // Polled: std has no wait with a timeout. A reload runs once per batch; a few wakeups
        // of a blocking thread cost nothing next to it.
        let mut pause = Duration::from_millis(5);
        let status = loop {
            match child.try_wait() {
                Ok(Some(status)) => break status,
                Ok(None) => {}
                Err(source) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(ReloadError::Wait {
                        program: program(),
                        source,
                    });
                }
            }
            let now = Instant::now();
            if now >= deadline {
                // Kills the direct child only; what it started is its own business, as with any
                // supervisor that does not own a process group.
                let _ = child.kill();
                let _ = child.wait();
                return Err(ReloadError::TimedOut {
                    program: program(),
                    timeout_ms: self.timeout.as_millis(),
                });
            }
            std::thread::sleep(pause.min(deadline - now));
            pause = (pause * 2).min(Duration::from_millis(100));
        };
        if status.success() {
            return Ok(());
        }
        let stderr = stderr
            .and_then(|kept| kept.recv_timeout(RELOAD_STDERR_GRACE).ok())
            .unwrap_or_default();
        Err(ReloadError::Failed {
            program: program(),
            status,
            stderr: String::from_utf8_lossy(&stderr).trim().to_owned(),
        })
    }
}

/// Reads a child's standard error to its end on a thread, keeping the start, so that the child
/// never blocks on a full pipe; the kept bytes arrive on the channel when the pipe closes. A
/// daemon the child started may hold the pipe open for its whole life, so the caller waits for
/// them only briefly, and the thread ends whenever the pipe does. `None` if no thread could be
/// started: the pipe is then closed, and a child that writes to it fails, which is reported.
fn drain_stderr(mut pipe: ChildStderr) -> Option<mpsc::Receiver<Vec<u8>>> {
    let (sender, receiver) = mpsc::channel();
    std::thread::Builder::new()
        .name("export-reload-stderr".to_owned())
        .spawn(move || {
            let mut kept = Vec::new();
            let mut buffer = [0u8; 1024];
            loop {
                match pipe.read(&mut buffer) {
                    Ok(0) => break,
                    Ok(read) => {
                        let room = RELOAD_STDERR_KEPT_BYTES_MAX - kept.len();
                        kept.extend_from_slice(&buffer[..read.min(room)]);
                    }
                    Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                    Err(_) => break,
                }
            }
            // The caller may have stopped waiting; then nobody needs these bytes.
            let _ = sender.send(kept);
        })
        .ok()?;
    Some(receiver)
}

/// The four files of a certificate.
struct Rendered {
    cert: Vec<u8>,
    chain: Vec<u8>,
    fullchain: Vec<u8>,
    privkey: Zeroizing<Vec<u8>>,
}

impl Rendered {
    /// File name, content, and whether it is secret; in the order they are written.
    fn files(&self) -> [(&'static str, &[u8], bool); 4] {
        [
            (CERT_FILE, &self.cert, false),
            (CHAIN_FILE, &self.chain, false),
            (FULLCHAIN_FILE, &self.fullchain, false),
            (PRIVKEY_FILE, &self.privkey, true),
        ]
    }
}

fn render(served: &ServedCert, key: &DataKey) -> Result<Rendered, ExportError> {
    let pkcs8 = key
        .open(served.sealed_key())
        .map_err(|source| ExportError::Unseal {
            cert: served.cert.clone(),
            source,
        })?;
    let cert = pem_lf("CERTIFICATE", served.leaf_der().to_vec()).into_bytes();
    let mut chain = Vec::new();
    for der in served.chain_der() {
        chain.extend_from_slice(pem_lf("CERTIFICATE", der.to_vec()).as_bytes());
    }
    // Byte for byte `cert.pem` then `chain.pem`, as certbot's `fullchain.pem` is.
    let mut fullchain = Vec::with_capacity(cert.len() + chain.len());
    fullchain.extend_from_slice(&cert);
    fullchain.extend_from_slice(&chain);
    let key_pem = pem::Pem::new("PRIVATE KEY", pkcs8.to_vec());
    let privkey = Zeroizing::new(
        pem::encode_config(&key_pem, lf())
            // Same allocation, not a copy.
            .into_bytes(),
    );
    // The copy the `Pem` holds. (Best effort: `pem`'s own intermediate buffers are not zeroized.)
    drop(Zeroizing::new(key_pem.into_contents()));
    Ok(Rendered {
        cert,
        chain,
        fullchain,
        privkey,
    })
}

fn lf() -> pem::EncodeConfig {
    // `pem`'s default is CRLF; certbot, OpenSSL and the files operators diff against use LF.
    pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF)
}

fn pem_lf(tag: &str, der: Vec<u8>) -> String {
    pem::encode_config(&pem::Pem::new(tag, der), lf())
}

/// Whether the exported served entries `a` and `b` produce the same files.
fn same_source(a: &Arc<ServedCert>, b: &Arc<ServedCert>) -> bool {
    Arc::ptr_eq(a, b)
        || (a.sealed_key() == b.sealed_key()
            && a.leaf_der() == b.leaf_der()
            && a.chain_der() == b.chain_der())
}

/// Whether `path` is a regular file holding exactly `expected` (and, if `secret`, readable by
/// its owner only). Any doubt (unreadable, a link, another type) means "no": it is rewritten.
fn same_on_disk(path: &Path, expected: &[u8], secret: bool) -> bool {
    let Ok(meta) = fs::symlink_metadata(path) else {
        return false;
    };
    if !meta.is_file() || meta.len() != expected.len() as u64 {
        return false;
    }
    #[cfg(unix)]
    if secret {
        use std::os::unix::fs::PermissionsExt;
        if meta.permissions().mode() & 0o077 != 0 {
            return false;
        }
    }
    #[cfg(not(unix))]
    let _ = secret;
    // Zeroizing: when `expected` is the key, so is what is read.
    fs::read(path).is_ok_and(|found| *Zeroizing::new(found) == expected)
}

/// Replaces `dir/name` with `bytes` atomically and durably (the directory itself is synced by
/// the caller, once for all its files). On failure, the path that failed and why.
fn write_atomic(
    dir: &Path,
    name: &str,
    bytes: &[u8],
    secret: bool,
) -> Result<(), (PathBuf, io::Error)> {
    let temporary = dir.join(temporary_name(name));
    let mut file = match create_new(&temporary, secret) {
        Err(error) if error.kind() == io::ErrorKind::AlreadyExists => {
            // Left by a crash mid-write: its content is unknown and its mode may not be ours,
            // so it is replaced, never reused.
            fs::remove_file(&temporary).map_err(|error| (temporary.clone(), error))?;
            create_new(&temporary, secret)
        }
        other => other,
    }
    .map_err(|error| (temporary.clone(), error))?;
    let synced = file.write_all(bytes).and_then(|()| file.sync_all());
    drop(file);
    let target = dir.join(name);
    if let Err(error) = synced.and_then(|()| fs::rename(&temporary, &target)) {
        // Best effort: a leftover is replaced at the next write anyway.
        let _ = fs::remove_file(&temporary);
        return Err((target, error));
    }
    Ok(())
}

fn temporary_name(name: &str) -> String {
    format!(".{name}.tmp")
}

/// Creates a new file, never opening an existing one: the mode applies from the first byte, and
/// a file planted at the temporary name cannot lend its own mode to the key.
fn create_new(path: &Path, secret: bool) -> io::Result<File> {
    let mut options = OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(
        &mut options,
        if secret {
            SECRET_FILE_MODE
        } else {
            PUBLIC_FILE_MODE
        },
    );
    #[cfg(not(unix))]
    let _ = secret;
    options.open(path)
}

fn create_dir(path: &Path) -> io::Result<()> {
    let mut builder = fs::DirBuilder::new();
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, DIR_MODE);
    builder.create(path)
}

/// Makes the directory's entries (creations, renames, removals) durable.
#[cfg(unix)]
fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Directories cannot be opened as files elsewhere; renames there are as durable as the
/// platform makes them.
#[cfg(not(unix))]
fn sync_dir(_dir: &Path) -> io::Result<()> {
    Ok(())
}

fn is_marked(dir: &Path) -> bool {
    fs::symlink_metadata(dir.join(MARKER_FILE)).is_ok_and(|meta| meta.is_file())
}

fn is_own_file(name: &OsStr) -> bool {
    OWN_FILES
        .iter()
        .any(|own| name == *own || name == OsStr::new(&temporary_name(own)))
}

/// Removes an export directory: `Ok(true)` if removed, `Ok(false)` if there is nothing of the
/// export's to remove (gone, or not marked). A directory holding anything the export did not
/// write is left whole, and reported.
fn remove_export_dir(dir: &Path) -> Result<bool, ExportError> {
    let remove_error = |path: &Path, source| ExportError::Remove {
        path: path.to_owned(),
        source,
    };
    match fs::symlink_metadata(dir) {
        Ok(meta) if meta.is_dir() && is_marked(dir) => {}
        Ok(_) => return Ok(false),
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(source) => return Err(remove_error(dir, source)),
    }
    let mut foreign = Vec::new();
    for entry in fs::read_dir(dir).map_err(|source| remove_error(dir, source))? {
        let name = entry
            .map_err(|source| remove_error(dir, source))?
            .file_name();
        if !is_own_file(&name) {
            foreign.push(name.to_string_lossy().into_owned());
        }
    }
    if !foreign.is_empty() {
        return Err(ExportError::Occupied {
            path: dir.to_owned(),
            found: foreign.join(", "),
        });
    }
    for own in OWN_FILES {
        for name in [temporary_name(own), own.to_owned()] {
            let path = dir.join(name);
            match fs::remove_file(&path) {
                Ok(()) => {}
                Err(error) if error.kind() == io::ErrorKind::NotFound => {}
                Err(source) => return Err(remove_error(&path, source)),
            }
        }
    }
    fs::remove_dir(dir).map_err(|source| remove_error(dir, source))?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    use certfleet_core::UnixMillis;
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

    use super::*;
    use crate::dataplane::ChallengeKeys;
    use crate::seal::Nonces;

    fn data_key(id: u8) -> Arc<DataKey> {
        Arc::new(DataKey::new([id; 4], &[id; 32]))
    }

    /// A certificate `id` for `names`, signed by an intermediate signed by a root; the chain is
    /// [intermediate, root]. Its key is sealed with `key`.
    fn served(id: &str, names: &[&str], key: &DataKey) -> Arc<ServedCert> {
        let root_key = KeyPair::generate().unwrap();
        let mut root_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        root_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let root = root_params.self_signed(&root_key).unwrap();
        let root = (root, Issuer::new(root_params, root_key));
        let middle_key = KeyPair::generate().unwrap();
        let mut middle_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        middle_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let middle = middle_params.signed_by(&middle_key, &root.1).unwrap();
        let middle_issuer = Issuer::new(middle_params, middle_key);
        let leaf_key = KeyPair::generate().unwrap();
        let leaf =
            CertificateParams::new(names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>())
                .unwrap()
                .signed_by(&leaf_key, &middle_issuer)
                .unwrap();
        let sealed = key.seal(&leaf_key.serialize_der(), Nonces::new(7).next());
        Arc::new(
            super::super::build_served(
                &CertId::parse(id).unwrap(),
                leaf.der().to_vec(),
                Some(vec![middle.der().to_vec(), root.0.der().to_vec()]),
                sealed,
                UnixMillis(1),
                key,
            )
            .unwrap(),
        )
    }

    fn table(certs: &[&Arc<ServedCert>]) -> CertTable {
        let mut table = CertTable::default();
        for cert in certs {
            table.insert(Arc::clone(cert));
        }
        table
    }

    fn exporter(root: &Path, reload: Option<Vec<String>>) -> Exporter {
        let config = ExportConfig {
            reload,
            ..ExportConfig::new(root)
        };
        Exporter::new(config, data_key(1)).unwrap()
    }

    fn sh(script: String) -> Option<Vec<String>> {
        Some(vec!["sh".to_owned(), "-c".to_owned(), script])
    }

    fn inodes(dir: &Path) -> Vec<u64> {
        OWN_FILES[..4]
            .iter()
            .map(|f| fs::metadata(dir.join(f)).unwrap().ino())
            .collect()
    }

    /// `privkey_pem` is one PKCS#8 `PRIVATE KEY` whose public half is the leaf's.
    fn assert_key_matches(privkey_pem: &[u8], leaf: &[u8]) {
        let key_pem = pem::parse(privkey_pem).unwrap();
        assert_eq!(key_pem.tag(), "PRIVATE KEY");
        let der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key_pem.contents()));
        let signing = rustls::crypto::ring::sign::any_supported_type(&der).unwrap();
        rustls::sign::CertifiedKey::new(vec![CertificateDer::from(leaf.to_vec())], signing)
            .keys_match()
            .unwrap();
    }

    fn mode(path: &Path) -> u32 {
        fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    fn entries(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn the_four_files_round_trip_and_the_key_matches_the_leaf() {
        let tmp = tempfile::tempdir().unwrap();
        let key = data_key(1);
        let a = served("www.example.com", &["www.example.com"], &key);
        let mut exporter = exporter(tmp.path(), None);
        let report = exporter.export(&table(&[&a]));
        assert_eq!(
            (report.written, report.unchanged, report.removed),
            (1, 0, 0)
        );
        assert!(report.failed.is_empty(), "{:?}", report.failed);
        assert!(report.reloaded.is_none());

        let dir = tmp.path().join("live/www.example.com");
        let read = |f: &str| fs::read(dir.join(f)).unwrap();
        let (cert, chain, fullchain, privkey) = (
            read(CERT_FILE),
            read(CHAIN_FILE),
            read(FULLCHAIN_FILE),
            read(PRIVKEY_FILE),
        );
        let cert_pems = pem::parse_many(&cert).unwrap();
        assert_eq!(cert_pems.len(), 1);
        assert_eq!(cert_pems[0].tag(), "CERTIFICATE");
        assert_eq!(cert_pems[0].contents(), a.leaf_der());
        let chain_pems = pem::parse_many(&chain).unwrap();
        let chain_ders: Vec<&[u8]> = chain_pems.iter().map(pem::Pem::contents).collect();
        let expected: Vec<&[u8]> = a.chain_der().iter().map(|d| d.as_ref()).collect();
        assert_eq!(chain_ders, expected);
        assert_eq!(fullchain, [cert.as_slice(), chain.as_slice()].concat());
        for file in [&cert, &chain, &fullchain, &privkey] {
            assert!(!file.contains(&b'\r'), "LF line endings only");
        }

        assert_key_matches(&privkey, a.leaf_der());

        assert_eq!(mode(&dir.join(PRIVKEY_FILE)), 0o600);
        assert_eq!(mode(&dir), 0o700);
        assert!(dir.join(MARKER_FILE).is_file());
        // No temporary or staging leftovers.
        assert_eq!(
            entries(&dir),
            [
                MARKER_FILE,
                CERT_FILE,
                CHAIN_FILE,
                FULLCHAIN_FILE,
                PRIVKEY_FILE
            ]
        );
        assert_eq!(entries(&tmp.path().join("live")), ["www.example.com"]);
    }

    #[test]
    fn a_second_export_of_the_same_table_writes_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        let key = data_key(1);
        let a = served("a.example.com", &["a.example.com"], &key);
        let b = served("b.example.com", &["b.example.com"], &key);
        let mut exporter = exporter(tmp.path(), None);
        assert_eq!(exporter.export(&table(&[&a, &b])).written, 2);
        let before = inodes(&tmp.path().join("live/a.example.com"));

        let report = exporter.export(&table(&[&a, &b]));
        assert_eq!(
            (report.written, report.unchanged, report.removed),
            (0, 2, 0)
        );
        assert_eq!(inodes(&tmp.path().join("live/a.example.com")), before);
        assert_eq!(exporter.counters().exports(), 2);
        assert_eq!(exporter.counters().written(), 2);
    }

    #[test]
    fn a_restarted_exporter_compares_with_the_disk_and_rewrites_only_what_differs() {
        let tmp = tempfile::tempdir().unwrap();
        let key = data_key(1);
        let a = served("a.example.com", &["a.example.com"], &key);
        exporter(tmp.path(), None).export(&table(&[&a]));
        let dir = tmp.path().join("live/a.example.com");
        let before = inodes(&dir);

        let report = exporter(tmp.path(), None).export(&table(&[&a]));
        assert_eq!((report.written, report.unchanged), (0, 1));
        assert_eq!(inodes(&dir), before);

        // Damaged chain, and a key someone made world-readable: both rewritten, nothing else.
        fs::write(dir.join(CHAIN_FILE), b"truncated").unwrap();
        fs::set_permissions(dir.join(PRIVKEY_FILE), fs::Permissions::from_mode(0o644)).unwrap();
        let damaged = inodes(&dir);
        let report = exporter(tmp.path(), None).export(&table(&[&a]));
        assert_eq!((report.written, report.unchanged), (1, 0));
        let after = inodes(&dir);
        assert_eq!((after[0], after[2]), (damaged[0], damaged[2]));
        assert_ne!(after[1], damaged[1]);
        assert_ne!(after[3], damaged[3]);
        assert_eq!(mode(&dir.join(PRIVKEY_FILE)), 0o600);
        assert_eq!(
            pem::parse_many(fs::read(dir.join(CHAIN_FILE)).unwrap())
                .unwrap()
                .len(),
            2
        );
    }

    #[test]
    fn a_changed_certificate_is_rewritten() {
        let tmp = tempfile::tempdir().unwrap();
        let key = data_key(1);
        let old = served("a.example.com", &["a.example.com"], &key);
        let new = served("a.example.com", &["a.example.com", "b.example.com"], &key);
        let mut exporter = exporter(tmp.path(), None);
        exporter.export(&table(&[&old]));

        let report = exporter.export(&table(&[&new]));
        assert_eq!((report.written, report.unchanged), (1, 0));
        let dir = tmp.path().join("live/a.example.com");
        let cert = pem::parse(fs::read(dir.join(CERT_FILE)).unwrap()).unwrap();
        assert_eq!(cert.contents(), new.leaf_der());
        assert_key_matches(&fs::read(dir.join(PRIVKEY_FILE)).unwrap(), new.leaf_der());
    }

    #[test]
    fn a_removed_certificate_loses_its_directory_but_foreign_directories_stay() {
        let tmp = tempfile::tempdir().unwrap();
        let key = data_key(1);
        let a = served("a.example.com", &["a.example.com"], &key);
        let b = served("b.example.com", &["b.example.com"], &key);
        let live = tmp.path().join("live");
        let mut exporter = exporter(tmp.path(), None);
        exporter.export(&table(&[&a, &b]));
        // An operator's own directory and file under live/, and certbot's README.
        fs::create_dir(live.join("hand-made")).unwrap();
        fs::write(live.join("hand-made/cert.pem"), b"mine").unwrap();
        fs::write(live.join("README"), b"certbot").unwrap();

        let report = exporter.export(&table(&[&a]));
        assert_eq!(
            (report.written, report.unchanged, report.removed),
            (0, 1, 1)
        );
        assert_eq!(entries(&live), ["README", "a.example.com", "hand-made"]);
        assert_eq!(fs::read(live.join("hand-made/cert.pem")).unwrap(), b"mine");

        // A restarted exporter removes what a previous run left, and still nothing else.
        let report = Exporter::new(ExportConfig::new(tmp.path()), data_key(1))
            .unwrap()
            .export(&CertTable::default());
        assert_eq!(report.removed, 1);
        assert_eq!(entries(&live), ["README", "hand-made"]);
    }

    #[test]
    fn a_directory_of_the_same_name_not_made_by_the_export_is_left_alone() {
        let tmp = tempfile::tempdir().unwrap();
        let key = data_key(1);
        let a = served("a.example.com", &["a.example.com"], &key);
        let b = served("b.example.com", &["b.example.com"], &key);
        let live = tmp.path().join("live");
        fs::create_dir_all(live.join("a.example.com")).unwrap();
        fs::write(live.join("a.example.com/privkey.pem"), b"not ours").unwrap();

        let report = exporter(tmp.path(), None).export(&table(&[&a, &b]));
        assert_eq!(report.written, 1);
        assert!(
            matches!(&report.failed[..], [ExportError::Foreign { cert, .. }] if cert.as_str() == "a.example.com"),
            "{:?}",
            report.failed
        );
        assert_eq!(entries(&live.join("a.example.com")), [PRIVKEY_FILE]);
        assert_eq!(
            fs::read(live.join("a.example.com/privkey.pem")).unwrap(),
            b"not ours"
        );
    }

    #[test]
    fn a_directory_holding_a_foreign_file_is_not_removed() {
        let tmp = tempfile::tempdir().unwrap();
        let key = data_key(1);
        let a = served("a.example.com", &["a.example.com"], &key);
        let mut exporter = exporter(tmp.path(), None);
        exporter.export(&table(&[&a]));
        let dir = tmp.path().join("live/a.example.com");
        fs::write(dir.join("ocsp.der"), b"someone's").unwrap();

        let report = exporter.export(&CertTable::default());
        assert_eq!(report.removed, 0);
        assert!(
            matches!(&report.failed[..], [ExportError::Occupied { found, .. }] if found == "ocsp.der"),
            "{:?}",
            report.failed
        );
        assert!(dir.join(PRIVKEY_FILE).is_file() && dir.join(MARKER_FILE).is_file());
        // Retried at every export until the operator clears it.
        fs::remove_file(dir.join("ocsp.der")).unwrap();
        assert_eq!(exporter.export(&CertTable::default()).removed, 1);
        assert!(!dir.exists());
    }

    #[test]
    fn a_hostile_id_cannot_escape_the_root() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("root");
        let key = data_key(1);
        let long_with_slashes = format!("{}/../../x", "a/".repeat(150));
        let ids = [
            "..",
            ".",
            "../escape",
            "../../../../../../tmp/certfleet-escape",
            "/etc/certfleet-escape",
            "a/../../b",
            ".hidden",
            "nul\0byte",
            "/",
            "%2F",
            "~",
            long_with_slashes.as_str(),
        ];
        let certs: Vec<Arc<ServedCert>> = ids
            .iter()
            .map(|id| served(id, &["a.example.com"], &key))
            .collect();
        let mut exporter = exporter(&root, None);
        let report = exporter.export(&table(&certs.iter().collect::<Vec<_>>()));
        assert!(report.failed.is_empty(), "{:?}", report.failed);
        assert_eq!(report.written, ids.len());

        assert_eq!(entries(tmp.path()), ["root"]);
        assert_eq!(entries(&root), ["live"]);
        let mut expected: Vec<String> = ids.iter().map(|id| dir_name_of(id)).collect();
        expected.sort();
        assert_eq!(entries(&root.join("live")), expected);
        for name in &expected {
            assert!(
                !name.starts_with('.') && !name.contains(['/', '\0']),
                "{name:?}"
            );
            assert!(name.len() <= DIR_NAME_LEN_MAX, "{name:?}");
            assert_eq!(entries(&root.join("live").join(name)).len(), 5, "{name:?}");
        }
        assert!(!Path::new("/tmp/certfleet-escape").exists());
        assert!(!Path::new("/etc/certfleet-escape").exists());
    }

    #[test]
    fn directory_names_are_the_id_when_safe_and_escaped_one_to_one_otherwise() {
        assert_eq!(dir_name_of("www.example.com"), "www.example.com");
        assert_eq!(dir_name_of("*.example.com"), "*.example.com");
        assert_eq!(
            dir_name_of("a.example.com,b.example.com"),
            "a.example.com,b.example.com"
        );
        assert_eq!(dir_name_of("2001:db8::1"), "2001:db8::1");
        assert_eq!(dir_name_of(".."), "%2E.");
        assert_eq!(dir_name_of("."), "%2E");
        assert_eq!(dir_name_of("a/b"), "a%2Fb");
        assert_eq!(dir_name_of("%2F"), "%252F");
        assert_eq!(dir_name_of("a\0"), "a%00");
        assert_eq!(dir_name_of("é"), "%C3%A9");

        let long = "x".repeat(DIR_NAME_LEN_MAX + 1);
        let name = dir_name_of(&long);
        assert!(name.starts_with(&"x".repeat(DIR_NAME_PREFIX_LEN)), "{name}");
        assert_eq!(name.len(), DIR_NAME_PREFIX_LEN + 1 + 64);
        assert_eq!(dir_name_of(&long), name, "stable");
        assert_ne!(dir_name_of(&"x".repeat(DIR_NAME_LEN_MAX + 2)), name);
        assert_eq!(
            dir_name_of(&"x".repeat(DIR_NAME_LEN_MAX)).len(),
            DIR_NAME_LEN_MAX
        );
        // An escape straddling the cut is not split.
        let straddling = format!(
            "{}/{}",
            "x".repeat(DIR_NAME_PREFIX_LEN - 2),
            "y".repeat(200)
        );
        let name = dir_name_of(&straddling);
        assert_eq!(
            name.split_once('~').unwrap().0,
            "x".repeat(DIR_NAME_PREFIX_LEN - 2)
        );
    }

    #[test]
    fn a_key_that_does_not_unseal_fails_that_certificate_only() {
        let tmp = tempfile::tempdir().unwrap();
        let good = served("good.example.com", &["good.example.com"], &data_key(1));
        let other = served("other.example.com", &["other.example.com"], &data_key(2));
        let mut exporter = exporter(tmp.path(), sh("true".to_owned()));
        let report = exporter.export(&table(&[&good, &other]));
        assert_eq!(report.written, 1);
        assert!(
            matches!(&report.failed[..], [ExportError::Unseal { cert, .. }] if cert.as_str() == "other.example.com"),
            "{:?}",
            report.failed
        );
        assert_eq!(entries(&tmp.path().join("live")), ["good.example.com"]);
        assert!(matches!(report.reloaded, Some(Ok(()))));
        assert_eq!(exporter.counters().failed(), 1);
        // Retried (and failing again) at the next export, while the good one is left alone.
        let report = exporter.export(&table(&[&good, &other]));
        assert_eq!(
            (report.written, report.unchanged, report.failed.len()),
            (0, 1, 1)
        );
    }

    #[test]
    fn a_write_that_fails_is_reported_for_that_certificate_and_the_others_are_exported() {
        let tmp = tempfile::tempdir().unwrap();
        let key = data_key(1);
        let a = served("a.example.com", &["a.example.com"], &key);
        let b = served("b.example.com", &["b.example.com"], &key);
        let mut exporter = exporter(tmp.path(), None);
        exporter.export(&table(&[&a, &b]));
        // A non-empty directory where a's chain.pem goes: a rename cannot replace it.
        let blocked = tmp.path().join("live/a.example.com/chain.pem");
        fs::remove_file(&blocked).unwrap();
        fs::create_dir(&blocked).unwrap();
        fs::write(blocked.join("x"), b"x").unwrap();

        let a2 = served("a.example.com", &["a.example.com"], &key);
        let b2 = served("b.example.com", &["b.example.com"], &key);
        let report = exporter.export(&table(&[&a2, &b2]));
        assert_eq!(report.written, 1);
        match &report.failed[..] {
            [ExportError::Write { cert, path, .. }] => {
                assert_eq!(cert.as_str(), "a.example.com");
                assert_eq!(path, &blocked);
            }
            other => panic!("{other:?}"),
        }
        let b_cert = fs::read(tmp.path().join("live/b.example.com/cert.pem")).unwrap();
        assert_eq!(pem::parse(b_cert).unwrap().contents(), b2.leaf_der());
        // No temporary file left behind by the failed write.
        assert!(
            !tmp.path()
                .join("live/a.example.com/.chain.pem.tmp")
                .exists()
        );
    }

    #[test]
    fn a_reload_runs_once_per_batch_that_changed_something() {
        let tmp = tempfile::tempdir().unwrap();
        let log = tmp.path().join("reloads");
        let root = tmp.path().join("root");
        let key = data_key(1);
        let a = served("a.example.com", &["a.example.com"], &key);
        let b = served("b.example.com", &["b.example.com"], &key);
        let mut exporter = exporter(&root, sh(format!("echo reload >> '{}'", log.display())));
        let reloads = || fs::read_to_string(&log).unwrap_or_default().lines().count();

        let report = exporter.export(&table(&[&a, &b]));
        assert!(matches!(report.reloaded, Some(Ok(()))), "{report:?}");
        assert_eq!(reloads(), 1, "two certificates written, one reload");
        assert!(exporter.export(&table(&[&a, &b])).reloaded.is_none());
        assert_eq!(reloads(), 1, "nothing changed, no reload");
        let a2 = served("a.example.com", &["a.example.com"], &key);
        exporter.export(&table(&[&a2, &b]));
        assert_eq!(reloads(), 2, "a changed");
        exporter.export(&table(&[&a2]));
        assert_eq!(reloads(), 3, "b removed");
        exporter.export(&table(&[&a2]));
        assert_eq!(reloads(), 3);
        assert_eq!(
            (
                exporter.counters().reloads(),
                exporter.counters().reloads_failed()
            ),
            (3, 0)
        );
    }

    #[test]
    fn a_failing_reload_is_counted_and_retried_and_the_export_still_succeeds() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("root");
        let a = served("a.example.com", &["a.example.com"], &data_key(1));
        let mut exporter = exporter(&root, sh("echo 'bad config' >&2; exit 3".to_owned()));
        let report = exporter.export(&table(&[&a]));
        assert_eq!(report.written, 1);
        assert!(report.failed.is_empty());
        match &report.reloaded {
            Some(Err(ReloadError::Failed { status, stderr, .. })) => {
                assert_eq!(status.code(), Some(3));
                assert_eq!(stderr, "bad config");
            }
            other => panic!("{other:?}"),
        }
        assert!(root.join("live/a.example.com/privkey.pem").is_file());
        assert_eq!(exporter.counters().reloads_failed(), 1);
        // The files changed but the server never loaded them: the next export reloads again.
        let report = exporter.export(&table(&[&a]));
        assert_eq!(report.written, 0);
        assert!(matches!(report.reloaded, Some(Err(_))));
        assert_eq!(exporter.counters().reloads_failed(), 2);
    }

    #[test]
    fn a_reload_that_cannot_start_or_hangs_is_reported() {
        let tmp = tempfile::tempdir().unwrap();
        let a = served("a.example.com", &["a.example.com"], &data_key(1));
        let missing = vec!["/nonexistent/certfleet-reload".to_owned()];
        let report = exporter(&tmp.path().join("one"), Some(missing)).export(&table(&[&a]));
        assert!(
            matches!(report.reloaded, Some(Err(ReloadError::Spawn { .. }))),
            "{report:?}"
        );

        let config = ExportConfig {
            reload: Some(vec!["sleep".to_owned(), "30".to_owned()]),
            reload_timeout: Duration::from_millis(200),
            ..ExportConfig::new(tmp.path().join("two"))
        };
        let started = Instant::now();
        let report = Exporter::new(config, data_key(1))
            .unwrap()
            .export(&table(&[&a]));
        assert!(
            matches!(
                report.reloaded,
                Some(Err(ReloadError::TimedOut {
                    timeout_ms: 200,
                    ..
                }))
            ),
            "{report:?}"
        );
        assert!(started.elapsed() < Duration::from_secs(10));
        assert_eq!(report.written, 1);
    }

    #[test]
    fn a_reload_that_leaves_a_daemon_behind_succeeds_without_waiting_for_it() {
        let tmp = tempfile::tempdir().unwrap();
        let a = served("a.example.com", &["a.example.com"], &data_key(1));
        // The background `sleep` inherits standard error and holds it open after `sh` exits.
        let mut exporter = exporter(tmp.path(), sh("sleep 3 & exit 0".to_owned()));
        let started = Instant::now();
        let report = exporter.export(&table(&[&a]));
        assert!(matches!(report.reloaded, Some(Ok(()))), "{report:?}");
        assert!(started.elapsed() < Duration::from_secs(2));
    }

    #[test]
    fn an_empty_reload_command_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let config = ExportConfig {
            reload: Some(vec![]),
            ..ExportConfig::new(tmp.path())
        };
        let result = Exporter::new(config, data_key(1));
        assert!(
            matches!(result, Err(ExportError::EmptyReload)),
            "{result:?}"
        );
    }

    async fn eventually(done: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !done() {
            assert!(Instant::now() < deadline, "timed out");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    #[tokio::test]
    async fn follow_exports_after_each_served_change_and_ends_with_the_data_plane() {
        let tmp = tempfile::tempdir().unwrap();
        let live = tmp.path().join("live");
        let key = data_key(1);
        let a = served("a.example.com", &["a.example.com"], &key);
        let b = served("b.example.com", &["b.example.com"], &key);
        // A directory from a previous run: kept while nothing is served yet.
        exporter(tmp.path(), None).export(&table(&[&b]));
        let dataplane = Arc::new(Dataplane::new(ChallengeKeys::Generate));
        dataplane.certs.store(Arc::new(table(&[&a])));
        let exporter = exporter(tmp.path(), None);
        let counters = exporter.counters();
        let task = tokio::spawn(exporter.follow(Arc::clone(&dataplane)));

        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(counters.exports(), 0, "index 0: nothing served yet");
        assert_eq!(entries(&live), ["b.example.com"]);

        dataplane.served_index.send_replace(1);
        // The counters move once a whole export is done; the directories appear earlier.
        eventually(|| counters.exports() == 1).await;
        assert_eq!(
            entries(&live),
            ["a.example.com"],
            "b, from the previous run, removed"
        );

        dataplane.certs.store(Arc::new(table(&[&a, &b])));
        dataplane.served_index.send_replace(2);
        eventually(|| counters.exports() == 2).await;
        assert_eq!(entries(&live), ["a.example.com", "b.example.com"]);
        assert_eq!(counters.written(), 2);

        drop(dataplane);
        tokio::time::timeout(Duration::from_secs(10), task)
            .await
            .expect("follow ends once the data plane is gone")
            .unwrap();
    }
}
