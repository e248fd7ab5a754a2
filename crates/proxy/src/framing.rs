//! HTTP/1.1 message body framing (RFC 9112 §6–7), shared by both sides of the proxy: the
//! server reads client request bodies with it, the upstream client reads response bodies.
//! The decoder works on a connection's read buffer and hands out frames that share its bytes.

use bytes::{Buf, Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue};
use http_body::Frame;

/// A chunk-size line with extensions; anything longer is not a chunk header.
const MAX_CHUNK_LINE: usize = 4 * 1024;
/// A trailer section larger than this is refused, so the buffer stays bounded.
const MAX_TRAILERS: usize = 64 * 1024;
/// httparse fills a stack array of this many trailer fields.
const MAX_TRAILER_FIELDS: usize = 64;

/// How a message body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Framing {
    Length(u64),
    Chunked,
    /// Until the sender closes: the connection cannot carry another message.
    Close,
}

/// The body's framing was broken.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FramingError {
    #[error("connection closed before message completed")]
    Incomplete,
    #[error("invalid chunk framing")]
    Chunk,
    #[error("invalid trailer fields")]
    Trailers,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Length(u64),
    ChunkSize,
    ChunkData(u64),
    /// The CRLF after a chunk's data.
    ChunkEnd,
    Trailers,
    Close,
    Done,
}

/// Turns the bytes of one message body, as they arrive, into frames.
#[derive(Debug)]
pub(crate) struct Decoder {
    state: State,
}

impl Decoder {
    pub(crate) fn new(framing: Framing) -> Self {
        Self {
            state: match framing {
                Framing::Length(0) => State::Done,
                Framing::Length(n) => State::Length(n),
                Framing::Chunked => State::ChunkSize,
                Framing::Close => State::Close,
            },
        }
    }

    pub(crate) fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Bytes still to come, when the framing says.
    pub(crate) fn remaining(&self) -> Option<u64> {
        match self.state {
            State::Length(n) => Some(n),
            State::Done => Some(0),
            _ => None,
        }
    }

    /// How much room the next read should have: no more than the body still needs (so a
    /// small body does not grow the buffer), at least enough to make progress.
    pub(crate) fn want(&self, read_size: usize) -> usize {
        match self.state {
            State::Length(rem) | State::ChunkData(rem) => {
                (rem.min(read_size as u64) as usize).max(1024)
            }
            _ => read_size,
        }
    }

    /// Takes the whole body at once when it is all in `buf` already (a small body that came
    /// with its head). `None`: it is not, or it is not length-delimited.
    pub(crate) fn take_whole(&mut self, buf: &mut BytesMut) -> Option<Bytes> {
        match self.state {
            State::Length(n) if buf.len() as u64 >= n => {
                self.state = State::Done;
                Some(buf.split_to(n as usize).freeze())
            }
            _ => None,
        }
    }

    /// The next frame from the bytes in `buf`; `eof`: the sender closed and nothing more will
    /// arrive. `Ok(None)` with the body not done means more bytes are needed.
    pub(crate) fn decode(
        &mut self,
        buf: &mut BytesMut,
        eof: bool,
    ) -> Result<Option<Frame<Bytes>>, FramingError> {
        loop {
            match self.state {
                State::Length(rem) | State::ChunkData(rem) if !buf.is_empty() => {
                    let n = rem.min(buf.len() as u64);
                    let data = buf.split_to(n as usize).freeze();
                    let left = rem - n;
                    self.state = match self.state {
                        State::Length(_) if left == 0 => State::Done,
                        State::Length(_) => State::Length(left),
                        _ if left == 0 => {
                            self.state = State::ChunkEnd;
                            self.settle(buf);
                            self.state
                        }
                        _ => State::ChunkData(left),
                    };
                    return Ok(Some(Frame::data(data)));
                }
                State::Close if !buf.is_empty() => {
                    return Ok(Some(Frame::data(buf.split().freeze())));
                }
                State::Trailers if !buf.is_empty() && !buf.starts_with(b"\r\n") => {
                    return self.trailers(buf, eof);
                }
                State::Done => return Ok(None),
                _ => {}
            }
            if self.advance(buf)? {
                continue;
            }
            if eof {
                if self.state == State::Close {
                    self.state = State::Done;
                    return Ok(None);
                }
                return Err(FramingError::Incomplete);
            }
            return Ok(None);
        }
    }

