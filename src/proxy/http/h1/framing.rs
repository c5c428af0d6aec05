//! Where an HTTP/1.1 body ends: one state machine for every path that reads one. The raw relay
//! passes a body on as it came and asks only how many of the bytes read belong to it
//! ([`Left::take`]); the decoder turns a body into data and trailers ([`Left::decode`]). Both
//! advance the same state, so a body is framed the same way whichever path carries it.

use super::chunked::{BadChunk, Chunked, Piece};

/// The first read of a message, and of each body read until reads grow.
pub(crate) const READ_SIZE: usize = 8 * 1024;

/// The largest read of a body, which reads grow to while a large body streams: fewer system
/// calls per byte.
pub(crate) const MAX_READ: usize = 256 * 1024;

/// How a message's body is delimited, as its head decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Framing {
    /// No body: a response to HEAD, a 204 or a 304.
    Empty,
    /// This many bytes.
    Length(u64),
    /// Chunked.
    Chunked,
    /// Up to the peer's close.
    UntilClose,
}

/// What is left of a body being read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Left {
    /// This many bytes, at least one.
    Length(u64),
    /// Chunks, up to the last and its trailer section.
    Chunked(Chunked),
    /// Everything up to the peer's close.
    UntilClose,
    /// The body is over: what follows is the next message.
    Done,
}

impl Left {
    /// The whole body of a message framed as `framing`.
    pub(crate) fn new(framing: Framing) -> Left {
        match framing {
            Framing::Empty | Framing::Length(0) => Left::Done,
            Framing::Length(n) => Left::Length(n),
            Framing::Chunked => Left::Chunked(Chunked::new()),
            Framing::UntilClose => Left::UntilClose,
        }
    }

    /// Whether the body is over.
    pub(crate) fn is_done(&self) -> bool {
        *self == Left::Done
    }

    /// The bytes left, when that is known.
    pub(crate) fn len(&self) -> Option<u64> {
        match self {
            Left::Length(n) => Some(*n),
            Left::Done => Some(0),
            Left::Chunked(_) | Left::UntilClose => None,
        }
    }

    /// Reads `bytes`, the body's next bytes, as they are. Returns how many of them belong to
    /// the body: all of them while it goes on, fewer when it ends inside them.
    ///
    /// # Errors
    /// [`BadChunk`] when a chunked body breaks its framing.
    pub(crate) fn take(&mut self, bytes: &[u8]) -> Result<usize, BadChunk> {
        match self {
            Left::Length(left) => {
                let n = (*left).min(bytes.len() as u64);
                self.consumed(n);
                Ok(n as usize)
            }
            Left::Chunked(c) => {
                let n = c.advance(bytes)?;
                if c.is_done() {
                    *self = Left::Done;
                }
                Ok(n)
            }
            Left::UntilClose => Ok(bytes.len()),
            Left::Done => Ok(0),
        }
    }

    /// Reads the body's next bytes, which begin `bytes`, for what they carry: data after some
    /// framing bytes, or a chunked body's trailer section, given whole once it has all arrived.
    /// A body that is over carries an empty trailer section.
    ///
    /// # Errors
    /// [`BadChunk`] when a chunked body breaks its framing.
    pub(crate) fn decode(&mut self, bytes: &[u8]) -> Result<Piece, BadChunk> {
        match self {
            Left::Done => Ok(Piece::End(0)),
            _ if bytes.is_empty() => Ok(Piece::More),
            Left::Length(left) => {
                let len = (*left).min(bytes.len() as u64);
                self.consumed(len);
                Ok(Piece::Data {
                    skip: 0,
                    len: len as usize,
                })
            }
            Left::UntilClose => Ok(Piece::Data {
                skip: 0,
                len: bytes.len(),
            }),
            Left::Chunked(c) => {
                let piece = c.decode(bytes)?;
                if c.is_done() {
                    *self = Left::Done;
                }
                Ok(piece)
            }
        }
    }

    /// The peer closed the connection here. Returns whether that ended the body cleanly.
    pub(crate) fn closed(&mut self) -> bool {
        let clean = matches!(self, Left::UntilClose | Left::Done);
        if clean {
            *self = Left::Done;
        }
        clean
    }

