//! Real upstream servers and clients for the data-plane tests.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

use super::patient;

/// A TCP server that greets each connection with `<name>\n`, then echoes what it reads until the
/// client half-closes, then closes.
pub struct Tagged {
    /// The name it greets with.
    pub name: String,
    /// Where it listens.
    pub addr: SocketAddr,
    task: JoinHandle<()>,
}

impl Tagged {
    /// Starts a tagged server on an ephemeral loopback port.
    pub async fn start(name: &str) -> Tagged {
        Tagged::start_at(name, "127.0.0.1:0".parse().expect("an address")).await
    }

    /// Starts a tagged server on `addr` (a port that was free, or refused, until now).
    pub async fn start_at(name: &str, addr: SocketAddr) -> Tagged {
        let listener = TcpListener::bind(addr).await.expect("binding an upstream");
        Tagged::serve(name, listener)
    }

    /// Greets every connection `listener` accepts, starting with those already queued.
    pub fn serve(name: &str, listener: TcpListener) -> Tagged {
        let addr = listener.local_addr().expect("upstream address");
        let tag = format!("{name}\n");
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut s, _)) = listener.accept().await else {
                    continue;
                };
                let tag = tag.clone();
                tokio::spawn(async move {
                    if s.write_all(tag.as_bytes()).await.is_err() {
                        return;
                    }
                    let (mut r, mut w) = s.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                    let _ = w.shutdown().await;
                });
            }
        });
        Tagged {
            name: name.to_string(),
            addr,
            task,
        }
    }

    /// Stops accepting and frees the port.
    pub fn stop(self) {
        self.task.abort();
    }
}

impl Drop for Tagged {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A listener that accepts nothing, with its one-connection queue full: connects to it are
/// neither refused nor answered, like those to a host that vanished (they time out).
pub struct Blackhole {
    /// Where connects hang.
    pub addr: SocketAddr,
    listener: TcpListener,
    _filler: TcpStream,
}

impl Blackhole {
    /// Binds an ephemeral loopback port with a backlog of 0 and fills its queue.
    pub async fn start() -> Blackhole {
        let socket = tokio::net::TcpSocket::new_v4().expect("a socket");
        socket
            .bind("127.0.0.1:0".parse().expect("an address"))
            .expect("binding a blackhole");
        let listener = socket.listen(0).expect("listening");
        let addr = listener.local_addr().expect("blackhole address");
        let filler = TcpStream::connect(addr)
            .await
            .expect("filling the blackhole's queue");
        // Linux queues one connection more than the backlog; make sure the next one hangs.
        let probe =
            tokio::time::timeout(Duration::from_millis(300), TcpStream::connect(addr)).await;
        assert!(
            probe.is_err(),
            "a connect to the blackhole did not hang: {probe:?}"
        );
        Blackhole {
            addr,
            listener,
            _filler: filler,
        }
    }

    /// The instance comes back: it starts accepting, as a tagged server named `name`.
    pub fn recover(self, name: &str) -> Tagged {
        Tagged::serve(name, self.listener)
    }
}

/// Connects to `addr` and reads the greeting line. `None` when the connection is closed without
/// one (cairn had nowhere to send it).
pub async fn greeting(addr: SocketAddr) -> Option<String> {
    let stream = TcpStream::connect(addr).await.ok()?;
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    let n = tokio::time::timeout(patient(Duration::from_secs(5)), reader.read_line(&mut line))
        .await
        .expect("a connection through cairn neither greeted nor closed within 5 s")
        .ok()?;
    (n > 0).then(|| line.trim_end().to_string())
}

/// Sends `payload`, half-closes, and returns everything read back until EOF.
pub async fn echo_after_half_close(addr: SocketAddr, payload: &[u8]) -> Vec<u8> {
    let mut s = TcpStream::connect(addr)
        .await
        .expect("connecting through cairn");
    s.write_all(payload).await.expect("writing the payload");
    s.shutdown().await.expect("half-closing");
    let mut out = Vec::new();
    tokio::time::timeout(patient(Duration::from_secs(10)), s.read_to_end(&mut out))
        .await
        .expect("the reply did not finish within 10 s")
        .expect("reading the reply");
    out
}
