//! What the two HTTP/1.1 head parsers (requests in `h1`, responses in `upstream`) share: byte
//! ranges of parsed parts, and field names recognised by position across the heads of one
//! connection. A peer sends the same fields in the same order message after message (an
//! upstream its response fields, a client SDK its request fields), so a parser can usually
//! recognise a name with one byte comparison instead of looking it up as a `HeaderName` and
//! checking it against the names that frame a message or are hop-by-hop. Both writers (the
//! server's responses, the upstream client's requests) put field lines with [`put_field`].

use crate::forward::is_hop_by_hop_name;
use crate::framing::parse_length;
use http::HeaderName;
use http::header::{CONNECTION, CONTENT_LENGTH, DATE, EXPECT, HOST, TE, TRANSFER_ENCODING};

/// One field line, `name: value` and CRLF. Names and values come from `HeaderName` and
/// `HeaderValue`, which admit no CR or LF.
#[inline]
pub(crate) fn put_field(out: &mut Vec<u8>, name: &HeaderName, value: &http::HeaderValue) {
    out.extend_from_slice(name.as_str().as_bytes());
    out.extend_from_slice(b": ");
    out.extend_from_slice(value.as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// The byte range of `part` within `base`. httparse hands out subslices of the buffer it
/// parsed; their offsets are all a head needs to survive the buffer being split and frozen.
/// Heads are bounded well below 4 GiB, so `u32` suffices.
pub(crate) fn range(base: &[u8], part: &[u8]) -> (u32, u32) {
    if part.is_empty() {
        // An empty slice need not point into `base`.
        return (0, 0);
    }
    let start = (part.as_ptr() as usize).wrapping_sub(base.as_ptr() as usize);
    (start as u32, (start + part.len()) as u32)
}

/// What a field name means to HTTP/1.1 message handling.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum NameKind {
    Plain,
    ContentLength,
    TransferEncoding,
    Connection,
    Expect,
    Te,
    /// Any other hop-by-hop field (RFC 9110 §7.6.1).
    HopByHop,
    Date,
    /// `X-Request-ID`: on responses, the gateway's own replaces the upstream's.
    RequestId,
    /// `Host`, and `traceparent` below: read by the pipeline from a client's head.
    Host,
    TraceParent,
}

impl NameKind {
    /// Meant for this connection only, never forwarded.
    pub(crate) fn is_hop_by_hop(self) -> bool {
        matches!(
            self,
            NameKind::TransferEncoding | NameKind::Connection | NameKind::Te | NameKind::HopByHop
        )
    }
}

/// What a head's framing and connection fields say (RFC 9112 §6, RFC 9110 §7.6.1), read the
/// same way for requests and responses.
#[derive(Debug, Default)]
pub(crate) struct FramingFields {
    pub(crate) content_length: Option<u64>,
    pub(crate) transfer_encoding: bool,
    /// The final transfer coding is chunked.
    pub(crate) chunked: bool,
    pub(crate) close: bool,
    pub(crate) keep_alive: bool,
    /// `Connection` names a field beyond the fixed hop-by-hop set.
    pub(crate) names_others: bool,
}

/// A `Content-Length` that cannot frame a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BadLength {
    Invalid,
    /// Two different values (a list, or several fields).
    Conflicting,
}

impl FramingFields {
    /// Takes in one field of the given kind; other kinds are ignored.
    pub(crate) fn add(&mut self, kind: NameKind, value: &[u8]) -> Result<(), BadLength> {
        match kind {
            NameKind::ContentLength => {
                for part in value.split(|b| *b == b',') {
                    let n = parse_length(part.trim_ascii()).ok_or(BadLength::Invalid)?;
                    if self.content_length.is_some_and(|c| c != n) {
                        return Err(BadLength::Conflicting);
                    }
                    self.content_length = Some(n);
                }
            }
            NameKind::TransferEncoding => {
                self.transfer_encoding = true;
                // Only the final coding counts, and a later field comes after an earlier.
                self.chunked = value
                    .rsplit(|b| *b == b',')
                    .next()
                    .is_some_and(|c| c.trim_ascii().eq_ignore_ascii_case(b"chunked"));
            }
            NameKind::Connection => {
                for token in value.split(|b| *b == b',') {
                    let token = token.trim_ascii();
                    let is_close = token.eq_ignore_ascii_case(b"close");
                    self.close |= is_close;
                    self.keep_alive |= token.eq_ignore_ascii_case(b"keep-alive");
                    self.names_others |=
                        !is_close && !token.is_empty() && !is_hop_by_hop_name(token);
                }
            }
            _ => {}
        }
        Ok(())
    }
}

