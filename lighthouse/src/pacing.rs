//! When a controller that writes into the cluster runs its next pass.

use std::time::Duration;

/// A controller's intervals and its failures in a row.
#[derive(Debug, Default)]
pub(crate) struct Pacing {
    failures: u32,
}

impl Pacing {
    /// The wait after a pass. After a failed write: the retry interval,
    /// doubled for each failure in a row up to the resync, so an API that
    /// lacks a CRD is not asked (and logged) every second. After a good
    /// pass: `settle` while writes are waiting to show in the source, else
    /// the resync.
    pub(crate) fn after_pass(
        &mut self,
        ok: bool,
        awaiting: bool,
        retry: Duration,
        settle: Duration,
        resync: Duration,
    ) -> Duration {
        if !ok {
            self.failures = self.failures.saturating_add(1);
            let factor = 1u32 << self.failures.min(6).saturating_sub(1);
            return (retry * factor).min(resync);
        }
        self.failures = 0;
        if awaiting { settle.min(resync) } else { resync }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_back_off_to_the_resync_and_a_good_pass_starts_over() {
        let s = Duration::from_secs;
        let mut p = Pacing::default();
        let waits: Vec<Duration> = (0..4)
            .map(|_| p.after_pass(false, false, s(1), s(5), s(6)))
            .collect();
        assert_eq!(waits, [s(1), s(2), s(4), s(6)]);
        assert_eq!(p.after_pass(true, true, s(1), s(5), s(6)), s(5));
        assert_eq!(p.after_pass(false, false, s(1), s(5), s(6)), s(1));
        assert_eq!(p.after_pass(true, false, s(1), s(5), s(6)), s(6));
    }
}
