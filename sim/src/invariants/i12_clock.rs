//! I12: committed time never goes backwards (`apply` clamps the state clock), and no decision
//! uses a clock skewed beyond the configured bound: a command's stamp (its leader's clock) is
//! never ahead of true time by more than the bound. (It may be far behind it: a commit that is
//! retried keeps its first stamp.)

use certfleet_core::UnixMillis;

use crate::journal::Applied;

/// Checks the stamp of an entry the first time any node applies it.
pub fn on_first_apply(applied: &Applied<'_>, skew_ms_max: u64, violations: &mut Vec<String>) {
    if applied.command.at.0 > applied.now.0 + skew_ms_max {
        violations.push(format!(
            "I12 clock: index {} is stamped {} but true time is {} (skew bound {skew_ms_max} ms)",
            applied.index, applied.command.at, applied.now
        ));
    }
}

/// Checks that one node lifetime's state clock did not go back; `last` is what it applied
/// before.
pub fn on_apply(last: &mut UnixMillis, applied: &Applied<'_>, violations: &mut Vec<String>) {
    let clock = applied.state.clock();
    if clock < *last {
        violations.push(format!(
            "I12 clock: n{} state clock went back from {last} to {clock}",
            applied.lifetime.0
        ));
    }
    *last = clock;
}
