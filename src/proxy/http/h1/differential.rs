//! cairn's own HTTP/1.1 request path against hyper's server, on the same bytes:
//!
//! - every request cairn's path would take must be one hyper frames the same way (the same
//!   method, target, headers and body, at the same place in the stream). cairn may take fewer
//!   (it hands the rest of a connection to hyper, or waits for more), never another;
//! - what cairn then writes to the instance, framed by hyper's server as the instance would,
//!   must be exactly those requests with those bodies: no more, no fewer.
//!
//! The inputs are the smuggling corpus (`tests/corpus/smuggling.toml`) and generated request
//! streams: grammar-built requests with hostile framing headers, separators and line ends,
//! pipelined, then mutated. Of 20 000 generated streams, cairn's path takes at least one
//! request from about a quarter (a body in about 250), and hands the rest to hyper; the
//! generated streams alone find the Connection-listed Content-Length of issue 18 within a few
//! hundred cases when its fix is undone.

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use proptest::prelude::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::head::{end_request, parse_request, request_headers, write_request, Read};

/// The head limit both parsers get.
const MAX_HEAD: usize = 8 * 1024;

/// One request as a server framed it: method, target, headers (lowercase names, sorted by name,
/// each name's values in order, as a header map keeps them) and body, or `None` for a body
/// that broke off.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Framed {
    method: String,
    target: String,
    headers: Vec<(String, Vec<u8>)>,
    body: Option<Vec<u8>>,
}

fn by_name(headers: impl Iterator<Item = (String, Vec<u8>)>) -> Vec<(String, Vec<u8>)> {
    let mut headers: Vec<_> = headers.collect();
    headers.sort_by(|a, b| a.0.cmp(&b.0));
    headers
}

/// The requests cairn's own path takes from `stream`, in order, until it would hand the
/// connection to hyper, wait for bytes that never come, or close after a request; and the bytes
/// it writes to the instance for them.
fn cairn_frames(stream: &[u8]) -> (Vec<Framed>, Vec<u8>) {
    let mut taken = Vec::new();
    let mut upstream = Vec::new();
    let mut at = 0;
    loop {
        let mut headers = request_headers();
        let buf = &stream[at..];
        let Read::Request(req) = parse_request(buf, &mut headers, MAX_HEAD) else {
            return (taken, upstream);
        };
        let body = &buf[req.len..req.len + req.body];
        taken.push(Framed {
            method: req.method.to_string(),
            target: req.path.to_string(),
            headers: by_name(
                req.headers
                    .iter()
                    .map(|h| (h.name.to_ascii_lowercase(), h.value.to_vec())),
            ),
            body: Some(body.to_vec()),
        });
        let mut head = Vec::new();
        write_request(&req, buf, "10.0.0.9", &mut head);
        end_request(&mut head, &buf[req.host.clone()]);
        upstream.extend_from_slice(&head);
        upstream.extend_from_slice(body);
        if req.close {
            return (taken, upstream);
        }
        at += req.len + req.body;
    }
}

/// The requests hyper's HTTP/1.1 server frames from `stream`, sent whole and then closed (hyper
/// goes on with what it has, as half-closed).
async fn hyper_frames(stream: &[u8]) -> Vec<Framed> {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = Arc::clone(&seen);
    let service = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
        let log = Arc::clone(&log);
        async move {
            let (parts, body) = req.into_parts();
            let body = body.collect().await.ok().map(|b| b.to_bytes().to_vec());
            log.lock().expect("the log lock").push(Framed {
                method: parts.method.to_string(),
                target: parts.uri.to_string(),
                headers: by_name(
                    parts
                        .headers
                        .iter()
                        .map(|(n, v)| (n.as_str().to_string(), v.as_bytes().to_vec())),
                ),
                body,
            });
            Ok::<_, Infallible>(hyper::Response::new(Full::new(Bytes::new())))
        }
    });
    let (client, server) = tokio::io::duplex(1 << 20);
    let serve = http1::Builder::new()
        .half_close(true)
        .max_buf_size(MAX_HEAD)
        .serve_connection(TokioIo::new(server), service);
    let (mut read, mut write) = tokio::io::split(client);
    let send = async {
        let _ = write.write_all(stream).await;
        let _ = write.shutdown().await;
        // Answers are read so hyper never waits to write them.
        let mut sink = Vec::new();
        let _ = read.read_to_end(&mut sink).await;
    };
    let run = async { tokio::join!(serve, send) };
    if tokio::time::timeout(Duration::from_secs(10), run)
        .await
        .is_err()
    {
        panic!(
            "hyper did not finish with {:?}",
            String::from_utf8_lossy(stream)
        );
    }
    let frames = seen.lock().expect("the log lock").clone();
    frames
}