    /// Chunked-framing steps that produce no frame: a chunk's CRLF, the next size line, an
    /// empty trailer section (→ done). `Ok(true)`: progressed.
    fn advance(&mut self, buf: &mut BytesMut) -> Result<bool, FramingError> {
        match self.state {
            State::ChunkEnd => {
                if buf.len() < 2 {
                    return Ok(false);
                }
                if &buf[..2] != b"\r\n" {
                    return Err(FramingError::Chunk);
                }
                buf.advance(2);
                self.state = State::ChunkSize;
                Ok(true)
            }
            State::ChunkSize => match httparse::parse_chunk_size(buf) {
                // httparse reads a line without digits as size 0; that is not a last chunk.
                Ok(httparse::Status::Complete(_))
                    if !buf.first().is_some_and(u8::is_ascii_hexdigit) =>
                {
                    Err(FramingError::Chunk)
                }
                Ok(httparse::Status::Complete((used, size))) => {
                    buf.advance(used);
                    self.state = if size == 0 {
                        State::Trailers
                    } else {
                        State::ChunkData(size)
                    };
                    Ok(true)
                }
                Ok(httparse::Status::Partial) if buf.len() > MAX_CHUNK_LINE => {
                    Err(FramingError::Chunk)
                }
                Ok(httparse::Status::Partial) => Ok(false),
                Err(_) => Err(FramingError::Chunk),
            },
            State::Trailers if buf.starts_with(b"\r\n") => {
                buf.advance(2);
                self.state = State::Done;
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    /// After a chunk's last byte, the terminator and the last chunk usually sit in the buffer
    /// already: consume them so the body ends without another poll.
    fn settle(&mut self, buf: &mut BytesMut) {
        loop {
            match self.advance(buf) {
                Ok(true) if self.state == State::Done => return,
                Ok(true) if !matches!(self.state, State::ChunkData(_)) => {}
                // Errors surface on the next call, which meets the same bytes.
                _ => return,
            }
        }
    }

    fn trailers(
        &mut self,
        buf: &mut BytesMut,
        eof: bool,
    ) -> Result<Option<Frame<Bytes>>, FramingError> {
        let mut fields = [httparse::EMPTY_HEADER; MAX_TRAILER_FIELDS];
        let (used, map) = match httparse::parse_headers(buf, &mut fields) {
            Ok(httparse::Status::Complete((used, fields))) => {
                let mut map = HeaderMap::with_capacity(fields.len());
                for f in fields.iter() {
                    let name = HeaderName::from_bytes(f.name.as_bytes())
                        .map_err(|_| FramingError::Trailers)?;
                    let value =
                        HeaderValue::from_bytes(f.value).map_err(|_| FramingError::Trailers)?;
                    map.append(name, value);
                }
                (used, map)
            }
            Ok(httparse::Status::Partial) if buf.len() < MAX_TRAILERS => {
                return if eof {
                    Err(FramingError::Incomplete)
                } else {
                    Ok(None)
                };
            }
            _ => return Err(FramingError::Trailers),
        };
        buf.advance(used);
        self.state = State::Done;
        Ok(Some(Frame::trailers(map)))
    }
}

/// Digits only: `+5`, `0x5` or an empty value are not lengths.
pub(crate) fn parse_length(s: &[u8]) -> Option<u64> {
    if s.is_empty() || s.len() > 19 || !s.iter().all(u8::is_ascii_digit) {
        return None;
    }
    s.iter().try_fold(0u64, |n, d| {
        n.checked_mul(10)?.checked_add(u64::from(d - b'0'))
    })
}

/// Writes a chunk's size line (`1a2b\r\n`).
pub(crate) fn chunk_size_line(w: &mut Vec<u8>, n: usize) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut digits = [0u8; 16];
    let mut i = digits.len();
    let mut n = n;
    loop {
        i -= 1;
        digits[i] = HEX[n & 15];
        n >>= 4;
        if n == 0 {
            break;
        }
    }
    w.extend_from_slice(&digits[i..]);
    w.extend_from_slice(b"\r\n");
}

/// `input` cut into the pieces socket reads might deliver: ending at each of `cuts` (taken
/// modulo the input's length, in order), the last at the end. For the parsers' split tests.
#[cfg(test)]
pub(crate) fn pieces<'a>(input: &'a [u8], cuts: &[usize]) -> Vec<&'a [u8]> {
    let mut ends: Vec<usize> = cuts.iter().map(|c| c % (input.len() + 1)).collect();
    ends.sort_unstable();
    ends.push(input.len());
    let mut start = 0;
    ends.into_iter()
        .map(|end| {
            let piece = &input[start..end];
            start = end;
            piece
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(framing: Framing, input: &[u8]) -> Result<(Vec<u8>, Option<HeaderMap>), FramingError> {
        let mut d = Decoder::new(framing);
        let mut buf = BytesMut::from(input);
        let (mut data, mut trailers) = (Vec::new(), None);
        while let Some(f) = d.decode(&mut buf, true)? {
            match f.into_data() {
                Ok(b) => data.extend_from_slice(&b),
                Err(f) => trailers = f.into_trailers().ok(),
            }
        }
        assert!(d.is_done());
        Ok((data, trailers))
    }

    #[test]
    fn chunked_bodies_decode_with_extensions_and_trailers() {
        let (data, t) = all(
            Framing::Chunked,
            b"5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nx-sum: 1\r\n\r\n",
        )
        .expect("valid");
        assert_eq!(data, b"hello world");
        assert_eq!(t.expect("trailers")["x-sum"], "1");
        assert_eq!(all(Framing::Chunked, b"0\r\n\r\n").expect("empty").0, b"");
    }

    #[test]
    fn broken_chunk_framing_is_an_error_not_a_guess() {
        for bad in [
            &b"zz\r\nhello\r\n0\r\n\r\n"[..],
            b"5\r\nhelloXX0\r\n\r\n",
            b"\r\n\r\n",
            b"5\r\nhel",
        ] {
            assert!(all(Framing::Chunked, bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn length_bodies_stop_at_the_length_and_short_ones_fail() {
        let mut d = Decoder::new(Framing::Length(3));
        let mut buf = BytesMut::from(&b"abcNEXT"[..]);
        let f = d.decode(&mut buf, false).expect("ok").expect("frame");
        assert_eq!(f.into_data().expect("data"), "abc");
        assert!(d.is_done());
        assert_eq!(&buf[..], b"NEXT");
        assert_eq!(
            all(Framing::Length(5), b"abc"),
            Err(FramingError::Incomplete)
        );
    }

    /// What a decoder made of some bytes: the data, whether trailers came, where the message
    /// ended (bytes of the input consumed) and how it ended (`Ok(true)`: done).
    type Outcome = (Vec<u8>, bool, usize, Result<bool, FramingError>);

    /// Feeds `input` to a decoder in the [`pieces`] `cuts` make of it, with end of stream
    /// after the last piece.
    fn feed(framing: Framing, input: &[u8], cuts: &[usize]) -> Outcome {
        let pieces = pieces(input, cuts);
        let mut d = Decoder::new(framing);
        let (mut buf, mut data, mut trailers, mut fed) = (BytesMut::new(), Vec::new(), false, 0);
        for (i, piece) in pieces.iter().enumerate() {
            buf.extend_from_slice(piece);
            fed += piece.len();
            let eof = i + 1 == pieces.len();
            loop {
                match d.decode(&mut buf, eof) {
                    Ok(Some(f)) => match f.into_data() {
                        Ok(b) => data.extend_from_slice(&b),
                        Err(f) => trailers |= f.is_trailers(),
                    },
                    Ok(None) => break,
                    Err(e) => return (data, trailers, fed - buf.len(), Err(e)),
                }
            }
            if d.is_done() {
                break;
            }
        }
        (data, trailers, fed - buf.len(), Ok(d.is_done()))
    }

    /// A chunked body with the given chunks, size lines in varying spellings, optional
    /// extensions and trailer fields.
    fn chunked(chunks: &[(Vec<u8>, u8)], trailers: &[(u8, u8)]) -> Vec<u8> {
        let mut out = Vec::new();
        for (data, style) in chunks.iter().filter(|(d, _)| !d.is_empty()) {
            let size = match style % 3 {
                0 => format!("{:x}", data.len()),
                1 => format!("{:X}", data.len()),
                _ => format!("{:04x}", data.len()),
            };
            out.extend_from_slice(size.as_bytes());
            if style % 4 == 3 {
                out.extend_from_slice(b";name=\"va lue\";flag");
            }
            out.extend_from_slice(b"\r\n");
            out.extend_from_slice(data);
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"0\r\n");
        for (name, value) in trailers {
            out.extend_from_slice(format!("x-t{name}: v{value}\r\n").as_bytes());
        }
        out.extend_from_slice(b"\r\n");
        out
    }

    proptest::proptest! {
        /// However reads split a well-formed chunked body, it decodes to its data, ends exactly
        /// at its last byte (what follows belongs to the next message) and says whether it
        /// had trailers.
        #[test]
        fn chunked_bodies_decode_the_same_however_they_arrive(
            chunks in proptest::collection::vec((proptest::collection::vec(proptest::num::u8::ANY, 0..40), 0u8..12), 0..6),
            trailers in proptest::collection::vec((0u8..4, proptest::num::u8::ANY), 0..3),
            next in proptest::collection::vec(proptest::num::u8::ANY, 0..20),
            cuts in proptest::collection::vec(proptest::num::usize::ANY, 0..8),
        ) {
            let body = chunked(&chunks, &trailers);
            let mut input = body.clone();
            input.extend_from_slice(&next);
            let want: Vec<u8> = chunks.iter().flat_map(|(d, _)| d.iter().copied()).collect();
            let got = feed(Framing::Chunked, &input, &cuts);
            proptest::prop_assert_eq!(got, (want, !trailers.is_empty(), body.len(), Ok(true)));
        }

        /// Any bytes at all, well-formed or damaged, in any framing: the decoder never panics,
        /// and how the reads are split never changes what it decides, above all where the
        /// message ends, which is what request smuggling exploits when two parsers disagree.
        #[test]
        fn any_bytes_decode_the_same_however_they_arrive(
            chunks in proptest::collection::vec((proptest::collection::vec(proptest::num::u8::ANY, 0..24), 0u8..12), 0..4),
            damage in proptest::collection::vec((proptest::num::usize::ANY, proptest::num::u8::ANY), 0..4),
            noise in proptest::collection::vec(proptest::num::u8::ANY, 0..64),
            framing in 0u8..3,
            cuts_a in proptest::collection::vec(proptest::num::usize::ANY, 0..8),
            cuts_b in proptest::collection::vec(proptest::num::usize::ANY, 0..8),
        ) {
            let mut input = chunked(&chunks, &[]);
            input.extend_from_slice(&noise);
            for (at, byte) in damage {
                let at = at % input.len();
                input[at] = byte;
            }
            let framing = match framing {
                0 => Framing::Chunked,
                1 => Framing::Length(noise.len() as u64),
                _ => Framing::Close,
            };
            let whole = feed(framing, &input, &[]);
            proptest::prop_assert_eq!(&feed(framing, &input, &cuts_a), &whole);
            proptest::prop_assert_eq!(&feed(framing, &input, &cuts_b), &whole);
        }
    }

    #[test]
    fn size_lines_are_lowercase_hex() {
        let mut w = Vec::new();
        chunk_size_line(&mut w, 0x1a2b);
        assert_eq!(w, b"1a2b\r\n");
        assert_eq!(parse_length(b"007"), Some(7));
        assert_eq!(parse_length(b"+7"), None);
    }
}
