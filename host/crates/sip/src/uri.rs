//! URIs: `sip:`/`sips:` (RFC 3261 §19.1), `tel:` (RFC 3966) and any other absolute URI.
//!
//! A parsed URI borrows from the message; nothing is unescaped or re-serialised
//! unless asked. `%HH` escapes are decoded only for comparison ([`SipUri::equivalent`]),
//! so a forwarded URI keeps its bytes.

use std::borrow::Cow;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::text::{escapes_valid, is_unreserved, unescape, HOST, PARAM, USER};

/// Why a URI did not parse.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum UriError {
    #[error("URI has no scheme")]
    NoScheme,
    #[error("URI contains white space or characters outside its grammar")]
    BadCharacter,
    #[error("URI host is missing or malformed")]
    BadHost,
    #[error("URI port is not a number from 0 to 65535")]
    BadPort,
    #[error("URI user part is malformed")]
    BadUser,
    #[error("URI parameter is malformed")]
    BadParam,
    #[error("URI contains an invalid %-escape")]
    BadEscape,
}

/// The scheme of a URI.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    Sip,
    Sips,
    Tel,
}

/// A host as written in a URI or Via.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Host<'a> {
    /// A domain name (or an IPv4-looking name that did not parse as one), as written.
    Domain(&'a str),
    Ip(IpAddr),
}

impl Host<'_> {
    /// Case-insensitive for names; numeric for addresses.
    pub fn matches(&self, other: &Host<'_>) -> bool {
        match (self, other) {
            (Host::Domain(a), Host::Domain(b)) => a.eq_ignore_ascii_case(b),
            (Host::Ip(a), Host::Ip(b)) => a == b,
            _ => false,
        }
    }

    pub fn ip(&self) -> Option<IpAddr> {
        match self {
            Host::Ip(ip) => Some(*ip),
            Host::Domain(_) => None,
        }
    }
}

impl fmt::Display for Host<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Host::Domain(d) => f.write_str(d),
            Host::Ip(IpAddr::V4(a)) => write!(f, "{a}"),
            Host::Ip(IpAddr::V6(a)) => write!(f, "[{a}]"),
        }
    }
}

/// Parses a host: a bracketed IPv6 reference, a dotted IPv4 address, or a domain.
/// The `[2001:db8:::192.0.2.1]` form of RFC 5118 §4.10 (the ABNF bug) is tolerated.
pub fn parse_host(s: &str) -> Result<Host<'_>, UriError> {
    if let Some(inner) = s.strip_prefix('[') {
        let inner = inner.strip_suffix(']').ok_or(UriError::BadHost)?;
        return parse_ipv6(inner).map(|a| Host::Ip(IpAddr::V6(a)));
    }
    if s.is_empty() {
        return Err(UriError::BadHost);
    }
    if s.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        if let Ok(a) = s.parse::<Ipv4Addr>() {
            return Ok(Host::Ip(IpAddr::V4(a)));
        }
        return Err(UriError::BadHost);
    }
    // hostname = *( domainlabel "." ) toplabel [ "." ]
    let valid = s
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
        && !s.starts_with('.')
        && !s.starts_with('-')
        && !s.contains("..");
    if valid {
        Ok(Host::Domain(s))
    } else {
        Err(UriError::BadHost)
    }
}

/// IPv6 text without brackets, tolerating the three-colon ABNF bug of RFC 3261.
pub fn parse_ipv6(s: &str) -> Result<Ipv6Addr, UriError> {
    if let Ok(a) = s.parse::<Ipv6Addr>() {
        return Ok(a);
    }
    if s.contains(":::") {
        if let Ok(a) = s.replacen(":::", "::", 1).parse::<Ipv6Addr>() {
            return Ok(a);
        }
    }
    Err(UriError::BadHost)
}

/// The cheap check of a URI inside a header: a scheme, then only characters a
/// URI may hold. The full grammar is checked where the URI is used.
pub fn check_light(s: &str) -> Result<(), UriError> {
    let colon = memchr::memchr(b':', s.as_bytes()).ok_or(UriError::NoScheme)?;
    let scheme = &s.as_bytes()[..colon];
    if scheme.is_empty()
        || !scheme[0].is_ascii_alphabetic()
        || !scheme
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.'))
    {
        return Err(UriError::NoScheme);
    }
    if colon + 1 == s.len()
        || s.bytes()
            .any(|b| b <= b' ' || b >= 0x7f || b == b'<' || b == b'>' || b == b'"')
    {
        return Err(UriError::BadCharacter);
    }
    Ok(())
}

