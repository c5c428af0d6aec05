//! Request smuggling, class by class, through a real cairn to a raw-socket upstream that records
//! what it receives. Each request is either refused before it reaches an instance, or reaches
//! it exactly as hyper frames it: the same requests, the same bodies, each framed once, and one
//! answer per request for the client. The classes are in `tests/corpus/smuggling.toml`; the
//! differential test in `src/proxy/http/h1/differential.rs` feeds the same streams, and
//! generated ones, to cairn's own parser and to hyper's.

use std::time::Duration;

use crate::hostile::http_setup;
use crate::support::raw::{exchange, Received, Reply};

const QUIET: Duration = Duration::from_millis(400);

/// One request stream of the corpus, and what must come of it.
#[derive(serde::Deserialize)]
struct Case {
    name: String,
    bytes: String,
    expect: Expect,
    /// For `delivered`: the request lines and bodies the instance gets.
    #[serde(default)]
    requests: Vec<(String, String)>,
}

/// What must come of one client's bytes.
#[derive(serde::Deserialize, PartialEq)]
#[serde(rename_all = "lowercase")]
enum Expect {
    /// A 4xx answer, and nothing reaches the instance.
    Refused,
    /// The instance gets exactly the case's requests, and the client one 200 for each.
    Delivered,
    /// Nothing whole reaches the instance, and the client gets no success: the body broke
    /// after the head was taken.
    Dropped,
}

/// The named classes (`tests/corpus/smuggling.toml`), shared with the differential test.
fn corpus() -> Vec<Case> {
    #[derive(serde::Deserialize)]
    struct Corpus {
        case: Vec<Case>,
    }
    let text = include_str!("../corpus/smuggling.toml");
    toml::from_str::<Corpus>(text)
        .expect("the smuggling corpus parses")
        .case
}

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
    let corpus = corpus();
    assert!(corpus.len() >= 20, "the corpus lost its cases");
    for case in &corpus {
        let before = up.received().len();
        let out = exchange(listen, case.bytes.as_bytes(), QUIET).await;
        let got = up.received()[before..].to_vec();
        let answered = statuses(&out);
        let ok = match case.expect {
            Expect::Refused => {
                got.is_empty() && answered.len() == 1 && (400..500).contains(&answered[0])
            }
            Expect::Delivered => {
                let seen: Vec<(&str, &[u8])> = got
                    .iter()
                    .map(|r| (r.line.as_str(), r.body.as_slice()))
                    .collect();
                let want: Vec<(&str, &[u8])> = case
                    .requests
                    .iter()
                    .map(|(line, body)| (line.as_str(), body.as_bytes()))
                    .collect();
                seen == want && got.iter().all(framed_once) && answered == vec![200; want.len()]
            }
            Expect::Dropped => got.is_empty() && !answered.contains(&200),
        };
        if !ok {
            wrong.push(format!(
                "{}:\n  client got {out:?}\n  instance got {got:?}",
                case.name
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