    /// `n` bytes of a length-delimited body have been read.
    fn consumed(&mut self, n: u64) {
        if let Left::Length(left) = self {
            *left -= n;
            if *left == 0 {
                *self = Left::Done;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// The body's bytes and where it ends, read in pieces cut at `cuts` by `take`.
    fn taken(framing: Framing, stream: &[u8], cuts: &[usize]) -> Result<Option<usize>, BadChunk> {
        let mut left = Left::new(framing);
        let mut at = 0;
        for &cut in cuts.iter().chain([&stream.len()]) {
            let cut = cut.clamp(at, stream.len());
            let n = left.take(&stream[at..cut])?;
            if left.is_done() {
                return Ok(Some(at + n));
            }
            at = cut;
        }
        Ok(None)
    }

    /// What a decoded body gave: its data, its trailer section, and where it ended.
    type Decoded = (Vec<u8>, Vec<u8>, Option<usize>);

    /// `stream` decoded in pieces cut at `cuts`.
    fn decoded(framing: Framing, stream: &[u8], cuts: &[usize]) -> Result<Decoded, BadChunk> {
        let mut left = Left::new(framing);
        let (mut data, mut buf, mut used) = (Vec::new(), Vec::new(), 0);
        let mut at = 0;
        for &cut in cuts.iter().chain([&stream.len()]) {
            let cut = cut.clamp(at, stream.len());
            buf.extend_from_slice(&stream[at..cut]);
            at = cut;
            loop {
                match left.decode(&buf)? {
                    Piece::Data { skip, len } => {
                        data.extend_from_slice(&buf[skip..skip + len]);
                        buf.drain(..skip + len);
                        used += skip + len;
                    }
                    Piece::End(n) => {
                        return Ok((data, buf[..n].to_vec(), Some(used + n)));
                    }
                    Piece::More => break,
                }
            }
        }
        Ok((data, Vec::new(), None))
    }

    #[test]
    fn each_framing_ends_where_its_head_says() {
        let next = b"GET /next";
        let mut stream = b"hello".to_vec();
        stream.extend_from_slice(next);
        assert_eq!(taken(Framing::Length(5), &stream, &[2]), Ok(Some(5)));
        assert_eq!(taken(Framing::Empty, &stream, &[]), Ok(Some(0)));
        assert_eq!(taken(Framing::Length(0), &stream, &[]), Ok(Some(0)));
        assert_eq!(taken(Framing::UntilClose, &stream, &[3]), Ok(None));
        let chunked = b"5\r\nhello\r\n0\r\n\r\nGET /next";
        assert_eq!(taken(Framing::Chunked, chunked, &[4, 11]), Ok(Some(15)));
        assert!(taken(Framing::Chunked, b"zz\r\n", &[]).is_err());
    }

    #[test]
    fn a_close_ends_only_a_body_that_runs_to_it() {
        let mut left = Left::new(Framing::UntilClose);
        assert!(left.take(b"abc").is_ok() && !left.is_done());
        assert!(left.closed() && left.is_done());
        let mut left = Left::new(Framing::Length(3));
        left.take(b"ab").unwrap();
        assert_eq!(left.len(), Some(1));
        assert!(!left.closed());
        let mut left = Left::new(Framing::Chunked);
        left.take(b"3\r\nab").unwrap();
        assert!(!left.closed());
    }

    #[test]
    fn decoding_gives_the_data_and_the_trailers() {
        let (data, trailers, end) = decoded(Framing::Length(5), b"helloGET", &[1, 3]).unwrap();
        assert_eq!(
            (&data[..], &trailers[..], end),
            (&b"hello"[..], &b""[..], Some(5))
        );
        let chunked = b"5;x\r\nhello\r\n0\r\nX-Sum: 1\r\n\r\nnext";
        let (data, trailers, end) = decoded(Framing::Chunked, chunked, &[2, 9, 20]).unwrap();
        assert_eq!(data, b"hello");
        assert_eq!(trailers, b"X-Sum: 1\r\n\r\n");
        assert_eq!(end, Some(chunked.len() - 4));
        let (data, _, end) = decoded(Framing::UntilClose, b"all of it", &[4]).unwrap();
        assert_eq!((&data[..], end), (&b"all of it"[..], None));
    }

    fn framing() -> impl Strategy<Value = (Framing, Vec<u8>)> {
        let data = proptest::collection::vec(any::<u8>(), 0..60);
        prop_oneof![
            data.clone()
                .prop_map(|d| (Framing::Length(d.len() as u64), d)),
            proptest::collection::vec(proptest::collection::vec(any::<u8>(), 1..20), 0..4)
                .prop_map(|chunks| {
                    let mut body = Vec::new();
                    for c in &chunks {
                        body.extend_from_slice(format!("{:x}\r\n", c.len()).as_bytes());
                        body.extend_from_slice(c);
                        body.extend_from_slice(b"\r\n");
                    }
                    body.extend_from_slice(b"0\r\n\r\n");
                    (Framing::Chunked, body)
                }),
        ]
    }

    proptest! {
        /// The relay and the decoder find a body's end at the same byte, however the bytes
        /// are split: the same framing whichever path reads it.
        #[test]
        fn the_relay_and_the_decoder_end_a_body_at_the_same_byte(
            (framing, body) in framing(),
            cuts in proptest::collection::vec(0usize..120, 0..6),
        ) {
            let mut stream = body.clone();
            stream.extend_from_slice(b"GET /next HTTP/1.1\r\n");
            let mut cuts = cuts;
            cuts.sort_unstable();
            let end = taken(framing, &stream, &cuts).unwrap();
            let (_, _, decoded_end) = decoded(framing, &stream, &cuts).unwrap();
            prop_assert_eq!(end, Some(body.len()));
            prop_assert_eq!(decoded_end, Some(body.len()));
        }
    }
}
