//! Header names and the typed views a proxy needs: Via, name-addr (From, To,
//! Contact, Route, Record-Route), CSeq and header parameters.
//!
//! Views are parsed on demand from the value bytes and borrow them; they are
//! for reading. Edits go through [`crate::message::Rewrite`], which keeps the
//! original bytes of everything it does not touch.

use std::fmt;

use crate::text::{eq_ignore_case, is_token, parse_decimal, Scanner};
use crate::uri::{parse_host, parse_ipv6, Host, Uri, UriError};

/// Header names the proxy understands. Everything else is [`HeaderName::Other`]
/// and is forwarded untouched.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HeaderName {
    Via,
    From,
    To,
    CallId,
    CSeq,
    MaxForwards,
    Route,
    RecordRoute,
    Contact,
    ContentLength,
    ContentType,
    ProxyRequire,
    Require,
    Supported,
    Unsupported,
    ProxyAuthorization,
    Other,
}

impl HeaderName {
    /// Classifies a header name, long or compact form (RFC 3261 §7.3.3), any case.
    pub fn classify(name: &[u8]) -> HeaderName {
        if name.is_empty() {
            return HeaderName::Other;
        }
        if name.len() == 1 {
            return match name[0].to_ascii_lowercase() {
                b'v' => HeaderName::Via,
                b'f' => HeaderName::From,
                b't' => HeaderName::To,
                b'i' => HeaderName::CallId,
                b'm' => HeaderName::Contact,
                b'l' => HeaderName::ContentLength,
                b'c' => HeaderName::ContentType,
                b'k' => HeaderName::Supported,
                _ => HeaderName::Other,
            };
        }
        // One candidate per (length, first letter): a single comparison.
        let candidate: Option<(&[u8], HeaderName)> =
            match (name.len(), name[0].to_ascii_lowercase()) {
                (2, b't') => Some((b"to", HeaderName::To)),
                (3, b'v') => Some((b"via", HeaderName::Via)),
                (4, b'f') => Some((b"from", HeaderName::From)),
                (4, b'c') => Some((b"cseq", HeaderName::CSeq)),
                (5, b'r') => Some((b"route", HeaderName::Route)),
                (7, b'c') => Some((b"call-id", HeaderName::CallId)),
                (7, b'r') => Some((b"require", HeaderName::Require)),
                (9, b's') => Some((b"supported", HeaderName::Supported)),
                (11, b'u') => Some((b"unsupported", HeaderName::Unsupported)),
                (12, b'm') => Some((b"max-forwards", HeaderName::MaxForwards)),
                (12, b'r') => Some((b"record-route", HeaderName::RecordRoute)),
                (12, b'c') => Some((b"content-type", HeaderName::ContentType)),
                (13, b'p') => Some((b"proxy-require", HeaderName::ProxyRequire)),
                (14, b'c') => Some((b"content-length", HeaderName::ContentLength)),
                (19, b'p') => Some((b"proxy-authorization", HeaderName::ProxyAuthorization)),
                _ => None,
            };
        match candidate {
            Some((n, h)) if eq_ignore_case(n, name) => h,
            // "call-id" and "contact" share length and first letter.
            _ if name.len() == 7 && eq_ignore_case(name, b"contact") => HeaderName::Contact,
            _ => HeaderName::Other,
        }
    }

    /// A small index for per-name tables; `None` for [`HeaderName::Other`].
    pub fn slot(&self) -> Option<usize> {
        match self {
            HeaderName::Other => None,
            h => Some(*h as usize),
        }
    }

    /// The canonical long form, for headers the proxy writes itself.
    pub fn as_str(&self) -> &'static str {
        match self {
            HeaderName::Via => "Via",
            HeaderName::From => "From",
            HeaderName::To => "To",
            HeaderName::CallId => "Call-ID",
            HeaderName::CSeq => "CSeq",
            HeaderName::MaxForwards => "Max-Forwards",
            HeaderName::Route => "Route",
            HeaderName::RecordRoute => "Record-Route",
            HeaderName::Contact => "Contact",
            HeaderName::ContentLength => "Content-Length",
            HeaderName::ContentType => "Content-Type",
            HeaderName::ProxyRequire => "Proxy-Require",
            HeaderName::Require => "Require",
            HeaderName::Supported => "Supported",
            HeaderName::Unsupported => "Unsupported",
            HeaderName::ProxyAuthorization => "Proxy-Authorization",
            HeaderName::Other => "",
        }
    }

    /// Headers that may appear at most once in a request (RFC 3261 §7.3, §20).
    pub fn is_singleton(&self) -> bool {
        matches!(
            self,
            HeaderName::From
                | HeaderName::To
                | HeaderName::CallId
                | HeaderName::CSeq
                | HeaderName::MaxForwards
                | HeaderName::ContentLength
                | HeaderName::ContentType
        )
    }
}