/// Fails when cairn takes a request hyper frames otherwise or does not take, or writes one to
/// the instance that hyper (as the instance) frames otherwise.
fn check(runtime: &tokio::runtime::Runtime, stream: &[u8]) -> Result<(), TestCaseError> {
    let (cairn, upstream) = cairn_frames(stream);
    let hyper = runtime.block_on(hyper_frames(stream));
    prop_assert!(
        hyper.len() >= cairn.len() && hyper[..cairn.len()] == cairn[..],
        "cairn and hyper frame {:?} differently:\ncairn: {:#?}\nhyper: {:#?}",
        String::from_utf8_lossy(stream),
        cairn,
        hyper
    );
    let delivered = runtime.block_on(hyper_frames(&upstream));
    let sent = |f: &[Framed]| -> Vec<(String, String, Option<Vec<u8>>)> {
        f.iter()
            .map(|f| (f.method.clone(), f.target.clone(), f.body.clone()))
            .collect()
    };
    prop_assert_eq!(
        sent(&delivered),
        sent(&cairn),
        "the instance would frame what cairn wrote for {:?} otherwise: {:?}",
        String::from_utf8_lossy(stream),
        String::from_utf8_lossy(&upstream)
    );
    Ok(())
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a test runtime")
}

/// A request line: a plain one most of the time, else with the methods, targets and versions a
/// hostile client tries.
fn request_line() -> impl Strategy<Value = String> {
    let plain = (
        prop::sample::select(vec!["GET", "POST", "PUT", "DELETE", "HEAD"]),
        prop::sample::select(vec!["/", "/a?b=1", "/x/y"]),
    )
        .prop_map(|(m, t)| format!("{m} {t} HTTP/1.1"));
    let hostile = (
        prop::sample::select(vec![
            "GET",
            "POST",
            "get",
            "G\tET",
            "CONNECT",
            "OPTIONS",
            "",
            "P\u{80}ST",
        ]),
        prop::sample::select(vec![
            "/",
            "*",
            "http://web/x",
            "/a b",
            "/%00",
            "//x",
            "/a\x7f",
            "web:80",
            "/\u{e9}",
        ]),
        prop::sample::select(vec![
            "HTTP/1.1",
            "HTTP/1.0",
            "HTTP/1.2",
            "HTTP/2.0",
            "http/1.1",
            "HTTP/1.1 ",
            "HTTP/11",
        ]),
    )
        .prop_map(|(m, t, v)| format!("{m} {t} {v}"));
    prop_oneof![4 => plain, 1 => hostile]
}

/// A header line: framing headers above all, with odd spellings, separators and values.
fn header_line() -> impl Strategy<Value = String> {
    let names = |names: Vec<&'static str>| prop::sample::select(names);
    let values = |values: Vec<&'static str>| prop::sample::select(values);
    let length = (
        names(vec![
            "Content-Length",
            "content-length",
            "Content-Length ",
            " Content-Length",
            "Content_Length",
        ]),
        values(vec![
            "0",
            "3",
            "5",
            "11",
            "05",
            "+5",
            "-1",
            "5, 5",
            "5,5",
            " 5 ",
            "0x5",
            "5\t",
            "18446744073709551616",
            "",
        ]),
    );
    let coding = (
        names(vec![
            "Transfer-Encoding",
            "transfer-encoding",
            "Transfer-Encoding ",
        ]),
        values(vec![
            "chunked",
            "CHUNKED",
            "chunked, identity",
            "gzip, chunked",
            "xchunked",
            "chunked\t",
            "identity",
            "",
        ]),
    );
    let connection = (
        names(vec!["Connection", "connection", "Proxy-Connection"]),
        values(vec![
            "close",
            "Close",
            "keep-alive",
            "close, keep-alive",
            "keep-alive, close",
            "content-length",
            "Content-Length, close",
            "transfer-encoding",
            "host",
            "TE",
            "x-a",
            "upgrade",
            "",
        ]),
    );
    let other = (
        names(vec![
            "Host",
            "Expect",
            "Upgrade",
            "TE",
            "Keep-Alive",
            "X-Forwarded-For",
            "X-A",
            "Trailer",
        ]),
        values(vec![
            "web",
            "",
            "100-continue",
            "websocket",
            "trailers",
            "1.2.3.4",
            "a\u{80}b",
            "a b",
        ]),
    );
    let header = prop_oneof![
        3 => length,
        2 => coding,
        2 => connection,
        2 => other,
    ];
    (
        header,
        prop::sample::select(vec![": ", ": ", ":", ":\t", " : ", ":  "]),
    )
        .prop_map(|((n, v), s)| format!("{n}{s}{v}"))
}

