//! Outage logging: say once that etcd is gone, remind every 30 s, and say when it is back,
//! instead of one warning per retry.

use std::time::Duration;

use tokio::time::Instant;

/// How often a continuing outage is logged again after the first warning.
const REMINDER: Duration = Duration::from_secs(30);

/// What [`Outage::failed`] logged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Logged {
    /// The outage began: one warning.
    Began,
    /// The outage goes on, and the last warning is old: one more.
    Reminded,
    /// Nothing above debug.
    Quiet,
}

/// Tracks one task's etcd outage.
#[derive(Debug, Default)]
pub(crate) struct Outage {
    /// When the outage began and when it was last logged.
    since: Option<(Instant, Instant)>,
    /// Failed attempts in this outage.
    failures: u64,
}

impl Outage {
    /// Records a failed attempt at `what`.
    pub(crate) fn failed(&mut self, what: &str, error: &str) -> Logged {
        let now = Instant::now();
        self.failures += 1;
        match &mut self.since {
            None => {
                self.since = Some((now, now));
                tracing::warn!(%error, "{what} failed; retrying in the background");
                Logged::Began
            }
            Some((began, logged)) if now.duration_since(*logged) >= REMINDER => {
                *logged = now;
                let down_for = humantime::format_duration(Duration::from_secs(
                    now.duration_since(*began).as_secs(),
                ));
                tracing::warn!(%error, failures = self.failures, %down_for, "{what} still failing");
                Logged::Reminded
            }
            Some(_) => {
                tracing::debug!(%error, "{what} failed");
                Logged::Quiet
            }
        }
    }

    /// Records a success; logs the end of an outage if there was one, and returns whether it did.
    pub(crate) fn recovered(&mut self, what: &str) -> bool {
        let ended = self.since.take().map(|(began, _)| {
            let down_for = humantime::format_duration(Duration::from_millis(
                began.elapsed().as_millis() as u64,
            ));
            tracing::info!(failures = self.failures, %down_for, "{what} works again");
        });
        self.failures = 0;
        ended.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn an_outage_logs_once_reminds_every_30_s_and_reports_its_end() {
        let mut o = Outage::default();
        assert!(!o.recovered("listing"), "nothing to recover from");
        assert_eq!(o.failed("listing", "refused"), Logged::Began);
        for _ in 0..29 {
            tokio::time::advance(Duration::from_secs(1)).await;
            assert_eq!(o.failed("listing", "refused"), Logged::Quiet);
        }
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(o.failed("listing", "refused"), Logged::Reminded);
        assert_eq!(o.failed("listing", "refused"), Logged::Quiet);
        assert!(o.recovered("listing"));
        assert_eq!(
            o.failed("listing", "refused"),
            Logged::Began,
            "a new outage"
        );
    }
}