/// A URI of any scheme.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Uri<'a> {
    Sip(SipUri<'a>),
    Tel(TelUri<'a>),
    /// An absolute URI of a scheme this proxy does not route (RFC 3261 `absoluteURI`).
    Other {
        scheme: &'a str,
        rest: &'a str,
    },
}

impl<'a> Uri<'a> {
    /// Parses a URI as it appears in a Request-URI or inside `<...>`.
    pub fn parse(s: &'a str) -> Result<Self, UriError> {
        let colon = s.find(':').ok_or(UriError::NoScheme)?;
        let scheme = &s[..colon];
        let rest = &s[colon + 1..];
        if scheme.is_empty()
            || !scheme.as_bytes()[0].is_ascii_alphabetic()
            || !scheme
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.'))
        {
            return Err(UriError::NoScheme);
        }
        if s.bytes()
            .any(|b| b <= b' ' || b >= 0x7f || b == b'<' || b == b'>' || b == b'"')
        {
            return Err(UriError::BadCharacter);
        }
        if scheme.eq_ignore_ascii_case("sip") {
            SipUri::parse_parts(Scheme::Sip, rest).map(Uri::Sip)
        } else if scheme.eq_ignore_ascii_case("sips") {
            SipUri::parse_parts(Scheme::Sips, rest).map(Uri::Sip)
        } else if scheme.eq_ignore_ascii_case("tel") {
            TelUri::parse_parts(rest).map(Uri::Tel)
        } else {
            if rest.is_empty() {
                return Err(UriError::BadCharacter);
            }
            Ok(Uri::Other { scheme, rest })
        }
    }

    pub fn as_sip(&self) -> Option<&SipUri<'a>> {
        match self {
            Uri::Sip(u) => Some(u),
            _ => None,
        }
    }

    pub fn scheme_name(&self) -> &str {
        match self {
            Uri::Sip(u) if u.scheme == Scheme::Sips => "sips",
            Uri::Sip(_) => "sip",
            Uri::Tel(_) => "tel",
            Uri::Other { scheme, .. } => scheme,
        }
    }
}

/// A `sip:` or `sips:` URI. Pieces are raw (escaped) slices of the original.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SipUri<'a> {
    pub scheme: Scheme,
    pub user: Option<&'a str>,
    pub password: Option<&'a str>,
    pub host: Host<'a>,
    /// The host exactly as written (with brackets for IPv6).
    pub host_text: &'a str,
    pub port: Option<u16>,
    /// Everything from the first `;` of the parameters up to `?` or the end.
    pub params: &'a str,
    /// The `headers` component after `?`, if any.
    pub headers: Option<&'a str>,
}

impl<'a> SipUri<'a> {
    pub fn parse(s: &'a str) -> Result<Self, UriError> {
        match Uri::parse(s)? {
            Uri::Sip(u) => Ok(u),
            _ => Err(UriError::NoScheme),
        }
    }

