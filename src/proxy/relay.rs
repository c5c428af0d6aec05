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
use tracing::debug;

use crate::clock;
use crate::proxy::config::RelayConfig;

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

/// How long a relayed connection lasts before its instance socket gets TCP keepalive. Probes
/// only start after the keepalive idle time (a minute by default), so a second later changes
/// little, and a short connection is spared four system calls.
const KEEPALIVE_AFTER_MS: u64 = 1000;

/// Relays between `client` and `instance` until both directions end, or until nothing moves
/// for `config.idle_timeout` when it is set. A half-close is forwarded and the other direction
/// kept. The instance's socket gets `config.keepalive` once the connection has lasted a
/// second; the client's has it from the listener.
///
/// # Errors
/// The first read or write error on either side.
pub(crate) async fn relay(
    client: &mut TcpStream,
    instance: &mut TcpStream,
    config: RelayConfig,
) -> io::Result<Relayed> {
    let started = clock::now_ms();
    let last = AtomicU64::new(started);
    let idle_ms = config.idle_timeout.map(|idle| idle.as_millis() as u64);
    let keepalive_at = started + KEEPALIVE_AFTER_MS;
    let mut a = Half::new(client, &last, None);
    let mut b = Half::new(
        instance,
        &last,
        config.keepalive.map(|idle| (idle, keepalive_at)),
    );
    let copy = tokio::io::copy_bidirectional(&mut a, &mut b);
    tokio::pin!(copy);
    let mut keepalive_due = config.keepalive.is_some();
    loop {
        let idle_at = idle_ms.map(|idle| last.load(Ordering::Relaxed) + idle);
        let wake_at = match (keepalive_due, idle_at) {
            (true, Some(at)) => Some(at.min(keepalive_at)),
            (true, None) => Some(keepalive_at),
            (false, at) => at,
        };
        let wake = async move {
            match wake_at {
                Some(at) => tokio::time::sleep_until(clock::instant_at(at)).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            // The copy first: polled after the wake-up, the instance's side sets keepalive.
            biased;
            r = &mut copy => return r.map(|(up, down)| Relayed::Done(up, down)),
            () = wake => {
                let now = clock::now_ms();
                keepalive_due &= now < keepalive_at;
                // Traffic since the timer was set pushes the idle deadline on.
                if idle_ms.is_some_and(|idle| now >= last.load(Ordering::Relaxed) + idle) {
                    return Ok(Relayed::Idle);
                }
            }
        }
    }
}

/// One half of a relay, its socket to one peer: records when it last read something and
/// whether the peer has finished sending, and sets TCP keepalive once it is due.
struct Half<'a> {
    io: &'a mut TcpStream,
    last: &'a AtomicU64,
    /// The peer sent its FIN: everything it sent has been read.
    ended: bool,
    /// Keepalive still to set: its idle time, and from when (`clock` milliseconds).
    keepalive: Option<(Duration, u64)>,
}

impl<'a> Half<'a> {
    fn new(io: &'a mut TcpStream, last: &'a AtomicU64, keepalive: Option<(Duration, u64)>) -> Self {
        Half {
            io,
            last,
            ended: false,
            keepalive,
        }
    }

    /// Sets keepalive when it is due; a failure only costs the probes.
    fn keep_alive(&mut self, now: u64) {
        if let Some((idle, at)) = self.keepalive {
            if now >= at {
                self.keepalive = None;
                if let Err(e) = keepalive(SockRef::from(&*self.io), Some(idle)) {
                    debug!(error = %e, "cannot turn on tcp keepalive");
                }
            }
        }
    }
}

impl AsyncRead for Half<'_> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut *self.io).poll_read(cx, buf);
        if self.keepalive.is_some() {
            self.keep_alive(clock::now_ms());
        }
        if let Poll::Ready(Ok(())) = polled {
            if buf.filled().len() > before {
                self.last.store(clock::now_ms(), Ordering::Relaxed);
            } else {
                self.ended = true;
            }
        }
        polled
    }
}

impl AsyncWrite for Half<'_> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        // Checked here too: an instance that has finished sending is no longer read.
        if self.keepalive.is_some() {
            self.keep_alive(clock::now_ms());
        }
        Pin::new(&mut *self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.io).poll_flush(cx)
    }

    /// Forwards the other side's FIN, unless this side's peer has finished sending too: then
    /// both directions are over, the relay returns and closing the socket sends the FIN, so the
    /// `shutdown` would be a system call for nothing.
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.ended {
            return Poll::Ready(Ok(()));
        }
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
                RelayConfig {
                    idle_timeout: Some(Duration::from_secs(10)),
                    keepalive: None,
                },
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

    #[tokio::test(start_paused = true)]
    async fn the_instance_socket_gets_keepalive_once_the_connection_lasts() {
        let (mut client, mut client_side) = pair().await;
        let (mut instance_side, mut instance) = pair().await;
        // The same socket as the relay's instance side, to look at its options.
        let probe = SockRef::from(&instance_side).try_clone().unwrap();
        let config = RelayConfig {
            idle_timeout: None,
            keepalive: Some(Duration::from_secs(60)),
        };
        let relayed =
            tokio::spawn(async move { relay(&mut client_side, &mut instance_side, config).await });
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(!probe.keepalive().unwrap());
        // No byte moves: the relay's own wake-up sets it.
        tokio::time::sleep(Duration::from_millis(600)).await;
        assert_keepalive(SockRef::from(&probe), Duration::from_secs(60));
        client.write_all(b"ping").await.unwrap();
        let mut b = [0u8; 4];
        instance.read_exact(&mut b).await.unwrap();
        drop((client, instance));
        assert!(matches!(relayed.await.unwrap(), Ok(Relayed::Done(4, 0))));

        // A connection over within the second never gets it.
        let (mut client, mut client_side) = pair().await;
        let (mut instance_side, instance) = pair().await;
        let probe = SockRef::from(&instance_side).try_clone().unwrap();
        let relayed =
            tokio::spawn(async move { relay(&mut client_side, &mut instance_side, config).await });
        client.shutdown().await.unwrap();
        drop(instance);
        relayed.await.unwrap().unwrap();
        assert!(!probe.keepalive().unwrap());
    }

    #[tokio::test]
    async fn both_half_closes_pass_with_every_byte() {
        let (mut client, mut client_side) = pair().await;
        let (mut instance_side, mut instance) = pair().await;
        let relay = tokio::spawn(async move {
            relay(&mut client_side, &mut instance_side, RelayConfig::default()).await
        });
        // The client sends and finishes first; the instance answers after its FIN, then
        // finishes: the relay's last FIN comes from closing, with nothing lost before it.
        client.write_all(b"request").await.unwrap();
        client.shutdown().await.unwrap();
        let mut got = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), instance.read_to_end(&mut got))
            .await
            .expect("the client's FIN reaches the instance")
            .unwrap();
        assert_eq!(got, b"request");
        let answer = vec![7u8; 300_000];
        instance.write_all(&answer).await.unwrap();
        instance.shutdown().await.unwrap();
        let mut got = Vec::new();
        client.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, answer);
        assert!(matches!(
            relay.await.unwrap(),
            Ok(Relayed::Done(7, 300_000))
        ));
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
