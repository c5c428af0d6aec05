//! Where a chunked body ends. The body is passed on as it came, chunk sizes, extensions and
//! trailers included; only its end is looked for, so the connection can carry the next message.

use std::fmt;

/// How far into a chunked body the bytes seen so far reach. The grammar is RFC 9112 §7.1's,
/// held as strictly as hyper's decoder holds it: a size of hex digits, optional blanks, an
/// optional `;` extension, then CRLF; data then CRLF; trailer lines ending in CRLF. A bare LF
/// anywhere, or a stray byte after a size, is an error: two parsers that disagree on where a
/// chunked body ends are how responses are split.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Chunked {
    /// Reading a chunk's size; `digits` tells whether one has been seen.
    Size { size: u64, digits: bool },
    /// Blanks after the size.
    SizeBlank { size: u64 },
    /// Past the size: an extension, up to the end of the line.
    Extension { size: u64 },
    /// The size line's CR seen: its LF next.
    SizeLf { size: u64 },
    /// Inside a chunk's data, with this many bytes to go.
    Data(u64),
    /// After a chunk's data: its CR.
    DataCr,
    /// After a chunk's data and CR: its LF.
    DataLf,
    /// After the last chunk: at the start of a trailer line, or of the final empty line.
    LineStart,
    /// Inside a trailer field, up to the end of its line.
    Trailer,
    /// A trailer line's CR seen: its LF next.
    TrailerLf,
    /// Seen the final empty line's CR.
    FinalLf,
    /// The body is over.
    Done,
}

/// What the next bytes of a chunked body carry.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Piece {
    /// `skip` framing bytes, then `len` bytes of data.
    Data { skip: usize, len: usize },
    /// The trailer section, this many bytes (trailer fields and the final empty line): the
    /// body is over.
    End(usize),
    /// Not enough bytes to tell.
    More,
}

/// A chunked body that breaks the framing rules.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct BadChunk(&'static str);

impl fmt::Display for BadChunk {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "malformed chunked body: {}", self.0)
    }
}

impl std::error::Error for BadChunk {}

impl Chunked {
    pub(crate) fn new() -> Chunked {
        Chunked::Size {
            size: 0,
            digits: false,
        }
    }

    /// Reads `bytes`, the body's next bytes. Returns how many of them belong to the body: all
    /// of them while it goes on, fewer when it ends inside them.
    ///
    /// # Errors
    /// [`BadChunk`] when the bytes are not a chunked body.
    pub(crate) fn advance(&mut self, bytes: &[u8]) -> Result<usize, BadChunk> {
        let mut i = 0;
        while i < bytes.len() {
            let b = bytes[i];
            *self = match *self {
                Chunked::Done => return Ok(i),
                Chunked::Data(left) => {
                    // Data is skipped whole, not byte by byte.
                    let take = left.min((bytes.len() - i) as u64);
                    i += take as usize;
                    *self = if take == left {
                        Chunked::DataCr
                    } else {
                        Chunked::Data(left - take)
                    };
                    continue;
                }
                Chunked::Size { size, digits } => match b {
                    b'0'..=b'9' | b'a'..=b'f' | b'A'..=b'F' => {
                        let digit = (b as char).to_digit(16).unwrap_or(0) as u64;
                        let size = size
                            .checked_mul(16)
                            .and_then(|s| s.checked_add(digit))
                            .filter(|s| *s < 1 << 62)
                            .ok_or(BadChunk("chunk size too large"))?;
                        Chunked::Size { size, digits: true }
                    }
                    _ if !digits => return Err(BadChunk("chunk size is not hexadecimal")),
                    b' ' | b'\t' => Chunked::SizeBlank { size },
                    b';' => Chunked::Extension { size },
                    b'\r' => Chunked::SizeLf { size },
                    _ => return Err(BadChunk("stray byte after a chunk size")),
                },
                Chunked::SizeBlank { size } => match b {
                    b' ' | b'\t' => Chunked::SizeBlank { size },
                    b';' => Chunked::Extension { size },
                    b'\r' => Chunked::SizeLf { size },
                    _ => return Err(BadChunk("stray byte after a chunk size")),
                },
                Chunked::Extension { size } => match b {
                    b'\r' => Chunked::SizeLf { size },
                    b'\n' => return Err(BadChunk("bare LF in a chunk extension")),
                    _ => Chunked::Extension { size },
                },
                Chunked::SizeLf { size } => match b {
                    b'\n' => Chunked::after_size(size),
                    _ => return Err(BadChunk("chunk size line without its LF")),
                },
                Chunked::DataCr => match b {
                    b'\r' => Chunked::DataLf,
                    _ => return Err(BadChunk("chunk data longer than its size")),
                },
                Chunked::DataLf => match b {
                    b'\n' => Chunked::new(),
                    _ => return Err(BadChunk("chunk data without its CRLF")),
                },
                Chunked::LineStart => match b {
                    b'\r' => Chunked::FinalLf,
                    b'\n' => return Err(BadChunk("bare LF after the last chunk")),
                    _ => Chunked::Trailer,
                },
                Chunked::Trailer => match b {
                    b'\r' => Chunked::TrailerLf,
                    b'\n' => return Err(BadChunk("bare LF in a trailer")),
                    _ => Chunked::Trailer,
                },
                Chunked::TrailerLf => match b {
                    b'\n' => Chunked::LineStart,
                    _ => return Err(BadChunk("trailer line without its LF")),
                },
                Chunked::FinalLf => match b {
                    b'\n' => Chunked::Done,
                    _ => return Err(BadChunk("stray byte after the last chunk")),
                },
            };
            i += 1;
        }
        Ok(i)
    }