    fn parse_parts(scheme: Scheme, rest: &'a str) -> Result<Self, UriError> {
        let b = rest.as_bytes();
        // The user part may contain ';' and '?' (RFC 4475 §3.1.1.9) but never a raw '@'
        // and neither may parameters or headers, so the first '@' ends the userinfo.
        let (user, password, host_start) = match memchr::memchr(b'@', b) {
            Some(at) => {
                let ui = &b[..at];
                let (user_end, password) = match memchr::memchr(b':', ui) {
                    Some(c) => (c, Some(&rest[c + 1..at])),
                    None => (at, None),
                };
                let user = &ui[..user_end];
                if user.is_empty() || !user.iter().all(|&c| USER[c as usize]) {
                    return Err(UriError::BadUser);
                }
                if user.contains(&b'%') && !escapes_valid(user) {
                    return Err(UriError::BadEscape);
                }
                if let Some(p) = password {
                    if !p.bytes().all(is_password_char) {
                        return Err(UriError::BadUser);
                    }
                }
                (Some(&rest[..user_end]), password, at + 1)
            }
            None => (None, None, 0),
        };
        let hb = &b[host_start..];
        let mut i = if hb.first() == Some(&b'[') {
            memchr::memchr(b']', hb).ok_or(UriError::BadHost)? + 1
        } else {
            hb.iter()
                .position(|&c| !HOST[c as usize])
                .unwrap_or(hb.len())
        };
        let host_text = &rest[host_start..host_start + i];
        let mut port = None;
        if hb.get(i) == Some(&b':') {
            let start = i + 1;
            i = start;
            while i < hb.len() && hb[i].is_ascii_digit() {
                i += 1;
            }
            if i == start || i - start > 5 {
                return Err(UriError::BadPort);
            }
            let n = crate::text::parse_decimal(&hb[start..i], u64::from(u16::MAX))
                .ok_or(UriError::BadPort)?;
            port = Some(n as u16);
        }
        match hb.get(i) {
            None | Some(b';') | Some(b'?') => {}
            Some(_) if port.is_some() => return Err(UriError::BadPort),
            Some(_) => return Err(UriError::BadHost),
        }
        let host = parse_host(host_text)?;
        let after = &rest[host_start + i..];
        let (params, headers) = match memchr::memchr(b'?', after.as_bytes()) {
            Some(q) => (&after[..q], Some(&after[q + 1..])),
            None => (after, None),
        };
        // uri-parameters: *( ";" pname [ "=" pvalue ] ), names never empty.
        let pb = params.as_bytes();
        let mut k = 0;
        while k < pb.len() {
            // pb[k] is ';'
            let start = k + 1;
            let mut end = start;
            let mut eq = false;
            while end < pb.len() && pb[end] != b';' {
                let c = pb[end];
                if c == b'=' && !eq && end > start {
                    eq = true;
                } else if !PARAM[c as usize] {
                    return Err(UriError::BadParam);
                }
                end += 1;
            }
            if end == start || pb[start] == b'=' {
                return Err(UriError::BadParam);
            }
            if pb[start..end].contains(&b'%') && !escapes_valid(&pb[start..end]) {
                return Err(UriError::BadParam);
            }
            k = end;
        }
        if let Some(h) = headers {
            if h.is_empty() || !escapes_valid(h.as_bytes()) {
                return Err(UriError::BadParam);
            }
        }
        Ok(SipUri {
            scheme,
            user,
            password,
            host,
            host_text,
            port,
            params,
            headers,
        })
    }

    /// The value of URI parameter `name` (`Some("")` for a parameter without value).
    pub fn param(&self, name: &str) -> Option<&'a str> {
        uri_param(self.params, name)
    }

    pub fn has_lr(&self) -> bool {
        self.param("lr").is_some()
    }

    /// The user part with `%HH` escapes decoded once.
    pub fn user_decoded(&self) -> Option<Cow<'a, [u8]>> {
        self.user.map(|u| unescape(u.as_bytes()))
    }

    /// The port to use when none is written: 5061 for `sips:`, 5060 otherwise.
    pub fn default_port(&self) -> u16 {
        if self.scheme == Scheme::Sips {
            5061
        } else {
            5060
        }
    }

    /// URI comparison of RFC 3261 §19.1.4: escapes decoded, host and parameter
    /// names case-insensitive, `user`, `ttl`, `method`, `maddr` and `transport`
    /// must agree when either side has them, other parameters when both do.
    pub fn equivalent(&self, other: &SipUri<'_>) -> bool {
        if self.scheme != other.scheme
            || !self.host.matches(&other.host)
            || self.port != other.port
            || self.user_decoded() != other.user_decoded()
            || self.password.map(|p| unescape(p.as_bytes()))
                != other.password.map(|p| unescape(p.as_bytes()))
        {
            return false;
        }
        for special in ["user", "ttl", "method", "maddr", "transport"] {
            let a = self.param(special).map(|v| unescape(v.as_bytes()));
            let b = other.param(special).map(|v| unescape(v.as_bytes()));
            let same = match (&a, &b) {
                (Some(x), Some(y)) => x.eq_ignore_ascii_case(y),
                (None, None) => true,
                _ => false,
            };
            if !same {
                return false;
            }
        }
        for p in self.params.split(';').skip(1) {
            let (name, value) = p.split_once('=').unwrap_or((p, ""));
            if let Some(v) = other.param(&String::from_utf8_lossy(&unescape(name.as_bytes()))) {
                if !unescape(value.as_bytes()).eq_ignore_ascii_case(&unescape(v.as_bytes())) {
                    return false;
                }
            }
        }
        true
    }
}

/// Finds `name` in a `;a=b;c` parameter string (names compared case-insensitively).
pub(crate) fn uri_param<'a>(params: &'a str, name: &str) -> Option<&'a str> {
    params.split(';').skip(1).find_map(|p| {
        let (n, v) = p.split_once('=').unwrap_or((p, ""));
        n.eq_ignore_ascii_case(name).then_some(v)
    })
}

