//! Framing: where one message ends on a stream (RFC 3261 §18.3) and what a
//! datagram holds.
//!
//! On TCP and TLS the Content-Length header is the only delimiter. CRLFs between
//! messages are skipped, and a double CRLF is a keep-alive ping answered with a
//! single CRLF (RFC 5626 §3.5.1). Every buffer is bounded by `max_message`.

use bytes::{Buf, Bytes, BytesMut};

use crate::headers::HeaderName;
use crate::text::{parse_decimal, trim};

/// What a datagram holds before it is parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DatagramKind {
    /// CRLF keep-alives (or an empty datagram): ignore.
    KeepAlive,
    /// A STUN packet (RFC 5389 first bits `00`): not SIP, ignore.
    Stun,
    /// Something to parse as SIP.
    Sip,
}

/// Classifies a datagram without parsing it.
pub fn classify_datagram(d: &[u8]) -> DatagramKind {
    if d.iter().all(|&b| b == b'\r' || b == b'\n') {
        DatagramKind::KeepAlive
    } else if d[0] < 2 {
        DatagramKind::Stun
    } else {
        DatagramKind::Sip
    }
}

/// An item cut from a stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamItem {
    /// One complete message (start line to end of body).
    Message(Bytes),
    /// A CRLFCRLF ping: answer with [`PONG`].
    Ping,
}

/// The answer to a keep-alive ping.
pub const PONG: &[u8] = b"\r\n";

/// Why a stream cannot be framed any further. The connection must be closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("message larger than {0} bytes")]
    TooLarge(usize),
    #[error("missing, malformed or conflicting Content-Length on a stream")]
    BadContentLength,
}

/// Cuts a byte stream into messages.
#[derive(Debug)]
pub struct StreamFramer {
    buf: BytesMut,
    max_message: usize,
    /// Set once the header section of the message at the front is known.
    pending: Option<usize>,
}

impl StreamFramer {
    pub fn new(max_message: usize) -> Self {
        StreamFramer {
            buf: BytesMut::new(),
            max_message,
            pending: None,
        }
    }

    /// Bytes received but not yet returned as a message.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    pub fn push(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// Returns the next complete item, `Ok(None)` when more bytes are needed.
    pub fn poll(&mut self) -> Result<Option<StreamItem>, FrameError> {
        if self.pending.is_none() {
            // Keep-alives and stray CRLFs between messages.
            if self.buf.starts_with(b"\r\n\r\n") {
                self.buf.advance(4);
                return Ok(Some(StreamItem::Ping));
            }
            while self.buf.starts_with(b"\r\n") && self.buf.len() >= 3 && self.buf[2] != b'\r' {
                self.buf.advance(2);
            }
            if self.buf.starts_with(b"\r") {
                // Possibly the start of a ping; wait for the rest.
                if self.buf.len() < 4 && b"\r\n\r\n".starts_with(&self.buf) {
                    return Ok(None);
                }
            }
            let Some(head_end) = memchr::memmem::find(&self.buf, b"\r\n\r\n") else {
                if self.buf.len() > self.max_message {
                    return Err(FrameError::TooLarge(self.max_message));
                }
                return Ok(None);
            };
            let cl = content_length(&self.buf[..head_end + 2])?;
            let total = head_end + 4 + cl;
            if total > self.max_message {
                return Err(FrameError::TooLarge(self.max_message));
            }
            self.pending = Some(total);
        }
        match self.pending {
            Some(total) if self.buf.len() >= total => {
                self.pending = None;
                Ok(Some(StreamItem::Message(self.buf.split_to(total).freeze())))
            }
            _ => Ok(None),
        }
    }
}

/// Finds Content-Length in a raw header section (the start line is skipped).
/// Absent means 0; disagreeing duplicates or a non-number are errors.
fn content_length(head: &[u8]) -> Result<usize, FrameError> {
    let mut found: Option<usize> = None;
    let mut lines = head.split(|&b| b == b'\n').skip(1);
    for line in lines.by_ref() {
        if line.first().is_some_and(|&b| b == b' ' || b == b'\t') {
            continue;
        }
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        if HeaderName::classify(trim(&line[..colon])) != HeaderName::ContentLength {
            continue;
        }
        let n = parse_decimal(trim(&line[colon + 1..]), 1 << 30)
            .ok_or(FrameError::BadContentLength)? as usize;
        if found.is_some_and(|f| f != n) {
            return Err(FrameError::BadContentLength);
        }
        found = Some(n);
    }
    Ok(found.unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drain(f: &mut StreamFramer) -> Vec<StreamItem> {
        let mut out = vec![];
        while let Some(i) = f.poll().unwrap() {
            out.push(i);
        }
        out
    }

    #[test]
    fn two_messages_in_one_read_and_one_split_over_reads() {
        let a = b"REGISTER sip:x SIP/2.0\r\nContent-Length: 0\r\n\r\n";
        let b = b"INVITE sip:y SIP/2.0\r\nl: 3\r\n\r\nabc";
        let mut f = StreamFramer::new(4096);
        let mut all = a.to_vec();
        all.extend_from_slice(b);
        f.push(&all[..10]);
        assert!(drain(&mut f).is_empty());
        f.push(&all[10..50]);
        f.push(&all[50..all.len() - 1]);
        assert_eq!(
            drain(&mut f),
            vec![StreamItem::Message(Bytes::from_static(a))]
        );
        f.push(&all[all.len() - 1..]);
        assert_eq!(
            drain(&mut f),
            vec![StreamItem::Message(Bytes::from_static(b))]
        );
        assert_eq!(f.buffered(), 0);
    }

    #[test]
    fn keepalive_ping_and_stray_crlf() {
        let mut f = StreamFramer::new(4096);
        f.push(b"\r\n\r\n");
        assert_eq!(drain(&mut f), vec![StreamItem::Ping]);
        f.push(b"\r\n");
        assert!(drain(&mut f).is_empty());
        f.push(b"OPTIONS sip:x SIP/2.0\r\n\r\n");
        let items = drain(&mut f);
        assert_eq!(
            items,
            vec![StreamItem::Message(Bytes::from_static(
                b"OPTIONS sip:x SIP/2.0\r\n\r\n"
            ))]
        );
    }

    #[test]
    fn limits_and_bad_lengths() {
        let mut f = StreamFramer::new(64);
        f.push(&[b'A'; 65]);
        assert_eq!(f.poll(), Err(FrameError::TooLarge(64)));
        let mut f = StreamFramer::new(1000);
        f.push(b"INVITE sip:x SIP/2.0\r\nContent-Length: 5000\r\n\r\n");
        assert_eq!(f.poll(), Err(FrameError::TooLarge(1000)));
        let mut f = StreamFramer::new(1000);
        f.push(b"INVITE sip:x SIP/2.0\r\nContent-Length: -5\r\n\r\n");
        assert_eq!(f.poll(), Err(FrameError::BadContentLength));
    }

    #[test]
    fn datagram_classes() {
        assert_eq!(classify_datagram(b"\r\n\r\n"), DatagramKind::KeepAlive);
        assert_eq!(classify_datagram(&[0, 1, 0, 0]), DatagramKind::Stun);
        assert_eq!(classify_datagram(b"OPTIONS"), DatagramKind::Sip);
    }
}
