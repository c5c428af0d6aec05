//! What an attempt's outcome does to its instance: an ejection and the timer that ends it, or a
//! readmission, each told in one log line.

use std::sync::Arc;

use tracing::{debug, info, warn};

use crate::addr::Addr;
use crate::clock;
use crate::snapshot::{InstanceState, ServiceCell, Verdict};

/// Why an instance is being judged.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Outcome {
    /// A connect failed.
    ConnectFailed,
    /// A connect succeeded.
    Connected,
    /// An HTTP answer came; `true` for a 502, 503 or 504.
    Answered(bool),
}

/// Records `outcome` on the instance at `addr` and acts on the verdict.
pub(crate) fn judge(
    cell: &Arc<ServiceCell>,
    service: &str,
    addr: &Addr,
    state: &Arc<InstanceState>,
    outcome: Outcome,
) {
    let now = clock::now_ms();
    let outlier = cell.policy().outlier;
    let verdict = match outcome {
        Outcome::ConnectFailed => state.connect_failed(&outlier),
        Outcome::Connected => state.connected(now, &outlier),
        Outcome::Answered(server_error) => state.answered(server_error, now, &outlier),
    };
    match verdict {
        Verdict::Nothing => {}
        Verdict::Readmitted => {
            info!(service, %addr, "instance readmitted: it answered after its ejection")
        }
        Verdict::Eject => eject(cell, service, addr, state, now, outcome),
    }
}

fn eject(
    cell: &Arc<ServiceCell>,
    service: &str,
    addr: &Addr,
    state: &Arc<InstanceState>,
    now: u64,
    outcome: Outcome,
) {
    // So the nodes of a fleet that ejected an instance together do not all readmit it in the
    // same second.
    let Some(until) = cell.eject(state, now, crate::backoff::jitter()) else {
        debug!(service, %addr, "instance not ejected: already out, or the service cannot spare it");
        return;
    };
    let why = match outcome {
        Outcome::ConnectFailed => "connects failing",
        _ => "answering 5xx",
    };
    warn!(
        service,
        %addr,
        seconds = (until - now).div_ceil(1000),
        usable = cell.load().usable(),
        "instance ejected: {why}"
    );
    let cell = Arc::clone(cell);
    tokio::spawn(async move {
        tokio::time::sleep_until(clock::instant_at(until)).await;
        cell.expire(clock::now_ms());
    });
}