impl fmt::Display for HeaderName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a header value did not parse. The proxy turns it into `400 Bad <Header>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    #[error("malformed sent-protocol")]
    SentProtocol,
    #[error("malformed sent-by")]
    SentBy,
    #[error("empty or malformed parameter")]
    Param,
    #[error("unterminated quoted string")]
    Quote,
    #[error("malformed display name")]
    DisplayName,
    #[error("malformed <...> address")]
    Angle,
    #[error("URI: {0}")]
    Uri(UriError),
    #[error("unexpected characters")]
    Trailing,
    #[error("malformed number")]
    Number,
    #[error("malformed method")]
    Method,
    #[error("empty value")]
    Empty,
}

impl From<UriError> for HeaderError {
    fn from(e: UriError) -> Self {
        HeaderError::Uri(e)
    }
}

/// A `;name=value` parameter list as written (`;` may be surrounded by white space).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Params<'a> {
    raw: &'a [u8],
}

impl<'a> Params<'a> {
    /// Scans parameters from the start of `s` and returns them with the rest of `s`.
    fn scan(sc: &mut Scanner<'a>) -> Result<Params<'a>, HeaderError> {
        let start = sc.pos;
        loop {
            let save = sc.pos;
            if !sc.eat(b';') {
                sc.pos = save;
                break;
            }
            sc.skip_ws();
            if sc.token().is_none() {
                return Err(HeaderError::Param);
            }
            let before_eq = sc.pos;
            if sc.eat(b'=') {
                sc.skip_ws();
                if sc.peek() == Some(b'"') {
                    sc.quoted().ok_or(HeaderError::Quote)?;
                } else if sc
                    .take_while(|b| is_token(b) || matches!(b, b'[' | b']' | b':'))
                    .is_empty()
                {
                    return Err(HeaderError::Param);
                }
            } else {
                sc.pos = before_eq;
            }
        }
        Ok(Params {
            raw: &sc.s[start..sc.pos],
        })
    }

    pub fn raw(&self) -> &'a [u8] {
        self.raw
    }

    /// `(name, value)` pairs, white space trimmed, quotes kept.
    pub fn iter(&self) -> impl Iterator<Item = (&'a [u8], Option<&'a [u8]>)> + 'a {
        let mut sc = Scanner::new(self.raw);
        std::iter::from_fn(move || {
            if !sc.eat(b';') {
                return None;
            }
            sc.skip_ws();
            let name = sc.token()?;
            let save = sc.pos;
            if sc.eat(b'=') {
                sc.skip_ws();
                let v = if sc.peek() == Some(b'"') {
                    sc.quoted()?
                } else {
                    sc.take_while(|b| is_token(b) || matches!(b, b'[' | b']' | b':'))
                };
                Some((name, Some(v)))
            } else {
                sc.pos = save;
                Some((name, None))
            }
        })
    }

    /// `Some(None)` for a parameter without a value.
    pub fn get(&self, name: &str) -> Option<Option<&'a [u8]>> {
        self.iter()
            .find(|(n, _)| eq_ignore_case(n, name.as_bytes()))
            .map(|(_, v)| v)
    }
}

/// One Via value (RFC 3261 §20.42).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Via<'a> {
    /// `UDP`, `TCP`, `TLS`, `SCTP`, `WS`… as written.
    pub transport: &'a [u8],
    pub host: Host<'a>,
    pub host_text: &'a str,
    pub port: Option<u16>,
    pub params: Params<'a>,
}

impl<'a> Via<'a> {
    pub fn parse(value: &'a [u8]) -> Result<Via<'a>, HeaderError> {
        Self::parse_inner(value, true)
    }

    /// Like [`Via::parse`] but accepts any SIP version, so that a request with a
    /// version we do not support can still be answered (505).
    pub fn parse_any_version(value: &'a [u8]) -> Result<Via<'a>, HeaderError> {
        Self::parse_inner(value, false)
    }

    fn parse_inner(value: &'a [u8], strict: bool) -> Result<Via<'a>, HeaderError> {
        let mut sc = Scanner::new(value);
        sc.skip_ws();
        let proto = sc.token().ok_or(HeaderError::SentProtocol)?;
        if !sc.eat(b'/') {
            return Err(HeaderError::SentProtocol);
        }
        sc.skip_ws();
        let version = sc.token().ok_or(HeaderError::SentProtocol)?;
        if !sc.eat(b'/') {
            return Err(HeaderError::SentProtocol);
        }
        sc.skip_ws();
        let transport = sc.token().ok_or(HeaderError::SentProtocol)?;
        if !eq_ignore_case(proto, b"SIP") || (strict && version != b"2.0") {
            return Err(HeaderError::SentProtocol);
        }
        sc.skip_ws();
        let (host, host_text, port) = scan_sent_by(&mut sc)?;
        let params = Params::scan(&mut sc)?;
        sc.skip_ws();
        if !sc.at_end() {
            return Err(HeaderError::Trailing);
        }
        Ok(Via {
            transport,
            host,
            host_text,
            port,
            params,
        })
    }

    /// The branch parameter, if present.
    pub fn branch(&self) -> Option<&'a [u8]> {
        self.params.get("branch").flatten()
    }

    /// The `received` address (RFC 3261 §18.2.1, with or without brackets: RFC 5118 §4.5).
    pub fn received(&self) -> Option<std::net::IpAddr> {
        let v = self.params.get("received").flatten()?;
        let s = std::str::from_utf8(v).ok()?;
        let s = s
            .strip_prefix('[')
            .and_then(|s| s.strip_suffix(']'))
            .unwrap_or(s);
        s.parse::<std::net::Ipv4Addr>()
            .map(std::net::IpAddr::V4)
            .or_else(|_| parse_ipv6(s).map(std::net::IpAddr::V6))
            .ok()
    }

    /// `None`: no rport; `Some(None)`: rport asked for; `Some(Some(p))`: rport filled in.
    pub fn rport(&self) -> Option<Option<u16>> {
        self.params.get("rport").map(|v| {
            v.and_then(|v| parse_decimal(v, u64::from(u16::MAX)))
                .and_then(|p| u16::try_from(p).ok())
        })
    }

    /// The `maddr` parameter as a host.
    pub fn maddr(&self) -> Option<Host<'a>> {
        let v = self.params.get("maddr").flatten()?;
        parse_host(std::str::from_utf8(v).ok()?).ok()
    }

    /// The transport as an upper-case-insensitive comparison helper.
    pub fn transport_is(&self, t: &str) -> bool {
        eq_ignore_case(self.transport, t.as_bytes())
    }
}

fn scan_sent_by<'a>(sc: &mut Scanner<'a>) -> Result<(Host<'a>, &'a str, Option<u16>), HeaderError> {
    let start = sc.pos;
    if sc.peek() == Some(b'[') {
        let close = sc
            .rest()
            .iter()
            .position(|&b| b == b']')
            .ok_or(HeaderError::SentBy)?;
        sc.pos += close + 1;
    } else {
        sc.take_while(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
    }
    let host_text = std::str::from_utf8(&sc.s[start..sc.pos]).map_err(|_| HeaderError::SentBy)?;
    let host = parse_host(host_text).map_err(|_| HeaderError::SentBy)?;
    let port = if sc.eat(b':') {
        sc.skip_ws();
        let digits = sc.take_while(|b| b.is_ascii_digit());
        let p = parse_decimal(digits, u64::from(u16::MAX)).ok_or(HeaderError::SentBy)?;
        Some(u16::try_from(p).map_err(|_| HeaderError::SentBy)?)
    } else {
        None
    };
    Ok((host, host_text, port))
}

/// A `name-addr` or `addr-spec` with header parameters (From, To, Contact, Route,
/// Record-Route, Reply-To…: RFC 3261 §20).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NameAddr<'a> {
    /// The display name as written: a quoted string (with quotes) or tokens.
    pub display: Option<&'a [u8]>,
    /// The URI text, without the angle brackets. Only its scheme and characters
    /// are checked here; [`NameAddr::uri`] parses it fully.
    pub uri_text: &'a str,
    /// True when the URI was written inside `<...>`.
    pub bracketed: bool,
    pub params: Params<'a>,
}

impl<'a> NameAddr<'a> {
    /// Parses one value. `addr-spec` without brackets may not contain `;`, `?` or `,`
    /// in its URI (RFC 3261 §20.10): a `;` starts the header parameters.
    pub fn parse(value: &'a [u8]) -> Result<NameAddr<'a>, HeaderError> {
        let mut sc = Scanner::new(value);
        sc.skip_ws();
        if sc.at_end() {
            return Err(HeaderError::Empty);
        }
        let mut display = None;
        let bracketed;
        let uri_bytes;
        if sc.peek() == Some(b'"') {
            display = Some(sc.quoted().ok_or(HeaderError::Quote)?);
            sc.skip_ws();
            if sc.peek() != Some(b'<') {
                return Err(HeaderError::Angle);
            }
        }
        if display.is_none() && sc.peek() != Some(b'<') {
            // Either `tokens <uri>` or a bare addr-spec.
            let lt = sc.rest().iter().position(|&b| b == b'<');
            if let Some(lt) = lt {
                let name = crate::text::trim(&sc.rest()[..lt]);
                if name.is_empty() || !name.iter().all(|&b| is_token(b) || b == b' ' || b == b'\t')
                {
                    return Err(HeaderError::DisplayName);
                }
                display = Some(name);
                sc.pos += lt;
            }
        }
        if sc.peek() == Some(b'<') {
            bracketed = true;
            let close = sc
                .rest()
                .iter()
                .position(|&b| b == b'>')
                .ok_or(HeaderError::Angle)?;
            uri_bytes = &sc.rest()[1..close];
            sc.pos += close + 1;
        } else {
            bracketed = false;
            let end = sc
                .rest()
                .iter()
                .position(|&b| b == b';' || b == b' ' || b == b'\t' || b == b'\r' || b == b'\n')
                .unwrap_or(sc.rest().len());
            uri_bytes = &sc.rest()[..end];
            if uri_bytes.contains(&b'?') || uri_bytes.contains(&b',') {
                return Err(HeaderError::Angle);
            }
            sc.pos += end;
        }
        let uri_text = std::str::from_utf8(uri_bytes).map_err(|_| HeaderError::Angle)?;
        crate::uri::check_light(uri_text)?;
        let params = Params::scan(&mut sc)?;
        sc.skip_ws();
        if !sc.at_end() {
            return Err(HeaderError::Trailing);
        }
        Ok(NameAddr {
            display,
            uri_text,
            bracketed,
            params,
        })
    }

    /// The URI, fully parsed.
    pub fn uri(&self) -> Result<Uri<'a>, UriError> {
        Uri::parse(self.uri_text)
    }

    /// The `tag` parameter.
    pub fn tag(&self) -> Option<&'a [u8]> {
        self.params.get("tag").flatten()
    }
}

/// A CSeq value (RFC 3261 §20.16): a 32-bit sequence number and a method.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CSeq<'a> {
    pub seq: u32,
    pub method: &'a [u8],
}

impl<'a> CSeq<'a> {
    pub fn parse(value: &'a [u8]) -> Result<CSeq<'a>, HeaderError> {
        let mut sc = Scanner::new(value);
        sc.skip_ws();
        let digits = sc.take_while(|b| b.is_ascii_digit());
        let seq = parse_decimal(digits, u64::from(u32::MAX)).ok_or(HeaderError::Number)?;
        let before = sc.pos;
        sc.skip_ws();
        if sc.pos == before {
            return Err(HeaderError::Method);
        }
        let method = sc.token().ok_or(HeaderError::Method)?;
        sc.skip_ws();
        if !sc.at_end() {
            return Err(HeaderError::Trailing);
        }
        Ok(CSeq {
            seq: u32::try_from(seq).map_err(|_| HeaderError::Number)?,
            method,
        })
    }
}

/// A comma-separated list of option tags (Require, Proxy-Require, Supported).
pub fn option_tags(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    crate::text::split_list(value)
        .map(|(_, t)| t)
        .filter(|t| !t.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compact_and_case() {
        assert_eq!(HeaderName::classify(b"v"), HeaderName::Via);
        assert_eq!(
            HeaderName::classify(b"MaX-fOrWaRdS"),
            HeaderName::MaxForwards
        );
        assert_eq!(HeaderName::classify(b"i"), HeaderName::CallId);
        assert_eq!(HeaderName::classify(b"C%6Fntact"), HeaderName::Other);
        assert_eq!(HeaderName::classify(b"l"), HeaderName::ContentLength);
    }

    #[test]
    fn via_with_white_space_everywhere() {
        let v = Via::parse(b"SIP  /   2.0   /UDP     192.0.2.2;branch=390skdjuw").unwrap();
        assert!(v.transport_is("udp"));
        assert_eq!(v.branch(), Some(&b"390skdjuw"[..]));
        let v = Via::parse(
            b"SIP  / 2.0  / TCP     spindle.example.com   ;\r\n  branch  =   z9hG4bK9ikj8",
        )
        .unwrap();
        assert_eq!(v.host, Host::Domain("spindle.example.com"));
        assert_eq!(v.branch(), Some(&b"z9hG4bK9ikj8"[..]));
    }

    #[test]
    fn via_received_and_rport() {
        let v = Via::parse(
            b"SIP/2.0/UDP [2001:db8::9:1];received=[2001:db8::9:255];branch=z9hG4bKas3-111",
        )
        .unwrap();
        assert_eq!(v.received(), Some("2001:db8::9:255".parse().unwrap()));
        let v =
            Via::parse(b"SIP/2.0/UDP [2001:db8::9:1];received=2001:db8::9:255;branch=z9hG4bKas3")
                .unwrap();
        assert_eq!(v.received(), Some("2001:db8::9:255".parse().unwrap()));
        let v = Via::parse(b"SIP/2.0/UDP 10.0.0.1:5070;rport;branch=z9hG4bK1").unwrap();
        assert_eq!(v.rport(), Some(None));
        assert_eq!(v.port, Some(5070));
        let v = Via::parse(b"SIP/2.0/UDP 10.0.0.1;rport=1234").unwrap();
        assert_eq!(v.rport(), Some(Some(1234)));
    }

    #[test]
    fn via_rejects_empty_params() {
        assert!(Via::parse(b"SIP/2.0/UDP 192.0.2.15;;").is_err());
        assert!(Via::parse(b"SIP/2.0/UDP").is_err());
        assert!(Via::parse(b"SIP/3.0/UDP host").is_err());
    }

    #[test]
    fn name_addr_forms() {
        let n = NameAddr::parse(
            br#""J Rosenberg \\\""       <sip:jdrosen@example.com>   ;   tag = 98asjd8"#,
        )
        .unwrap();
        assert_eq!(n.tag(), Some(&b"98asjd8"[..]));
        assert!(n.bracketed);
        let n =
            NameAddr::parse(b"sip:vivekg@chair-dnrc.example.com ;   tag    = 1918181833n").unwrap();
        assert_eq!(n.tag(), Some(&b"1918181833n"[..]));
        assert_eq!(n.uri_text, "sip:vivekg@chair-dnrc.example.com");
        let n = NameAddr::parse(b"caller<sip:caller@example.com>;tag=323").unwrap();
        assert_eq!(n.display, Some(&b"caller"[..]));
        let n = NameAddr::parse(b"sip:user@example.com;unknownparam").unwrap();
        assert_eq!(n.params.get("unknownparam"), Some(None));
    }

    #[test]
    fn name_addr_errors() {
        assert_eq!(
            NameAddr::parse(br#""Mr. J. User <sip:j.user@example.com>"#),
            Err(HeaderError::Quote)
        );
        assert_eq!(
            NameAddr::parse(b"Bell, Alexander <sip:a@b>"),
            Err(HeaderError::DisplayName)
        );
        assert!(NameAddr::parse(b"\"Joe\" <sip:joe@example.org>;;;;").is_err());
        assert!(NameAddr::parse(b"sip:user@example.com?Route=%3Csip:sip.example.com%3E").is_err());
        assert!(NameAddr::parse(b"< sip:t.watson@example.org >").is_err());
    }

    #[test]
    fn cseq() {
        assert_eq!(
            CSeq::parse(b"0009\r\n  INVITE").unwrap(),
            CSeq {
                seq: 9,
                method: b"INVITE"
            }
        );
        assert_eq!(
            CSeq::parse(b"36893488147419103232 REGISTER"),
            Err(HeaderError::Number)
        );
        assert_eq!(CSeq::parse(b"1INVITE"), Err(HeaderError::Method));
    }
}