    /// Reads the body's next bytes, which begin `bytes`, for what they carry: data after some
    /// framing bytes (sizes, extensions, line ends), or the trailer section, given whole once
    /// it has all arrived.
    ///
    /// # Errors
    /// [`BadChunk`] when the bytes are not a chunked body.
    pub(crate) fn decode(&mut self, bytes: &[u8]) -> Result<Piece, BadChunk> {
        if self.in_trailers() {
            let mut probe = *self;
            let n = probe.advance(bytes)?;
            if !probe.is_done() {
                return Ok(Piece::More);
            }
            *self = probe;
            return Ok(Piece::End(n));
        }
        let mut skip = 0;
        while skip < bytes.len() && !self.in_trailers() && !self.is_done() {
            if let Chunked::Data(left) = *self {
                let len = left.min((bytes.len() - skip) as u64) as usize;
                self.advance(&bytes[skip..skip + len])?;
                return Ok(Piece::Data { skip, len });
            }
            skip += self.advance(&bytes[skip..=skip])?;
        }
        Ok(if skip == 0 {
            Piece::More
        } else {
            Piece::Data { skip, len: 0 }
        })
    }

    /// Whether the last chunk has been read and the trailer section is next.
    fn in_trailers(&self) -> bool {
        matches!(
            self,
            Chunked::LineStart | Chunked::Trailer | Chunked::TrailerLf | Chunked::FinalLf
        )
    }

    /// Whether the body has ended.
    pub(crate) fn is_done(&self) -> bool {
        *self == Chunked::Done
    }