struct Known {
    /// The name exactly as the peer sent it (case included).
    raw: Vec<u8>,
    name: HeaderName,
    kind: NameKind,
}

/// The names a connection's last head had, by position. Bounded by the parser's field limit.
#[derive(Default)]
pub(crate) struct NameCache(Vec<Known>);

impl NameCache {
    /// The kind of the field at position `pos` named `raw`, remembered for the next head.
    /// `None`: not a valid field name.
    pub(crate) fn classify(&mut self, pos: usize, raw: &[u8]) -> Option<NameKind> {
        if let Some(k) = self.0.get(pos)
            && k.raw == raw
        {
            return Some(k.kind);
        }
        let name = HeaderName::from_bytes(raw).ok()?;
        let kind = if name == CONTENT_LENGTH {
            NameKind::ContentLength
        } else if name == TRANSFER_ENCODING {
            NameKind::TransferEncoding
        } else if name == CONNECTION {
            NameKind::Connection
        } else if name == EXPECT {
            NameKind::Expect
        } else if name == TE {
            NameKind::Te
        } else if is_hop_by_hop_name(raw) {
            NameKind::HopByHop
        } else if name == DATE {
            NameKind::Date
        } else if name == crate::forward::X_REQUEST_ID {
            NameKind::RequestId
        } else if name == HOST {
            NameKind::Host
        } else if name == crate::forward::TRACEPARENT {
            NameKind::TraceParent
        } else {
            NameKind::Plain
        };
        match self.0.get_mut(pos) {
            Some(k) => {
                k.raw.clear();
                k.raw.extend_from_slice(raw);
                k.name = name;
                k.kind = kind;
            }
            None => {
                // Positions are classified in order, so `pos` is the next slot.
                debug_assert_eq!(pos, self.0.len());
                self.0.push(Known {
                    raw: raw.to_vec(),
                    name,
                    kind,
                });
            }
        }
        Some(kind)
    }

    /// The name classified last at `pos`.
    pub(crate) fn name(&self, pos: usize) -> Option<&HeaderName> {
        self.0.get(pos).map(|k| &k.name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_classified_once_and_replaced_when_they_change() {
        let mut c = NameCache::default();
        assert_eq!(
            c.classify(0, b"Content-Length"),
            Some(NameKind::ContentLength)
        );
        assert_eq!(c.classify(1, b"X-Custom"), Some(NameKind::Plain));
        assert_eq!(c.classify(2, b"keep-alive"), Some(NameKind::HopByHop));
        assert_eq!(
            c.classify(0, b"Content-Length"),
            Some(NameKind::ContentLength)
        );
        assert_eq!(c.classify(1, b"TE"), Some(NameKind::Te));
        assert_eq!(c.name(1), Some(&TE));
        assert_eq!(c.classify(2, b"bad name"), None);
        assert!(NameKind::Te.is_hop_by_hop() && !NameKind::Expect.is_hop_by_hop());
    }

    #[test]
    fn date_and_request_id_are_recognised_in_any_case() {
        let mut c = NameCache::default();
        assert_eq!(c.classify(0, b"DATE"), Some(NameKind::Date));
        assert_eq!(c.classify(1, b"X-Request-Id"), Some(NameKind::RequestId));
        assert_eq!(c.classify(2, b"HOST"), Some(NameKind::Host));
        assert_eq!(c.classify(3, b"TraceParent"), Some(NameKind::TraceParent));
        assert!(!NameKind::Date.is_hop_by_hop() && !NameKind::RequestId.is_hop_by_hop());
    }
}
