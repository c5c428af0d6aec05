//! Relaying a TCP connection both ways: half-close kept, an optional idle timeout, and TCP
//! keepalive so a peer that vanished without a FIN is found.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use socket2::{SockRef, TcpKeepalive};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};

use crate::clock;

/// Keepalive probes after the idle time: this many, `idle / 4` apart (at least a second), so
/// with the default 60 s a dead peer is found after about 105 s.
const KEEPALIVE_PROBES: u32 = 3;

/// Turns on TCP keepalive on `socket`: the first probe after `idle` without traffic; `None`
/// turns it off.
pub(crate) fn keepalive(socket: SockRef<'_>, idle: Option<Duration>) -> io::Result<()> {
    let Some(idle) = idle else {
        return socket.set_keepalive(false);
    };
    let interval = (idle / 4).max(Duration::from_secs(1));
    let params = TcpKeepalive::new()
        .with_time(idle)
        .with_interval(interval)
        .with_retries(KEEPALIVE_PROBES);
    socket.set_tcp_keepalive(&params)
}

/// Sets on a listening socket what every connection it accepts should have: no Nagle delay,
/// and `keepalive`. Linux copies both to each accepted socket, which saves five system calls
/// per connection.
pub(crate) fn inherited(
    listener: &TcpListener,
    keepalive_idle: Option<Duration>,
) -> io::Result<()> {
    let socket = SockRef::from(listener);
    socket.set_tcp_nodelay(true)?;
    keepalive(socket, keepalive_idle)
}

/// How a relay ended.
#[derive(Debug)]
pub(crate) enum Relayed {
    /// Both sides finished: bytes sent up (client to instance) and down.
    Done(u64, u64),
    /// Nothing moved either way for the idle timeout.
    Idle,
}

/// Relays between `client` and `instance` until both directions end, or until nothing moves
/// for `idle` when it is set. A half-close is forwarded and the other direction kept.
///
/// # Errors
/// The first read or write error on either side.
pub(crate) async fn relay(
    client: &mut TcpStream,
    instance: &mut TcpStream,
    idle: Option<Duration>,
) -> io::Result<Relayed> {
    let Some(idle) = idle else {
        let (up, down) = tokio::io::copy_bidirectional(client, instance).await?;
        return Ok(Relayed::Done(up, down));
    };
    let idle_ms = idle.as_millis() as u64;
    let last = AtomicU64::new(clock::now_ms());
    let mut a = Watched {
        io: client,
        last: &last,
    };
    let mut b = Watched {
        io: instance,
        last: &last,
    };
    let copy = tokio::io::copy_bidirectional(&mut a, &mut b);
    tokio::pin!(copy);
    loop {
        let deadline = last.load(Ordering::Relaxed) + idle_ms;
        tokio::select! {
            r = &mut copy => return r.map(|(up, down)| Relayed::Done(up, down)),
            _ = tokio::time::sleep_until(clock::instant_at(deadline)) => {
                // Traffic since the timer was set pushes the deadline on.
                if clock::now_ms() >= last.load(Ordering::Relaxed) + idle_ms {
                    return Ok(Relayed::Idle);
                }
            }
        }
    }
}

/// A stream that records when it last read something.
struct Watched<'a, S> {
    io: &'a mut S,
    last: &'a AtomicU64,
}

impl<S: AsyncRead + Unpin> AsyncRead for Watched<'_, S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut *self.io).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.last.store(clock::now_ms(), Ordering::Relaxed);
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Watched<'_, S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut *self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    async fn pair() -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let c = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let (s, _) = l.accept().await.unwrap();
        (c, s)
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_relay_ends_and_traffic_keeps_it_open() {
        let (mut client, mut client_side) = pair().await;
        let (mut instance_side, mut instance) = pair().await;
        let relay = tokio::spawn(async move {
            relay(
                &mut client_side,
                &mut instance_side,
                Some(Duration::from_secs(10)),
            )
            .await
        });
        // Every 6 s a byte: never 10 s of silence.
        for _ in 0..5 {
            tokio::time::sleep(Duration::from_secs(6)).await;
            client.write_all(b"x").await.unwrap();
            let mut b = [0u8; 1];
            instance.read_exact(&mut b).await.unwrap();
        }
        assert!(!relay.is_finished());
        tokio::time::sleep(Duration::from_secs(11)).await;
        let ended = relay.await.unwrap().unwrap();
        assert!(matches!(ended, Relayed::Idle), "{ended:?}");
    }

    fn assert_keepalive(sock: SockRef<'_>, idle: Duration) {
        assert!(sock.keepalive().unwrap());
        assert_eq!(sock.tcp_keepalive_time().unwrap(), idle);
        assert_eq!(sock.tcp_keepalive_interval().unwrap(), idle / 4);
        assert_eq!(sock.tcp_keepalive_retries().unwrap(), KEEPALIVE_PROBES);
    }

    #[tokio::test]
    async fn keepalive_is_set_on_the_socket() {
        let (c, _s) = pair().await;
        keepalive(SockRef::from(&c), Some(Duration::from_secs(60))).unwrap();
        assert_keepalive(SockRef::from(&c), Duration::from_secs(60));
        keepalive(SockRef::from(&c), None).unwrap();
        assert!(!SockRef::from(&c).keepalive().unwrap());
    }

    #[tokio::test]
    async fn accepted_sockets_inherit_the_listeners_options() {
        // cairn sets these once on the listener instead of on each connection: this holds
        // only as long as the kernel copies them, which this checks.
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        inherited(&l, Some(Duration::from_secs(40))).unwrap();
        let _c = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let (s, _) = l.accept().await.unwrap();
        assert!(s.nodelay().unwrap());
        assert_keepalive(SockRef::from(&s), Duration::from_secs(40));
        // A reload that turns keepalive off reaches the next connections.
        inherited(&l, None).unwrap();
        let _c = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let (s, _) = l.accept().await.unwrap();
        assert!(!SockRef::from(&s).keepalive().unwrap());
    }
}
