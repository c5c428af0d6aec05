//! A raw-socket HTTP/1.1 upstream that records exactly what it receives, for the hostile-input
//! tests: what cairn forwards must be well framed whatever the client sent.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// One request as it arrived: its head lines and its body, decoded by the head's framing.
#[derive(Debug, Clone)]
pub struct Received {
    /// The request line.
    pub line: String,
    /// Header lines exactly as received (name and value, unparsed).
    pub headers: Vec<String>,
    /// The body.
    pub body: Vec<u8>,
    /// The trailer fields of a chunked body, exactly as received.
    pub trailers: Vec<String>,
}

impl Received {
    /// The values of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Vec<String> {
        self.headers
            .iter()
            .filter_map(|h| h.split_once(':'))
            .filter(|(n, _)| n.trim().eq_ignore_ascii_case(name))
            .map(|(_, v)| v.trim().to_string())
            .collect()
    }
}

/// How the upstream answers every request.
#[derive(Debug, Clone)]
pub enum Reply {
    /// `200 OK` with a 2-byte body, keep-alive.
    Ok,
    /// These exact bytes, then close.
    Raw(&'static [u8]),
    /// These exact bytes for every request, keeping the connection open.
    Each(&'static [u8]),
    /// These exact bytes, then nothing more, the connection held open: a stalled instance.
    Stall(&'static [u8]),
    /// As `Ok`, after this long: a slow instance.
    Slow(Duration),
    /// As `Slow` until this instant, then as `Ok`: a slow instance that recovers.
    SlowUntil(Duration, tokio::time::Instant),
}

/// The upstream: every request it got, in order.
pub struct RawUpstream {
    /// Where it listens.
    pub addr: SocketAddr,
    received: Arc<Mutex<Vec<Received>>>,
    connections: Arc<std::sync::atomic::AtomicUsize>,
    task: JoinHandle<()>,
}

impl RawUpstream {
    /// Starts an upstream answering with `reply`.
    pub async fn start(reply: Reply) -> RawUpstream {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("binding a raw upstream");
        let addr = listener.local_addr().expect("its address");
        let received = Arc::new(Mutex::new(Vec::new()));
        let log = Arc::clone(&received);
        let connections = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let accepted = Arc::clone(&connections);
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                accepted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                tokio::spawn(serve(stream, reply.clone(), Arc::clone(&log)));
            }
        });
        RawUpstream {
            addr,
            received,
            connections,
            task,
        }
    }

    /// How many connections it has accepted.
    pub fn connections(&self) -> usize {
        self.connections.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Every request received so far.
    pub fn received(&self) -> Vec<Received> {
        self.received.lock().expect("the log lock").clone()
    }
}

impl Drop for RawUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve(mut stream: TcpStream, reply: Reply, log: Arc<Mutex<Vec<Received>>>) {
    let mut buf = Vec::new();
    loop {
        let Some(request) = read_request(&mut stream, &mut buf).await else {
            return;
        };
        log.lock().expect("the log lock").push(request);
        match &reply {
            Reply::Slow(delay) => tokio::time::sleep(*delay).await,
            Reply::SlowUntil(delay, until) if tokio::time::Instant::now() < *until => {
                tokio::time::sleep(*delay).await;
            }
            _ => {}
        }
        let done = match &reply {
            Reply::Ok | Reply::Slow(_) | Reply::SlowUntil(..) => stream
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                .await
                .is_err(),
            Reply::Raw(bytes) => {
                let _ = stream.write_all(bytes).await;
                true
            }
            Reply::Each(bytes) => stream.write_all(bytes).await.is_err(),
            Reply::Stall(bytes) => {
                let _ = stream.write_all(bytes).await;
                // Held (and drained, so cairn's writes never block) until cairn closes it.
                let mut sink = [0u8; 4096];
                while let Ok(n) = stream.read(&mut sink).await {
                    if n == 0 {
                        break;
                    }
                }
                true
            }
        };
        if done {
            return;
        }
    }
}

/// Reads more bytes into `buf`; false at EOF, error or after 10 s of silence.
async fn fill(stream: &mut TcpStream, buf: &mut Vec<u8>) -> bool {
    let mut chunk = [0u8; 4096];
    match tokio::time::timeout(Duration::from_secs(10), stream.read(&mut chunk)).await {
        Ok(Ok(n)) if n > 0 => {
            buf.extend_from_slice(&chunk[..n]);
            true
        }
        _ => false,
    }
}

/// The next CRLF-ended line, without its end.
async fn read_line(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Option<String> {
    let end = loop {
        if let Some(at) = buf.windows(2).position(|w| w == b"\r\n") {
            break at;
        }
        if !fill(stream, buf).await {
            return None;
        }
    };
    let line = String::from_utf8_lossy(&buf[..end]).to_string();
    buf.drain(..end + 2);
    Some(line)
}

async fn read_request(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Option<Received> {
    let head_end = loop {
        if let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break at;
        }
        if !fill(stream, buf).await {
            return None;
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    buf.drain(..head_end + 4);
    let mut lines = head.split("\r\n");
    let line = lines.next().unwrap_or_default().to_string();
    let headers: Vec<String> = lines.map(str::to_string).collect();
    let mut request = Received {
        line,
        headers,
        body: Vec::new(),
        trailers: Vec::new(),
    };
    let chunked = request
        .header("transfer-encoding")
        .iter()
        .any(|v| v.to_ascii_lowercase().contains("chunked"));
    if chunked {
        loop {
            let size_line = read_line(stream, buf).await?;
            let size = usize::from_str_radix(size_line.split(';').next()?.trim(), 16).ok()?;
            if size == 0 {
                // The trailer section: field lines up to an empty one.
                loop {
                    let field = read_line(stream, buf).await?;
                    if field.is_empty() {
                        return Some(request);
                    }
                    request.trailers.push(field);
                }
            }
            while buf.len() < size + 2 {
                if !fill(stream, buf).await {
                    return None;
                }
            }
            request.body.extend_from_slice(&buf[..size]);
            buf.drain(..size + 2);
        }
    }
    let length: usize = request
        .header("content-length")
        .first()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    while buf.len() < length {
        if !fill(stream, buf).await {
            return None;
        }
    }
    request.body = buf.drain(..length).collect();
    Some(request)
}

/// Sends `bytes` to `addr` and reads whatever comes back until the connection closes or is quiet
/// for `quiet`.
pub async fn exchange(addr: SocketAddr, bytes: &[u8], quiet: Duration) -> String {
    let mut s = TcpStream::connect(addr).await.expect("connecting to cairn");
    s.write_all(bytes).await.expect("sending the request");
    let mut out = Vec::new();
    let mut chunk = [0u8; 4096];
    while let Ok(Ok(n)) = tokio::time::timeout(quiet, s.read(&mut chunk)).await {
        if n == 0 {
            break;
        }
        out.extend_from_slice(&chunk[..n]);
    }
    String::from_utf8_lossy(&out).to_string()
}
