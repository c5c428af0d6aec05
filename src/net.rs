//! Dialing instance addresses: hostnames are resolved at connect time, inside the timeout.

use std::io;
use std::time::Duration;

use tokio::net::TcpStream;

use crate::addr::Addr;

/// Connects to `addr`, resolving a hostname first.
///
/// # Errors
/// The resolver's or the connect's error.
pub(crate) async fn connect(addr: &Addr) -> io::Result<TcpStream> {
    match addr {
        Addr::Ip(sa) => TcpStream::connect(*sa).await,
        Addr::Host { host, port } => TcpStream::connect((&**host, *port)).await,
    }
}

/// Dials `addr` with TCP_NODELAY set, giving up after `timeout`.
///
/// # Errors
/// The connect's error, or `TimedOut` when `timeout` passed first.
pub(crate) async fn dial(addr: &Addr, timeout: Duration) -> io::Result<TcpStream> {
    let stream = tokio::time::timeout(timeout, connect(addr))
        .await
        .map_err(|_| {
            io::Error::new(
                io::ErrorKind::TimedOut,
                format!("no answer within {}", humantime::format_duration(timeout)),
            )
        })??;
    stream.set_nodelay(true)?;
    Ok(stream)
}
