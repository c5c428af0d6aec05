//! A raw-socket HTTP/2 instance that answers every call's HEADERS one chosen way, written
//! frame by frame so a test controls exactly what cairn sees: refusals a real server sends only
//! under load or while shutting down.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// How the instance answers a call.
#[derive(Debug, Clone, Copy)]
pub enum Answer {
    /// `RST_STREAM` with `REFUSED_STREAM`: not processed, may be sent again.
    Refuse,
    /// `GOAWAY` whose last stream id is below the call's, then the connection closes: not
    /// processed, may be sent again.
    GoAwayBelow,
    /// `RST_STREAM` with `INTERNAL_ERROR`: the call may have been processed, never sent again.
    Reset,
}

/// The instance, stopped on drop.
pub struct RawH2 {
    /// Where it listens.
    pub addr: SocketAddr,
    calls: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

const SETTINGS: u8 = 0x4;
const PING: u8 = 0x6;
const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const GOAWAY: u8 = 0x7;
const ACK: u8 = 0x1;

impl RawH2 {
    pub async fn start(answer: Answer) -> RawH2 {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let calls = Arc::new(AtomicUsize::new(0));
        let seen = Arc::clone(&calls);
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(serve(stream, answer, Arc::clone(&seen)));
            }
        });
        RawH2 { addr, calls, task }
    }

    /// How many calls (HEADERS frames) it has received.
    pub fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
}

impl Drop for RawH2 {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut out = len.to_be_bytes()[1..].to_vec();
    out.extend([kind, flags]);
    out.extend(stream.to_be_bytes());
    out.extend(payload);
    out
}

async fn serve(mut s: TcpStream, answer: Answer, calls: Arc<AtomicUsize>) {
    let mut preface = [0u8; 24];
    if s.read_exact(&mut preface).await.is_err() {
        return;
    }
    assert_eq!(
        &preface, b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
        "not an h2c preface"
    );
    if s.write_all(&frame(SETTINGS, 0, 0, &[])).await.is_err() {
        return;
    }
    loop {
        let mut head = [0u8; 9];
        if s.read_exact(&mut head).await.is_err() {
            return;
        }
        let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
        let (kind, flags) = (head[3], head[4]);
        let stream = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
        let mut payload = vec![0u8; len];
        if s.read_exact(&mut payload).await.is_err() {
            return;
        }
        let reply = match kind {
            SETTINGS if flags & ACK == 0 => frame(SETTINGS, ACK, 0, &[]),
            PING if flags & ACK == 0 => frame(PING, ACK, 0, &payload),
            HEADERS => {
                calls.fetch_add(1, Ordering::SeqCst);
                match answer {
                    Answer::Refuse => frame(RST_STREAM, 0, stream, &7u32.to_be_bytes()),
                    Answer::Reset => frame(RST_STREAM, 0, stream, &2u32.to_be_bytes()),
                    Answer::GoAwayBelow => {
                        let mut p = stream.saturating_sub(2).to_be_bytes().to_vec();
                        p.extend(0u32.to_be_bytes());
                        let _ = s.write_all(&frame(GOAWAY, 0, 0, &p)).await;
                        // Closed only once the client has read the GOAWAY: unread bytes at a
                        // close would make it a reset.
                        let _ = s.shutdown().await;
                        let mut rest = Vec::new();
                        let _ = s.read_to_end(&mut rest).await;
                        return;
                    }
                }
            }
            _ => continue,
        };
        if s.write_all(&reply).await.is_err() {
            return;
        }
    }
}
