//! cairn's own HTTP/1.1 client to instances, on bare pooled sockets. It carries every request
//! but upgrades: those of cairn's own path, their heads rewritten as they came and their small
//! bodies inline, and those hyper's server takes (HTTP/2 ones, chunked and large uploads), their
//! heads written from the header map and their bodies streamed from hyper's, chunked by cairn
//! when their length is unknown. A response to the latter is decoded into frames
//! ([`super::decoded`]) for hyper to pass on. hyper's client is left for upgrades, which need its
//! hand-over of the connection.

use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Buf, BytesMut};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tracing::debug;

use super::framing::READ_SIZE;
use super::response::{Answer, ResponseHead};
pub(crate) use super::upload::Upload;
use super::upload::Uploading;
use crate::addr::Addr;
use crate::proxy::http::pool::Pool;

/// Why a request got no response.
#[derive(Debug)]
pub(crate) enum SendFail {
    /// Nothing reached the instance: another one may take the request.
    Unsent(String),
    /// The request may have reached the instance; it is never sent again.
    Failed(String),
}

/// An exchange whose response head has arrived: the socket, the bytes read (the head first),
/// the head, and the request body still on its way, if the instance answered before its end.
pub(super) type Sent = (TcpStream, BytesMut, ResponseHead, Option<Uploading>);

/// Writes the request head in `out` to `addr`, then the body of `upload` as the socket takes it
/// while reading the response head, which `parse` reads (it may reuse `out`). A kept-alive
/// socket that fails the first write is replaced by another: nothing of the request reached it.
/// An instance may answer before the body is all sent: the rest of it then goes out as the
/// response is read.
pub(super) async fn send(
    pool: &Arc<Pool>,
    addr: &Addr,
    out: &mut Vec<u8>,
    upload: Option<Upload>,
    mut parse: impl FnMut(&[u8], &mut Vec<u8>) -> Result<Answer, String>,
) -> Result<Sent, SendFail> {
    let mut up = loop {
        let (mut up, reused) = pool.socket(addr).await.map_err(SendFail::Unsent)?;
        let written = match up.write(out).await {
            Ok(n) if n > 0 => n,
            Ok(_) => return Err(SendFail::Unsent("the connection took no bytes".into())),
            Err(e) if reused => {
                debug!(%addr, error = %e, "kept-alive connection closed before use, taking another");
                continue;
            }
            Err(e) => return Err(SendFail::Unsent(e.to_string())),
        };
        (up.write_all(&out[written..]).await).map_err(|e| SendFail::Failed(e.to_string()))?;
        break up;
    };
    let mut uploading = upload.map(Uploading::new);
    // Allocated per exchange: an idle client connection holds no upstream buffer.
    let mut read = BytesMut::with_capacity(READ_SIZE);
    loop {
        if let Some(head) = head_in(&mut read, out, &mut parse)? {
            return Ok((up, read, head, uploading));
        }
        if read.capacity() - read.len() < READ_SIZE / 4 {
            read.reserve(READ_SIZE);
        }
        let got = poll_fn(|cx| {
            if let Some(u) = &mut uploading {
                match u.poll_send(cx, &mut up, &mut false) {
                    Poll::Ready(Ok(())) => uploading = None,
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(SendFail::Failed(e))),
                    Poll::Pending => {}
                }
            }
            poll_read(cx, &mut up, &mut read).map_err(|e| SendFail::Failed(e.to_string()))
        })
        .await?;
        if got == 0 {
            return Err(closed_before_response());
        }
    }
}

/// Reads what `io` has into `buf`. Through tokio's reader, which takes a short read to mean
/// the socket is drained: the next wait goes to the poller, not to a read that finds nothing
/// (`try_read` would cost one more system call per response).
pub(super) fn poll_read(
    cx: &mut Context<'_>,
    io: &mut TcpStream,
    buf: &mut BytesMut,
) -> Poll<io::Result<usize>> {
    tokio_util::io::poll_read_buf(Pin::new(io), cx, buf)
}

/// The response head at the start of `read`, once it has all arrived; interim answers are
/// dropped on the way.
fn head_in(
    read: &mut BytesMut,
    out: &mut Vec<u8>,
    parse: &mut impl FnMut(&[u8], &mut Vec<u8>) -> Result<Answer, String>,
) -> Result<Option<ResponseHead>, SendFail> {
    while !read.is_empty() {
        match parse(read, out) {
            Ok(Answer::Head(head)) => return Ok(Some(head)),
            Ok(Answer::Interim(n)) => read.advance(n),
            Ok(Answer::More) => return Ok(None),
            Err(e) => return Err(SendFail::Failed(e)),
        }
    }
    Ok(None)
}

fn closed_before_response() -> SendFail {
    SendFail::Failed("connection closed before a response".into())
}
