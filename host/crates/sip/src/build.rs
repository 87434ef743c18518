//! Messages the proxy writes itself: responses to requests (RFC 3261 §8.2.6), the
//! ACK for a non-2xx final response (§17.1.1.3) and CANCEL (§9.1).
//!
//! Copied header lines keep their original bytes.

use bytes::{BufMut, Bytes, BytesMut};

use crate::headers::HeaderName;
use crate::message::{put_line, Message};

/// Builds a response to `req`: Via (every line, with `top_via` replacing the
/// first value when given), From, To (with `to_tag` added when the request had
/// none), Call-ID and CSeq are copied; `extra` lines (`"Name: value"`) follow.
pub fn response(
    req: &Message,
    status: u16,
    reason: &str,
    top_via: Option<&[u8]>,
    to_tag: Option<&str>,
    extra: &[&str],
) -> Bytes {
    let mut out = BytesMut::with_capacity(512);
    out.put_slice(b"SIP/2.0 ");
    // Status codes are three digits (the parser enforces 100–699).
    let code = status.clamp(100, 699);
    out.put_slice(&[
        b'0' + (code / 100) as u8,
        b'0' + (code / 10 % 10) as u8,
        b'0' + (code % 10) as u8,
    ]);
    out.put_u8(b' ');
    out.put_slice(reason.as_bytes());
    out.put_slice(b"\r\n");
    let mut first_via = true;
    for f in req.fields_all() {
        match f.name {
            HeaderName::Via => {
                if first_via {
                    first_via = false;
                    if let Some(top) = top_via {
                        // Replace only the first value of the first Via line.
                        let value = req.value(f);
                        let rest = crate::text::split_list(value)
                            .nth(1)
                            .map(|(o, _)| &value[o..]);
                        put_line(&mut out, b"Via", top);
                        if let Some(rest) = rest {
                            put_line(&mut out, b"Via", rest);
                        }
                        continue;
                    }
                }
                out.put_slice(req.raw(f.line));
            }
            HeaderName::From | HeaderName::CallId | HeaderName::CSeq => {
                out.put_slice(req.raw(f.line))
            }
            HeaderName::To => {
                // Parsing To is only worth it when a tag may be added.
                let needs_tag = status > 100
                    && to_tag.is_some()
                    && req
                        .to()
                        .and_then(Result::ok)
                        .and_then(|t| t.tag())
                        .is_none();
                match to_tag {
                    Some(tag) if needs_tag => {
                        out.put_slice(req.raw(f.name_span));
                        out.put_slice(b": ");
                        out.put_slice(req.raw(f.value));
                        out.put_slice(b";tag=");
                        out.put_slice(tag.as_bytes());
                        out.put_slice(b"\r\n");
                    }
                    _ => out.put_slice(req.raw(f.line)),
                }
            }
            _ => {}
        }
    }
    for line in extra {
        out.put_slice(line.as_bytes());
        out.put_slice(b"\r\n");
    }
    out.put_slice(b"Content-Length: 0\r\n\r\n");
    out.freeze()
}

/// The ACK a client INVITE transaction sends for a 300–699 response (§17.1.1.3):
/// same Request-URI, top Via, Route, From and Call-ID as the INVITE, the To of
/// the response, CSeq number of the INVITE with method ACK.
pub fn ack(invite: &Message, resp: &Message) -> Bytes {
    derived(
        invite,
        "ACK",
        resp.fields(HeaderName::To).next().map(|f| resp.raw(f.line)),
    )
}

/// A CANCEL for `req` (§9.1): the same Request-URI, top Via (so the same branch),
/// Route, From, To and Call-ID, and CSeq number with method CANCEL.
pub fn cancel(req: &Message) -> Bytes {
    derived(req, "CANCEL", None)
}

fn derived(req: &Message, method: &str, to_line: Option<&[u8]>) -> Bytes {
    let mut out = BytesMut::with_capacity(400);
    out.put_slice(method.as_bytes());
    out.put_u8(b' ');
    out.put_slice(req.request_uri_bytes());
    out.put_slice(b" SIP/2.0\r\n");
    if let Some((_, top)) = req.list(HeaderName::Via).next() {
        put_line(&mut out, b"Via", top);
    }
    for f in req.fields_all() {
        match f.name {
            HeaderName::Route | HeaderName::From | HeaderName::CallId => {
                out.put_slice(req.raw(f.line))
            }
            HeaderName::To => match to_line {
                Some(line) => out.put_slice(line),
                None => out.put_slice(req.raw(f.line)),
            },
            _ => {}
        }
    }
    let seq = req.cseq().and_then(Result::ok).map_or(0, |c| c.seq);
    out.put_slice(
        format!("CSeq: {seq} {method}\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n").as_bytes(),
    );
    out.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::Framing;

    fn parse(b: Bytes) -> Message {
        Message::parse(b, Framing::Exact).unwrap()
    }

    const REQ: &[u8] = b"INVITE sip:bob@b.example SIP/2.0\r\n\
Via: SIP/2.0/UDP p.example;branch=z9hG4bKp1, SIP/2.0/UDP a.example;branch=z9hG4bKa1\r\n\
Route: <sip:r.example;lr>\r\n\
From: Alice <sip:alice@a.example>;tag=f1\r\n\
To: <sip:bob@b.example>\r\n\
Call-ID: c1\r\n\
CSeq: 7 INVITE\r\n\
Content-Length: 0\r\n\r\n";

    #[test]
    fn response_copies_the_dialog_headers() {
        let req = parse(Bytes::from_static(REQ));
        let r = parse(response(
            &req,
            486,
            "Busy Here",
            None,
            Some("xyz"),
            &["Retry-After: 5"],
        ));
        assert_eq!(r.status(), Some(486));
        assert_eq!(r.list(HeaderName::Via).count(), 2);
        assert_eq!(r.to().unwrap().unwrap().tag(), Some(&b"xyz"[..]));
        assert_eq!(r.cseq().unwrap().unwrap().seq, 7);
        assert_eq!(r.fields_named("Retry-After").count(), 1);
        let r = parse(response(
            &req,
            400,
            "Bad",
            Some(b"SIP/2.0/UDP p.example;branch=z9hG4bKp1;received=192.0.2.1"),
            None,
            &[],
        ));
        let top = r.top_via().unwrap().unwrap();
        assert_eq!(top.received(), Some("192.0.2.1".parse().unwrap()));
        assert_eq!(r.list(HeaderName::Via).count(), 2);
    }

    #[test]
    fn ack_and_cancel() {
        let req = parse(Bytes::from_static(REQ));
        let resp = parse(response(&req, 486, "Busy Here", None, Some("t9"), &[]));
        let ack = parse(ack(&req, &resp));
        assert_eq!(ack.method_bytes(), b"ACK");
        assert_eq!(ack.list(HeaderName::Via).count(), 1);
        assert_eq!(
            ack.top_via().unwrap().unwrap().branch(),
            Some(&b"z9hG4bKp1"[..])
        );
        assert_eq!(ack.to().unwrap().unwrap().tag(), Some(&b"t9"[..]));
        assert_eq!(ack.cseq().unwrap().unwrap().method, b"ACK");
        assert_eq!(ack.count(HeaderName::Route), 1);
        let c = parse(cancel(&req));
        assert_eq!(c.method_bytes(), b"CANCEL");
        assert_eq!(c.request_uri_bytes(), b"sip:bob@b.example");
        assert_eq!(c.to().unwrap().unwrap().tag(), None);
        assert_eq!(c.cseq().unwrap().unwrap().seq, 7);
    }
}