fn is_password_char(b: u8) -> bool {
    is_unreserved(b) || matches!(b, b'%' | b'&' | b'=' | b'+' | b'$' | b',')
}

/// A `tel:` URI (RFC 3966): the number as written and its parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TelUri<'a> {
    pub number: &'a str,
    pub params: &'a str,
}

impl<'a> TelUri<'a> {
    fn parse_parts(rest: &'a str) -> Result<Self, UriError> {
        let end = rest.find(';').unwrap_or(rest.len());
        let number = &rest[..end];
        let ok = !number.is_empty()
            && number.bytes().all(|b| {
                b.is_ascii_hexdigit() || matches!(b, b'+' | b'-' | b'.' | b'(' | b')' | b'*' | b'#')
            });
        if !ok {
            return Err(UriError::BadUser);
        }
        Ok(TelUri {
            number,
            params: &rest[end..],
        })
    }

    /// True for a global number (`+` followed by digits and visual separators).
    pub fn is_global(&self) -> bool {
        self.number.starts_with('+')
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sip(s: &str) -> SipUri<'_> {
        SipUri::parse(s).unwrap()
    }

    #[test]
    fn user_part_may_hold_semicolons() {
        let u = sip("sip:user;par=u%40example.net@example.com");
        assert_eq!(u.user, Some("user;par=u%40example.net"));
        assert_eq!(u.host, Host::Domain("example.com"));
        assert_eq!(u.param("par"), None);
    }

    #[test]
    fn ipv6_references() {
        let u = sip("sip:[2001:db8::10:5070]");
        assert_eq!(u.port, None);
        assert_eq!(u.host.ip(), Some("2001:db8::10:5070".parse().unwrap()));
        let u = sip("sip:[2001:db8::10]:5070");
        assert_eq!(u.port, Some(5070));
        assert_eq!(u.host.ip(), Some("2001:db8::10".parse().unwrap()));
        let u = sip("sip:user@[2001:db8:::192.0.2.1]");
        assert_eq!(u.host.ip(), Some("2001:db8::c000:201".parse().unwrap()));
        assert_eq!(SipUri::parse("sip:2001:db8::10"), Err(UriError::BadPort));
        let u = sip("sip:[::ffff:192.0.2.2]");
        assert_eq!(u.host.ip(), Some("::ffff:192.0.2.2".parse().unwrap()));
    }

    #[test]
    fn escapes_compare_decoded() {
        let a = sip("sip:%75se%72@example.com");
        let b = sip("sip:user@EXAMPLE.com");
        assert!(a.equivalent(&b));
        let c = sip("sip:v%61lue%25%34%31@example.com");
        let d = sip("sip:valueA@example.com");
        assert!(!c.equivalent(&d));
        let e = sip("sip:null-%00-null@example.com");
        assert_eq!(e.user_decoded().unwrap().len(), 11);
        assert!(!sip("sip:a@h;transport=tcp").equivalent(&sip("sip:a@h")));
        assert!(sip("sip:a@h;foo=1").equivalent(&sip("sip:a@h")));
        assert!(!sip("sip:a@h;foo=1").equivalent(&sip("sip:a@h;foo=2")));
    }

    #[test]
    fn schemes() {
        assert!(matches!(Uri::parse("tel:+1-201-555-0123"), Ok(Uri::Tel(t)) if t.is_global()));
        assert!(matches!(
            Uri::parse("nobodyKnowsThisScheme:totallyopaquecontent"),
            Ok(Uri::Other { .. })
        ));
        assert!(matches!(
            Uri::parse("soap.beep://192.0.2.103:3002"),
            Ok(Uri::Other {
                scheme: "soap.beep",
                ..
            })
        ));
        assert!(matches!(Uri::parse("SIP:a@b"), Ok(Uri::Sip(_))));
        assert_eq!(Uri::parse("<sip:a@b>"), Err(UriError::NoScheme));
        assert_eq!(Uri::parse("sip:a@b; lr"), Err(UriError::BadCharacter));
    }

    #[test]
    fn params_and_headers() {
        let u = sip("sip:services.example.com;lr;unknownwith=value;unknown-no-value");
        assert!(u.has_lr());
        assert_eq!(u.param("unknownwith"), Some("value"));
        assert_eq!(u.param("unknown-no-value"), Some(""));
        let u = sip("sip:user@example.com?Route=%3Csip:example.com%3E");
        assert_eq!(u.headers, Some("Route=%3Csip:example.com%3E"));
        assert_eq!(SipUri::parse("sip:a@b;;x").err(), Some(UriError::BadParam));
    }
}
