//! Upgrades: when an instance answers `101 Switching Protocols` (WebSocket), the client's and the
//! instance's connections become one byte tunnel.

use std::error::Error as StdError;

use http::header::{self, HeaderValue};
use http::Response;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::debug;

use super::body::ProxyBody;
use super::headers::strip_hop_by_hop;
use crate::snapshot::InFlight;

/// Passes the instance's `101` on to the client and relays both upgraded connections on
/// `tunnels` until either side closes or `abort` fires; `inflight` is held as long.
pub(crate) fn tunnel(
    mut resp: Response<Incoming>,
    client_side: OnUpgrade,
    tunnels: &TaskTracker,
    abort: CancellationToken,
    service: String,
    inflight: InFlight,
) -> Response<ProxyBody> {
    let upstream_side = hyper::upgrade::on(&mut resp);
    let upgrade = resp.headers().get(header::UPGRADE).cloned();
    strip_hop_by_hop(resp.headers_mut());
    if let Some(protocol) = upgrade {
        resp.headers_mut().insert(header::UPGRADE, protocol);
        resp.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
    tunnels.spawn(async move {
        // The tunnel counts as a request in flight on its instance for as long as it lasts.
        let _inflight = inflight;
        let relay = async {
            let (client, upstream) = tokio::try_join!(client_side, upstream_side)?;
            let (mut client, mut upstream) = (TokioIo::new(client), TokioIo::new(upstream));
            tokio::io::copy_bidirectional(&mut client, &mut upstream)
                .await
                .map_err(|e| Box::new(e) as Box<dyn StdError + Send + Sync>)?;
            Ok::<_, Box<dyn StdError + Send + Sync>>(())
        };
        tokio::select! {
            r = relay => if let Err(e) = r {
                debug!(%service, error = %e, "upgraded connection ended with an error");
            },
            _ = abort.cancelled() => {}
        }
    });
    resp.map(|body| body.map_err(Into::into).boxed())
}
