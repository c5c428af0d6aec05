//! Request smuggling, class by class, through a real cairn to a raw-socket upstream that records
//! what it receives. Each request is either refused before it reaches an instance, or reaches
//! it exactly as hyper frames it: the same requests, the same bodies, each framed once, and one
//! answer per request for the client. The differential test in `h1::head` checks cairn's own
//! parser against hyper's on generated input; these are the named classes, end to end.

use std::time::Duration;

use crate::hostile::http_setup;
use crate::support::raw::{exchange, Received, Reply};

const QUIET: Duration = Duration::from_millis(400);

/// What must come of one client's bytes.
enum Expect {
    /// A 4xx answer, and nothing reaches the instance.
    Refused,
    /// The instance gets exactly these requests (request line, body), and the client one 200
    /// for each.
    Delivered(&'static [(&'static str, &'static [u8])]),
    /// Nothing whole reaches the instance, and the client gets no success: the body broke
    /// after the head was taken.
    Dropped,
}

use Expect::{Delivered, Dropped, Refused};

/// The named classes: what a client sends, and what hyper makes of it.
const CORPUS: &[(&str, &[u8], Expect)] = &[
    (
        "Connection lists Content-Length (issue 18)",
        b"POST /a HTTP/1.1\r\nHost: web\r\nConnection: content-length\r\nContent-Length: 61\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: 6.6.6.6\r\n\r\n",
        Refused,
    ),
    (
        "Connection lists Content-Length among others",
        b"POST /a HTTP/1.1\r\nHost: web\r\nConnection: keep-alive\r\nConnection: Keep-Alive, CONTENT-LENGTH\r\nContent-Length: 5\r\n\r\nhello",
        Refused,
    ),
    (
        "Connection lists Transfer-Encoding",
        b"POST /a HTTP/1.1\r\nHost: web\r\nConnection: transfer-encoding\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        Refused,
    ),
    (
        "Connection lists Host",
        b"GET /a HTTP/1.1\r\nHost: web\r\nConnection: host\r\n\r\n",
        Refused,
    ),
    (
        "Connection lists TE, as RFC 9110 asks of a TE sender",
        b"GET /te HTTP/1.1\r\nHost: web\r\nConnection: TE\r\nTE: trailers\r\n\r\n",
        Delivered(&[("GET /te HTTP/1.1", b"")]),
    ),
    (
        "CL.TE: the chunked end hides a request from a Content-Length reader",
        b"POST /clte HTTP/1.1\r\nHost: web\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: web\r\n\r\n",
        Delivered(&[("POST /clte HTTP/1.1", b"")]),
    ),
    (
        "TE.CL: a Content-Length that ends inside the chunks",
        b"POST /tecl HTTP/1.1\r\nHost: web\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n8\r\nSMUGGLED\r\n0\r\n\r\n",
        Delivered(&[("POST /tecl HTTP/1.1", b"SMUGGLED")]),
    ),
    (
        "TE.TE: an unknown coding",
        b"POST /a HTTP/1.1\r\nHost: web\r\nTransfer-Encoding: xchunked\r\nContent-Length: 5\r\n\r\nhello",
        Refused,
    ),
    (
        "TE.TE: chunked, then a second Transfer-Encoding",
        b"POST /a HTTP/1.1\r\nHost: web\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        Refused,
    ),
    (
        "TE.TE: chunked not last in the list",
        b"POST /a HTTP/1.1\r\nHost: web\r\nTransfer-Encoding: chunked, identity\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        Refused,
    ),
    (
        "TE.TE: a space before the colon",
        b"POST /a HTTP/1.1\r\nHost: web\r\nTransfer-Encoding : chunked\r\nContent-Length: 5\r\n\r\nhello",
        Refused,
    ),
    (
        "TE.TE: folded onto the next line",
        b"POST /a HTTP/1.1\r\nHost: web\r\nTransfer-Encoding:\r\n chunked\r\nContent-Length: 5\r\n\r\nhello",
        Refused,
    ),
    (
        "TE.TE: the coding in capitals and after a tab",
        b"POST /caps HTTP/1.1\r\nHost: web\r\nTransfer-Encoding:\tCHUNKED\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        Delivered(&[("POST /caps HTTP/1.1", b"hello")]),
    ),
    (
        "CL.CL: two different lengths",
        b"POST /a HTTP/1.1\r\nHost: web\r\nContent-Length: 5\r\nContent-Length: 30\r\n\r\nhelloGET /smuggled HTTP/1.1\r\n\r\n",
        Refused,
    ),
    (
        "CL.CL: the same length twice",
        b"POST /same HTTP/1.1\r\nHost: web\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello",
        Delivered(&[("POST /same HTTP/1.1", b"hello")]),
    ),
    (
        "CL.CL: a comma-listed length",
        b"POST /a HTTP/1.1\r\nHost: web\r\nContent-Length: 5, 5\r\n\r\nhello",
        Refused,
    ),
    (
        "CL: a signed length",
        b"POST /a HTTP/1.1\r\nHost: web\r\nContent-Length: +5\r\n\r\nhello",
        Refused,
    ),
    (
        "CL: leading zeros",
        b"POST /zeros HTTP/1.1\r\nHost: web\r\nContent-Length: 0005\r\n\r\nhello",
        Delivered(&[("POST /zeros HTTP/1.1", b"hello")]),
    ),
    (
        "obs-fold in an ordinary header",
        b"GET /a HTTP/1.1\r\nHost: web\r\nX-Folded: a\r\n b\r\n\r\n",
        Refused,
    ),
    (
        "bare LF line ends",
        b"POST /lf HTTP/1.1\nHost: web\nContent-Length: 3\n\nabcGET /lf2 HTTP/1.1\nHost: web\n\n",
        Delivered(&[("POST /lf HTTP/1.1", b"abc"), ("GET /lf2 HTTP/1.1", b"")]),
    ),
    (
        "a bare CR in the head",
        b"GET /a HTTP/1.1\r\nHost: web\rX: y\r\n\r\n",
        Refused,
    ),
    (
        "a zero-length chunk, then a pipelined request",
        b"POST /zero HTTP/1.1\r\nHost: web\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /next HTTP/1.1\r\nHost: web\r\n\r\n",
        Delivered(&[("POST /zero HTTP/1.1", b""), ("GET /next HTTP/1.1", b"")]),
    ),
    (
        "chunk extensions and a trailer",
        b"POST /ext HTTP/1.1\r\nHost: web\r\nTransfer-Encoding: chunked\r\n\r\n5;a=b\r\nhello\r\n0\r\nX-T: 1\r\n\r\n",
        Delivered(&[("POST /ext HTTP/1.1", b"hello")]),
    ),
    (
        "a chunk size that overflows",
        b"POST /a HTTP/1.1\r\nHost: web\r\nTransfer-Encoding: chunked\r\n\r\n10000000000000005\r\nhello\r\n0\r\n\r\n",
        Dropped,
    ),
    (
        "pipelined requests, one with a body that holds a request",
        b"GET /1 HTTP/1.1\r\nHost: web\r\n\r\nPOST /2 HTTP/1.1\r\nHost: web\r\nContent-Length: 31\r\n\r\nGET /not-a-request HTTP/1.1\r\n\r\nGET /3 HTTP/1.1\r\nHost: web\r\n\r\n",
        Delivered(&[
            ("GET /1 HTTP/1.1", b""),
            ("POST /2 HTTP/1.1", b"GET /not-a-request HTTP/1.1\r\n\r\n"),
            ("GET /3 HTTP/1.1", b""),
        ]),
    ),
    (
        "HTTP/1.0 with a Transfer-Encoding",
        b"POST /a HTTP/1.0\r\nHost: web\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        Refused,
    ),
];

/// Whether `r` is framed once, and its framing says exactly where its body ends.
fn framed_once(r: &Received) -> bool {
    let lengths = r.header("content-length");
    let codings = r.header("transfer-encoding");
    match (lengths.as_slice(), codings.as_slice()) {
        ([], []) => r.body.is_empty(),
        ([n], []) => n.parse() == Ok(r.body.len()),
        ([], [c]) => c.eq_ignore_ascii_case("chunked"),
        _ => false,
    }
}

/// The statuses of the answers in what a client read (the bodies here never hold a status
/// line).
fn statuses(out: &str) -> Vec<u16> {
    out.match_indices("HTTP/1.1 ")
        .filter_map(|(at, _)| {
            let rest = &out.as_bytes()[at + 9..];
            let code = rest.get(..4)?;
            (code[..3].iter().all(u8::is_ascii_digit) && code[3] == b' ')
                .then(|| std::str::from_utf8(&code[..3]).ok()?.parse().ok())
                .flatten()
        })
        .collect()
}

#[tokio::test]
async fn every_smuggling_class_is_refused_or_framed_as_hyper_frames_it() {
    let (_etcd, up, cairn) = http_setup(Reply::Ok, "").await;
    let listen = cairn.listen(0);
    let mut wrong = Vec::new();
    for (what, bytes, expect) in CORPUS {
        let before = up.received().len();
        let out = exchange(listen, bytes, QUIET).await;
        let got = up.received()[before..].to_vec();
        let answered = statuses(&out);
        let ok = match expect {
            Refused => got.is_empty() && answered.len() == 1 && (400..500).contains(&answered[0]),
            Delivered(want) => {
                let seen: Vec<(&str, &[u8])> = got
                    .iter()
                    .map(|r| (r.line.as_str(), r.body.as_slice()))
                    .collect();
                seen == *want && got.iter().all(framed_once) && answered == vec![200; want.len()]
            }
            Dropped => got.is_empty() && !answered.contains(&200),
        };
        if !ok {
            wrong.push(format!(
                "{what}:\n  client got {out:?}\n  instance got {got:?}"
            ));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[tokio::test]
async fn a_response_whose_connection_lists_its_content_length_stays_framed() {
    // The instance asks each hop to drop the length that frames its answer; the client must
    // still get it, on both of cairn's paths (its own, then hyper's for a chunked upload).
    let (_etcd, up, cairn) = http_setup(
        Reply::Each(
            b"HTTP/1.1 200 OK\r\nConnection: keep-alive, content-length\r\nContent-Length: 2\r\n\r\nok",
        ),
        "",
    )
    .await;
    let out = exchange(
        cairn.listen(0),
        b"GET /own HTTP/1.1\r\nHost: web\r\n\r\nPOST /hyper HTTP/1.1\r\nHost: web\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\n\r\nGET /again HTTP/1.1\r\nHost: web\r\n\r\n",
        QUIET,
    )
    .await;
    assert_eq!(statuses(&out), [200, 200, 200], "{out}");
    let lower = out.to_lowercase();
    assert_eq!(lower.matches("content-length: 2\r\n").count(), 3, "{out}");
    assert_eq!(out.matches("\r\n\r\nok").count(), 3, "{out}");
    assert_eq!(up.received().len(), 3);
}
