//! The one failure path of the data plane: which instances a connection or request tries, in
//! what order, and what a failed connect counts, logs and does to its instance.

use std::fmt::Display;
use std::sync::Arc;

use tracing::{debug, warn};

use super::error::ProxyError;
use super::judge::{judge, Outcome};
use super::metrics::ListenerMetrics;
use crate::addr::Addr;
use crate::clock;
use crate::snapshot::{InFlight, InstanceState, Retries, ServiceCell};
use crate::throttle::Throttle;

/// The instances one connection or request may try: the picked one, then up to `retries`
/// others, each at most once, spread so a dead instance's share goes to every survivor.
///
/// Every outcome is recorded on the instance tried, so a blackholed instance is ejected after
/// `consecutive_failures` slow connects, however many clients they are spread over.
pub(crate) struct Attempts<'a> {
    /// The service's cell.
    cell: &'a Arc<ServiceCell>,
    /// The service, for errors and logs.
    service: &'a str,
    /// The listener's counters.
    metrics: &'a ListenerMetrics,
    /// Throttles connect-failure warnings.
    throttle: &'a Throttle,
    /// The first choice, for the retry order.
    pick: crate::snapshot::Pick,
    /// The instance being tried now.
    current: Arc<InstanceState>,
    /// How many instances may be tried in all.
    limit: usize,
    /// How many have failed.
    failed: usize,
    /// The others, taken from the snapshot current at the first failure.
    rest: Option<Retries>,
    /// When the current attempt began (`clock::now_ns`), until its instance's latency has
    /// been sampled from it.
    open: Option<u64>,
    /// When the pick was made: the first attempt's clock starts there, which spares a clock
    /// read per request.
    picked_at: Option<u64>,
}

/// What a listener needs to start attempts for one service.
pub(crate) struct Target<'a> {
    /// The service's cell.
    pub(crate) cell: &'a Arc<ServiceCell>,
    /// The service name.
    pub(crate) service: &'a str,
    /// Other instances tried after a failed connect.
    pub(crate) retries: u32,
    /// Throttles connect-failure warnings.
    pub(crate) throttle: &'a Throttle,
}

impl<'a> Attempts<'a> {
    /// Picks the first instance to try; `key` is the connection's or request's hash for the
    /// hash policy.
    ///
    /// # Errors
    /// [`ProxyError::NoInstances`] when the service has none usable.
    pub(crate) fn start(
        target: &Target<'a>,
        metrics: &'a ListenerMetrics,
        key: Option<u64>,
    ) -> Result<(Attempts<'a>, Addr), ProxyError> {
        let now = clock::now_ns();
        let Some(pick) = target.cell.pick(key, now) else {
            return Err(ProxyError::NoInstances {
                service: target.service.to_string(),
            });
        };
        let first = pick.addr.clone();
        Ok((
            Attempts {
                cell: target.cell,
                service: target.service,
                metrics,
                throttle: target.throttle,
                limit: pick.candidates.min(target.retries as usize + 1),
                current: target.cell.state(&pick),
                pick,
                failed: 0,
                rest: None,
                open: None,
                picked_at: Some(now),
            },
            first,
        ))
    }

    /// Counts the current attempt in flight on its instance until the guard is dropped, and
    /// starts its clock.
    pub(crate) fn begin(&mut self) -> InFlight {
        self.open = Some(self.picked_at.take().unwrap_or_else(clock::now_ns));
        self.current.begin()
    }

    /// How long the current attempt has taken, recorded as its instance's latency sample.
    fn sample(&mut self) -> u64 {
        let now = clock::now_ns();
        let took = now.saturating_sub(self.open.take().unwrap_or(now));
        self.current.latency().observe(took, now);
        took
    }

    /// Records that the connect to `addr` succeeded.
    pub(crate) fn connected(&mut self, addr: &Addr) {
        self.sample();
        judge(
            self.cell,
            self.service,
            addr,
            &self.current,
            Outcome::Connected,
        );
    }

    /// Records that `addr` answered an HTTP request with `status`.
    pub(crate) fn answered(&mut self, addr: &Addr, status: http::StatusCode) {
        let took = self.sample();
        self.cell.answered_in(took);
        let server_error = matches!(status.as_u16(), 502..=504);
        judge(
            self.cell,
            self.service,
            addr,
            &self.current,
            Outcome::Answered(server_error),
        );
    }

    /// Records that connecting to `addr` failed with `cause`, and says where to go next.
    ///
    /// # Errors
    /// [`ProxyError::Exhausted`] when no attempt is left, [`ProxyError::NoInstances`] when the
    /// service lost every instance meanwhile.
    pub(crate) fn failed(&mut self, addr: &Addr, cause: &dyn Display) -> Result<Addr, ProxyError> {
        self.metrics.connect_failures.inc();
        self.open = None;
        self.current.latency().penalize(clock::now_ns());
        if self.throttle.allow() {
            warn!(service = self.service, %addr, error = %cause, "connect to instance failed");
        } else {
            debug!(service = self.service, %addr, error = %cause, "connect to instance failed");
        }
        judge(
            self.cell,
            self.service,
            addr,
            &self.current,
            Outcome::ConnectFailed,
        );
        self.next(addr, cause)
    }

    /// Records that `addr` refused a request before processing any of it (an HTTP/2
    /// `REFUSED_STREAM`, or a GOAWAY below its stream), and says where to go next. The instance
    /// is not judged for it: it answered, and said it was busy or closing.
    ///
    /// # Errors
    /// As [`Attempts::failed`].
    pub(crate) fn refused(&mut self, addr: &Addr, cause: &dyn Display) -> Result<Addr, ProxyError> {
        debug!(service = self.service, %addr, error = %cause, "instance refused the request unprocessed; trying another");
        self.open = None;
        self.next(addr, cause)
    }

    /// The next instance after `addr` failed with `cause`, while attempts are left.
    fn next(&mut self, addr: &Addr, cause: &dyn Display) -> Result<Addr, ProxyError> {
        self.failed += 1;
        if self.failed < self.limit {
            let (cell, pick) = (self.cell, &self.pick);
            let rest = self.rest.get_or_insert_with(|| cell.retries(pick));
            if let Some((next, state)) = rest.next() {
                self.current = state;
                return Ok(next);
            }
            if rest.service_is_empty() {
                return Err(ProxyError::NoInstances {
                    service: self.service.to_string(),
                });
            }
        }
        Err(ProxyError::Exhausted {
            service: self.service.to_string(),
            attempts: self.failed,
            addr: addr.clone(),
            cause: cause.to_string(),
        })
    }
}

impl Drop for Attempts<'_> {
    /// An attempt that ended without an answer (it timed out, failed once sent, or its client
    /// went away) took at least this long: its instance's latency hears of it, so `ewma` stops
    /// sending to an instance that accepts and never answers.
    fn drop(&mut self) {
        if self.open.is_some() {
            self.sample();
        }
    }
}
