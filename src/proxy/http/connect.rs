//! How the pooled HTTP client reaches instances: through cairn's own dialer, so a hostname's
//! lookup counts against `connect_timeout` and a loop back into cairn is refused, as for TCP.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::Uri;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::addr::Addr;
use crate::net::{dial, OwnAddrs};

/// A connector for hyper-util's pooled client.
#[derive(Debug, Clone)]
pub(crate) struct Connector {
    /// Time allowed for the lookup and the connect together.
    pub(crate) timeout: Duration,
    /// cairn's own listeners, never dialed.
    pub(crate) own: Arc<OwnAddrs>,
}

impl tower_service::Service<Uri> for Connector {
    type Response = TokioIo<TcpStream>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<TokioIo<TcpStream>>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            let addr = target(&uri)?;
            dial(&addr, this.timeout, &this.own).await.map(TokioIo::new)
        })
    }
}

/// The instance a request URI names: `http://host:port`.
fn target(uri: &Uri) -> io::Result<Addr> {
    let invalid = |why: &str| io::Error::new(io::ErrorKind::InvalidInput, format!("{uri}: {why}"));
    let host = uri.host().ok_or_else(|| invalid("no host"))?;
    let port = uri.port_u16().unwrap_or(80);
    format!("{host}:{port}")
        .parse()
        .map_err(|e: String| invalid(&e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_uris_name_their_instance() {
        let t = |s: &str| target(&s.parse().unwrap()).map(|a| a.to_string());
        assert_eq!(t("http://10.0.0.5:8080/x").unwrap(), "10.0.0.5:8080");
        assert_eq!(t("http://[::1]:81/").unwrap(), "[::1]:81");
        assert_eq!(t("http://orders.internal/").unwrap(), "orders.internal:80");
        assert!(t("/relative").is_err());
    }
}