    fn after_size(size: u64) -> Chunked {
        if size == 0 {
            Chunked::LineStart
        } else {
            Chunked::Data(size)
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn end_of(body: &[u8]) -> Result<Option<usize>, BadChunk> {
        let mut c = Chunked::new();
        let n = c.advance(body)?;
        Ok(c.is_done().then_some(n))
    }

    #[test]
    fn the_end_is_found_after_the_last_chunk_and_trailers() {
        let body = b"5\r\nhello\r\n0\r\n\r\nGET / HTTP/1.1\r\n";
        assert_eq!(end_of(body), Ok(Some(15)));
        let ext = b"3;name=v\r\nabc\r\n0;x\r\nExpires: never\r\nX: y\r\n\r\nnext";
        assert_eq!(end_of(ext), Ok(Some(ext.len() - 4)));
        // Blanks after a size, as RFC 9112 allows them.
        assert_eq!(end_of(b"2 \t;x\r\nab\r\n0\r\n\r\n"), Ok(Some(16)));
        // Not over yet.
        assert_eq!(end_of(b"a\r\n0123"), Ok(None));
        assert_eq!(end_of(b"0\r\n\r"), Ok(None));
    }

    #[test]
    fn broken_framing_is_an_error() {
        // What hyper's decoder refuses, cairn refuses: no two readings of one body.
        for bad in [
            &b"2\nab\r\n0\r\n\r\n"[..],
            b"2\r\nab\n0\r\n\r\n",
            b"0\r\n\n",
            b"0\r\nX: 1\n\r\n",
            b"0x5\r\n",
            b"1_0\r\n",
            b"5 6\r\n",
            b"5;a\nb\r\n",
            b"5\rX",
        ] {
            assert!(end_of(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
        assert!(end_of(b"zz\r\n").is_err());
        assert!(end_of(b"\r\n").is_err());
        assert!(end_of(b"2\r\nabc\r\n").is_err());
        assert!(end_of(b"0\r\n\rX").is_err());
        assert!(end_of(b"ffffffffffffffffff\r\n").is_err());
    }

    /// Decodes `body` fed in pieces cut at `points`: the data, and the trailer section.
    fn decode(body: &[u8], points: &[usize]) -> Result<(Vec<u8>, Vec<u8>), BadChunk> {
        let (mut c, mut data, mut buf) = (Chunked::new(), Vec::new(), Vec::new());
        let mut at = 0;
        for &p in points.iter().chain([&body.len()]) {
            buf.extend_from_slice(&body[at..p.max(at)]);
            at = p.max(at);
            loop {
                match c.decode(&buf)? {
                    Piece::Data { skip, len } => {
                        data.extend_from_slice(&buf[skip..skip + len]);
                        buf.drain(..skip + len);
                    }
                    Piece::End(n) => return Ok((data, buf[..n].to_vec())),
                    Piece::More => break,
                }
            }
        }
        Ok((data, Vec::new()))
    }

    #[test]
    fn decoding_gives_the_data_then_the_trailer_section() {
        let body = b"5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-Sum: 42\r\n\r\n";
        let (data, trailers) = decode(body, &[1, 4, 9, 12, 30, 33]).unwrap();
        assert_eq!(data, b"hello world");
        assert_eq!(trailers, b"X-Sum: 42\r\n\r\n");
        assert!(decode(b"3\r\nabcd\r\n", &[]).is_err());
    }

    /// `chunks` as a chunked body, then `end` (the last chunk and the trailer section).
    fn chunked_body(chunks: &[Vec<u8>], end: &[u8]) -> Vec<u8> {
        let mut body = Vec::new();
        for c in chunks {
            body.extend_from_slice(format!("{:x}\r\n", c.len()).as_bytes());
            body.extend_from_slice(c);
            body.extend_from_slice(b"\r\n");
        }
        body.extend_from_slice(end);
        body
    }

    proptest! {
        /// However a body is split across reads, it decodes to the same data.
        #[test]
        fn splitting_the_bytes_never_changes_the_data(
            chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 1..40), 0..6),
            cuts in proptest::collection::vec(0usize..200, 0..8),
        ) {
            let body = chunked_body(&chunks, b"0\r\nX: 1\r\n\r\n");
            let mut points: Vec<usize> = cuts.into_iter().map(|c| c % body.len()).collect();
            points.sort_unstable();
            let (data, trailers) = decode(&body, &points).unwrap();
            prop_assert_eq!(data, chunks.concat());
            prop_assert_eq!(trailers, b"X: 1\r\n\r\n".to_vec());
        }

        /// However a body is split across reads, its end is found at the same byte.
        #[test]
        fn splitting_the_bytes_never_moves_the_end(
            chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 1..40), 0..6),
            cuts in proptest::collection::vec(0usize..200, 0..8),
        ) {
            let mut body = chunked_body(&chunks, b"0\r\n\r\n");
            let len = body.len();
            body.extend_from_slice(b"GET /next");
            let mut points: Vec<usize> = cuts.into_iter().map(|c| c % body.len()).collect();
            points.sort_unstable();
            let mut c = Chunked::new();
            let (mut at, mut end) = (0, None);
            for p in points.into_iter().chain([body.len()]) {
                if p < at || end.is_some() {
                    continue;
                }
                let n = c.advance(&body[at..p]).unwrap();
                if c.is_done() {
                    end = Some(at + n);
                }
                at = p;
            }
            prop_assert_eq!(end, Some(len));
        }
    }
}