/// A body: plain bytes, or chunks well or badly formed.
fn body() -> impl Strategy<Value = String> {
    prop::sample::select(vec![
        "",
        "abc",
        "hello",
        "hello world",
        "0\r\n\r\n",
        "5\r\nhello\r\n0\r\n\r\n",
        "5;x=y\r\nhello\r\n0\r\nX-T: 1\r\n\r\n",
        "3\r\nabc\r\n",
        "zz\r\n",
        "GET /smuggled HTTP/1.1\r\nHost: web\r\n\r\n",
    ])
    .prop_map(str::to_string)
}

/// One request: a line, up to 3 headers (a Host most of the time), line ends of either kind,
/// sometimes an obs-fold, and a body.
fn request() -> impl Strategy<Value = String> {
    (
        request_line(),
        prop::bool::weighted(0.85),
        prop::collection::vec(header_line(), 0..4),
        prop::sample::select(vec!["\r\n", "\r\n", "\r\n", "\n"]),
        prop::bool::weighted(0.05),
        body(),
    )
        .prop_map(|(line, host, headers, end, fold, body)| {
            let mut out = line;
            out.push_str(end);
            if host {
                out.push_str("Host: web");
                out.push_str(end);
            }
            for h in headers {
                out.push_str(&h);
                out.push_str(end);
                if fold {
                    out.push_str(" folded");
                    out.push_str(end);
                }
            }
            out.push_str(end);
            out.push_str(&body);
            out
        })
}

/// A connection's bytes: one to three requests, then, a third of the time, a few bytes changed,
/// inserted, removed, upper-cased or cut.
fn stream() -> impl Strategy<Value = Vec<u8>> {
    (
        prop::collection::vec(request(), 1..4),
        prop_oneof![
            2 => Just(Vec::new()),
            1 => prop::collection::vec((any::<prop::sample::Index>(), 0..7u8, any::<u8>()), 1..3),
        ],
    )
        .prop_map(|(requests, edits)| {
            let mut bytes = requests.concat().into_bytes();
            for (at, kind, byte) in edits {
                if bytes.is_empty() {
                    break;
                }
                let i = at.index(bytes.len());
                let hostile = [b'\r', b'\n', b' ', b'\t', b':', b',', b'0', 0, byte];
                let b = hostile[usize::from(byte) % hostile.len()];
                match kind {
                    0 => bytes[i] = b,
                    1 => bytes.insert(i, b),
                    2 | 3 => {
                        bytes.remove(i);
                    }
                    4 | 5 => bytes[i] = bytes[i].to_ascii_uppercase(),
                    _ => bytes.truncate(i),
                }
            }
            bytes
        })
}

#[test]
fn the_smuggling_corpus_is_framed_as_hyper_frames_it() {
    #[derive(serde::Deserialize)]
    struct Corpus {
        case: Vec<Case>,
    }
    #[derive(serde::Deserialize)]
    struct Case {
        name: String,
        bytes: String,
    }
    let corpus: Corpus = toml::from_str(include_str!("../../../../tests/corpus/smuggling.toml"))
        .expect("the smuggling corpus parses");
    assert!(corpus.case.len() >= 20, "the corpus lost its cases");
    let runtime = runtime();
    for case in corpus.case {
        if let Err(e) = check(&runtime, case.bytes.as_bytes()) {
            panic!("{}: {e}", case.name);
        }
    }
}

proptest! {
    // Each case runs hyper's server on an in-memory connection, twice: 20 000 take about 10 s
    // in a debug build, a bounded run for CI.
    #![proptest_config(ProptestConfig::with_cases(20_000))]

    #[test]
    fn generated_request_streams_are_framed_as_hyper_frames_them(stream in stream()) {
        thread_local! {
            static RUNTIME: tokio::runtime::Runtime = runtime();
        }
        RUNTIME.with(|runtime| check(runtime, &stream))?;
    }
}
