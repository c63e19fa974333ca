//! DNS-01 (RFC 8555 §8.4): the TXT record `_acme-challenge.<name>` holding
//! base64url(SHA-256(key authorization)), published through a pluggable [`Dns01Solver`] before
//! the CA is told the challenge is ready, and removed once the order has left `pending`.

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::process::Stdio;
use std::time::Duration;

/// A boxed future of a solver (the trait is used as `dyn`).
pub type SolverFuture<'a> = Pin<Box<dyn Future<Output = Result<(), HookError>> + Send + 'a>>;

/// Publishes and removes DNS-01 TXT records.
pub trait Dns01Solver: Send + Sync + 'static {
    /// Publishes TXT `value` at `name` (`_acme-challenge.example.com`); returns once the
    /// record is visible to the CA's resolvers, as far as the solver can tell.
    fn present<'a>(&'a self, name: &'a str, value: &'a str) -> SolverFuture<'a>;
    /// Removes what [`Dns01Solver::present`] published.
    fn cleanup<'a>(&'a self, name: &'a str, value: &'a str) -> SolverFuture<'a>;
}

/// Why a hook failed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum HookError {
    /// The program could not be started.
    #[error("DNS hook {program} could not start: {error}")]
    Spawn {
        /// The program.
        program: String,
        /// The OS error.
        error: String,
    },
    /// The program exited unsuccessfully.
    #[error("DNS hook {program} {step} {name} failed ({status}): {stderr}")]
    Failed {
        /// The program.
        program: String,
        /// `present` or `cleanup`.
        step: &'static str,
        /// The record name.
        name: String,
        /// The exit status.
        status: String,
        /// The start of its standard error.
        stderr: String,
    },
    /// The program ran past its deadline and was killed.
    #[error("DNS hook {program} {step} {name} did not finish within {timeout_ms} ms")]
    TimedOut {
        /// The program.
        program: String,
        /// `present` or `cleanup`.
        step: &'static str,
        /// The record name.
        name: String,
        /// The deadline.
        timeout_ms: u128,
    },
}

/// How much of a hook's standard error goes into the error.
pub const STDERR_KEPT_BYTES_MAX: usize = 2048;

/// A [`Dns01Solver`] that runs an operator's program: `program present|cleanup <name> <value>`,
/// no shell, standard input closed, standard error captured into the error, killed after a
/// deadline. Exit status 0 is success.
///
/// Runs real processes: for production and tests on real tokio, not inside the simulation.
#[derive(Clone, Debug)]
pub struct ExecHook {
    program: PathBuf,
    timeout: Duration,
}

impl ExecHook {
    /// A hook running `program`, killed after `timeout`.
    #[must_use]
    pub fn new(program: impl Into<PathBuf>, timeout: Duration) -> Self {
        Self {
            program: program.into(),
            timeout,
        }
    }

    async fn run(&self, step: &'static str, name: &str, value: &str) -> Result<(), HookError> {
        let program = self.program.display().to_string();
        let child = tokio::process::Command::new(&self.program)
            .args([step, name, value])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| HookError::Spawn {
                program: program.clone(),
                error: e.to_string(),
            })?;
        // `select!` over a sleep, as in `http.rs`; dropping the child on timeout kills it.
        let output = tokio::select! {
            biased;
            output = child.wait_with_output() => output,
            () = tokio::time::sleep(self.timeout) => {
                return Err(HookError::TimedOut {
                    program,
                    step,
                    name: name.to_owned(),
                    timeout_ms: self.timeout.as_millis(),
                });
            }
        }
        .map_err(|e| HookError::Spawn {
            program: program.clone(),
            error: e.to_string(),
        })?;
        if output.status.success() {
            return Ok(());
        }
        let kept = &output.stderr[..output.stderr.len().min(STDERR_KEPT_BYTES_MAX)];
        Err(HookError::Failed {
            program,
            step,
            name: name.to_owned(),
            status: output.status.to_string(),
            stderr: String::from_utf8_lossy(kept).trim().to_owned(),
        })
    }
}

