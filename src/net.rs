//! Dialing instance addresses: hostnames are resolved inside the connect timeout, and an address
//! that is one of cairn's own listeners is never dialed, since forwarding to it would loop through
//! cairn until every connection slot is held.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use socket2::{Domain, Socket, Type};
use tokio::io::Interest;
use tokio::net::TcpStream;

use crate::addr::Addr;

/// The addresses this process listens on.
#[derive(Debug, Default)]
pub(crate) struct OwnAddrs(ArcSwap<Vec<SocketAddr>>);

impl OwnAddrs {
    /// The listeners are now bound at `addrs` (after a reload).
    pub(crate) fn set(&self, addrs: Vec<SocketAddr>) {
        self.0.store(Arc::new(addrs));
    }

    /// The listener that a connection to `peer` would reach, if it is one of ours: the same
    /// address, or the same port of a wildcard listener when `peer` is an address of this host.
    pub(crate) fn reached_by(&self, peer: SocketAddr) -> Option<SocketAddr> {
        self.0.load().iter().copied().find(|own| {
            own.port() == peer.port()
                && (own.ip() == peer.ip() || (own.ip().is_unspecified() && is_local(peer.ip())))
        })
    }
}

/// Whether `ip` is an address of this host: binding a socket to it succeeds only then.
fn is_local(ip: IpAddr) -> bool {
    ip.is_loopback() || std::net::UdpSocket::bind((ip, 0)).is_ok()
}

/// Dials `addr` with TCP_NODELAY set, giving up after `timeout` (lookup included). Addresses that
/// are cairn's own listeners are skipped; a hostname's other addresses are tried in turn.
///
/// # Errors
/// The last connect's error, `TimedOut` when `timeout` passed first, or `ConnectionRefused` when
/// every address is one of cairn's own listeners.
pub(crate) async fn dial(addr: &Addr, timeout: Duration, own: &OwnAddrs) -> io::Result<TcpStream> {
    let connected = tokio::time::timeout(timeout, async {
        match addr {
            Addr::Ip(sa) => connect_unless_own(addr, *sa, own).await,
            Addr::Host { host, port } => {
                let mut last = None;
                for sa in tokio::net::lookup_host((&**host, *port)).await? {
                    match connect_unless_own(addr, sa, own).await {
                        Ok(stream) => return Ok(stream),
                        Err(e) => last = Some(e),
                    }
                }
                Err(last.unwrap_or_else(|| {
                    io::Error::new(
                        io::ErrorKind::NotFound,
                        format!("{addr} resolves to no address"),
                    )
                }))
            }
        }
    })
    .await;
    let stream = connected.map_err(|_| {
        io::Error::new(
            io::ErrorKind::TimedOut,
            format!("no answer within {}", humantime::format_duration(timeout)),
        )
    })??;
    Ok(stream)
}

async fn connect_unless_own(addr: &Addr, sa: SocketAddr, own: &OwnAddrs) -> io::Result<TcpStream> {
    if let Some(listener) = own.reached_by(sa) {
        return Err(io::Error::new(
            io::ErrorKind::ConnectionRefused,
            format!("{addr} is cairn's own listener {listener}; forwarding there would loop"),
        ));
    }
    connect_nodelay(sa).await
}

/// Connects to `sa` with TCP_NODELAY set. Where tokio's connect reads `SO_ERROR` once the socket
/// turns writable, this reads it only when the kernel reports an error: one system call fewer
/// for every connection made.
async fn connect_nodelay(sa: SocketAddr) -> io::Result<TcpStream> {
    let socket = Socket::new(
        Domain::for_address(sa),
        Type::STREAM.nonblocking().cloexec(),
        None,
    )?;
    socket.set_tcp_nodelay(true)?;
    match socket.connect(&sa.into()) {
        Err(e) if e.raw_os_error() != Some(libc::EINPROGRESS) => return Err(e),
        _ => {}
    }
    let stream = TcpStream::from_std(socket.into())?;
    // A refused or unreachable connect shows as an error (and a hang-up) on the socket.
    let ready = stream.ready(Interest::WRITABLE | Interest::ERROR).await?;
    if ready.is_error() || ready.is_write_closed() {
        return Err(stream.take_error()?.unwrap_or_else(|| {
            io::Error::new(
                io::ErrorKind::ConnectionReset,
                "the connection was closed at once",
            )
        }));
    }
    Ok(stream)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[tokio::test]
    async fn a_connect_is_refused_or_made_with_nodelay() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (target, own) = (Addr::Ip(addr), OwnAddrs::default());
        let dial_it = || dial(&target, Duration::from_secs(5), &own);
        let stream = dial_it().await.unwrap();
        assert!(stream.nodelay().unwrap());
        assert_eq!(stream.peer_addr().unwrap(), addr);
        drop(listener);
        // Nothing listens there now: the kernel's refusal is the error.
        let e = dial_it().await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::ConnectionRefused, "{e}");
    }

    #[test]
    fn an_address_of_our_own_listener_is_recognised() {
        let own = OwnAddrs::default();
        own.set(vec![sa("127.0.0.1:7001"), sa("0.0.0.0:7002")]);
        assert_eq!(
            own.reached_by(sa("127.0.0.1:7001")),
            Some(sa("127.0.0.1:7001"))
        );
        assert_eq!(
            own.reached_by(sa("127.0.0.2:7002")),
            Some(sa("0.0.0.0:7002"))
        );
        assert_eq!(own.reached_by(sa("127.0.0.1:7003")), None);
        assert_eq!(
            own.reached_by(sa("127.0.0.2:7001")),
            None,
            "another loopback address"
        );
        // 192.0.2.0/24 is reserved for documentation: never an address of this host.
        assert_eq!(own.reached_by(sa("192.0.2.1:7002")), None, "another host");
    }

    #[tokio::test]
    async fn dialing_our_own_listener_is_refused() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let own = OwnAddrs::default();
        own.set(vec![addr]);
        let e = dial(&Addr::Ip(addr), Duration::from_secs(5), &own)
            .await
            .unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::ConnectionRefused);
        assert!(e.to_string().contains("own listener"), "{e}");
        assert!(dial(
            &Addr::Ip(addr),
            Duration::from_secs(5),
            &OwnAddrs::default()
        )
        .await
        .is_ok());
    }
}