impl Dns01Solver for ExecHook {
    fn present<'a>(&'a self, name: &'a str, value: &'a str) -> SolverFuture<'a> {
        Box::pin(self.run("present", name, value))
    }

    fn cleanup<'a>(&'a self, name: &'a str, value: &'a str) -> SolverFuture<'a> {
        Box::pin(self.run("cleanup", name, value))
    }
}

/// The TXT record name for a DNS identifier (a wildcard proves its base name, RFC 8555 §8.4).
#[must_use]
pub fn record_name(identifier: &str) -> String {
    format!(
        "_acme-challenge.{}",
        identifier.strip_prefix("*.").unwrap_or(identifier)
    )
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn script(dir: &tempfile::TempDir, body: &str) -> PathBuf {
        let path = dir.path().join("hook.sh");
        std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        path
    }

    #[tokio::test]
    async fn the_hook_gets_step_name_and_value_as_separate_arguments() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("calls");
        let hook = ExecHook::new(
            script(
                &dir,
                &format!(
                    "printf '%s|%s|%s\\n' \"$1\" \"$2\" \"$3\" >> {}",
                    log.display()
                ),
            ),
            Duration::from_secs(10),
        );
        // A value with shell metacharacters reaches the program verbatim: no shell between.
        let value = "a b;$(touch pwned)";
        hook.present("_acme-challenge.example.com", value)
            .await
            .unwrap();
        hook.cleanup("_acme-challenge.example.com", value)
            .await
            .unwrap();
        assert_eq!(
            std::fs::read_to_string(&log).unwrap(),
            format!(
                "present|_acme-challenge.example.com|{value}\ncleanup|_acme-challenge.example.com|{value}\n"
            )
        );
        assert!(!dir.path().join("pwned").exists());
    }

    #[tokio::test]
    async fn a_failing_hook_reports_its_status_and_stderr() {
        let dir = tempfile::tempdir().unwrap();
        let hook = ExecHook::new(
            script(&dir, "echo 'zone not found' >&2; exit 3"),
            Duration::from_secs(10),
        );
        let error = hook
            .present("_acme-challenge.example.com", "v")
            .await
            .unwrap_err();
        let HookError::Failed {
            step,
            stderr,
            status,
            ..
        } = &error
        else {
            panic!("{error:?}");
        };
        assert_eq!((*step, stderr.as_str()), ("present", "zone not found"));
        assert!(status.contains('3'), "{status}");
    }

    #[tokio::test]
    async fn a_hanging_hook_is_killed_at_its_deadline() {
        let dir = tempfile::tempdir().unwrap();
        let hook = ExecHook::new(script(&dir, "exec sleep 30"), Duration::from_millis(200));
        let started = std::time::Instant::now();
        let error = hook
            .cleanup("_acme-challenge.example.com", "v")
            .await
            .unwrap_err();
        assert!(
            matches!(
                error,
                HookError::TimedOut {
                    step: "cleanup",
                    ..
                }
            ),
            "{error:?}"
        );
        assert!(started.elapsed() < Duration::from_secs(10));
    }

    #[tokio::test]
    async fn a_missing_program_is_a_spawn_error() {
        let hook = ExecHook::new("/nonexistent/certfleet-hook", Duration::from_secs(1));
        let error = hook
            .present("_acme-challenge.example.com", "v")
            .await
            .unwrap_err();
        assert!(matches!(error, HookError::Spawn { .. }), "{error:?}");
    }

    #[test]
    fn a_wildcard_proves_its_base_name() {
        assert_eq!(record_name("*.example.com"), "_acme-challenge.example.com");
        assert_eq!(
            record_name("www.example.com"),
            "_acme-challenge.www.example.com"
        );
    }
}
