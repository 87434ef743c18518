//! Request validation (RFC 3261 §16.3) and the syntax checks a proxy owes the
//! RFC 4475 torture messages. Each failure names what is wrong in its reason.

use std::borrow::Cow;

use crate::headers::{option_tags, CSeq, HeaderName, NameAddr, Via};
use crate::message::{Message, Method};
use crate::uri::Uri;

/// A request the proxy answers itself instead of forwarding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub status: u16,
    pub reason: Cow<'static, str>,
    /// Extra header lines for the response (`Unsupported: …`).
    pub headers: Vec<String>,
}

impl Rejection {
    pub fn new(status: u16, reason: impl Into<Cow<'static, str>>) -> Rejection {
        Rejection {
            status,
            reason: reason.into(),
            headers: Vec::new(),
        }
    }
}

fn bad(reason: &'static str) -> Rejection {
    Rejection::new(400, reason)
}

/// What validation parsed, kept so nothing is parsed twice.
#[derive(Debug)]
pub(crate) struct Checked<'m> {
    pub vias: Vec<Via<'m>>,
    pub from_tag: &'m [u8],
    pub to_tag: Option<&'m [u8]>,
    pub cseq: CSeq<'m>,
    pub ruri: Uri<'m>,
}

/// Checks everything the proxy needs to read, in the order of §16.3 (syntax,
/// URI scheme, Max-Forwards, Proxy-Require). Loop detection needs the proxy's
/// own identity and is done by the caller.
pub(crate) fn check_request(m: &Message) -> Result<Checked<'_>, Rejection> {
    if let Some(d) = m.defect() {
        return Err(Rejection::new(d.status, d.reason.clone()));
    }
    for name in [
        HeaderName::CallId,
        HeaderName::From,
        HeaderName::To,
        HeaderName::CSeq,
    ] {
        match m.count(name) {
            0 => {
                return Err(Rejection::new(400, format!("Missing {name} header")));
            }
            1 => {}
            _ => return Err(Rejection::new(400, format!("Multiple {name} headers"))),
        }
    }
    if m.count(HeaderName::MaxForwards) > 1 {
        return Err(bad("Multiple Max-Forwards headers"));
    }
    if m.count(HeaderName::ContentType) > 1 {
        return Err(bad("Multiple Content-Type headers"));
    }
    if m.call_id().is_some_and(|c| c.is_empty()) {
        return Err(bad("Bad Call-ID"));
    }
    let mut vias = Vec::with_capacity(4);
    for (_, v) in m.list(HeaderName::Via) {
        let via = Via::parse(v).map_err(|_| bad("Bad Via header"))?;
        if via
            .branch()
            .is_some_and(|b| b.eq_ignore_ascii_case(b"z9hG4bK"))
        {
            return Err(bad("Empty Via branch"));
        }
        vias.push(via);
    }
    let cseq = m
        .header(HeaderName::CSeq)
        .map(CSeq::parse)
        .and_then(Result::ok)
        .ok_or_else(|| bad("Bad CSeq"))?;
    if cseq.method != m.method_bytes() {
        return Err(if m.method() == Some(Method::Extension) {
            Rejection::new(
                501,
                "Not Implemented (CSeq method does not match the request method)",
            )
        } else {
            bad("CSeq method does not match the request method")
        });
    }
    let from = NameAddr::parse(m.header(HeaderName::From).unwrap_or_default())
        .map_err(|_| bad("Bad From header"))?;
    let to = NameAddr::parse(m.header(HeaderName::To).unwrap_or_default())
        .map_err(|_| bad("Bad To header"))?;
    for (_, v) in m.list(HeaderName::Contact) {
        if v == b"*" && m.method() == Some(Method::Register) {
            continue;
        }
        NameAddr::parse(v).map_err(|_| bad("Bad Contact header"))?;
    }
    for (name, reason) in [
        (HeaderName::Route, "Bad Route header"),
        (HeaderName::RecordRoute, "Bad Record-Route header"),
    ] {
        for (_, v) in m.list(name) {
            let na = NameAddr::parse(v).map_err(|_| bad(reason))?;
            if !na.bracketed {
                return Err(bad(reason));
            }
        }
    }
    let uri = m.request_uri().map_err(|_| bad("Bad Request-URI"))?;
    match &uri {
        Uri::Sip(u) if u.headers.is_some() => {
            return Err(bad("Request-URI must not carry URI headers"));
        }
        Uri::Sip(_) | Uri::Tel(_) => {}
        Uri::Other { .. } => return Err(Rejection::new(416, "Unsupported URI Scheme")),
    }
    match m.max_forwards() {
        Some(Err(_)) => return Err(bad("Bad Max-Forwards")),
        Some(Ok(0)) if m.method() != Some(Method::Ack) => {
            return Err(Rejection::new(483, "Too Many Hops"));
        }
        _ => {}
    }
    let unsupported: Vec<String> = m
        .fields(HeaderName::ProxyRequire)
        .flat_map(|f| option_tags(m.value(f)))
        .map(|t| String::from_utf8_lossy(t).into_owned())
        .collect();
    if !unsupported.is_empty()
        && m.method() != Some(Method::Ack)
        && m.method() != Some(Method::Cancel)
    {
        let mut r = Rejection::new(420, "Bad Extension");
        r.headers
            .push(format!("Unsupported: {}", unsupported.join(", ")));
        return Err(r);
    }
    Ok(Checked {
        vias,
        from_tag: from.tag().unwrap_or_default(),
        to_tag: to.tag(),
        cseq,
        ruri: uri,
    })
}

/// Checks a response before it is matched: it must name a Via and a CSeq.
pub(crate) fn check_response(m: &Message) -> bool {
    m.defect().is_none()
        && m.top_via().is_some_and(|v| v.is_ok())
        && m.cseq().is_some_and(|c| c.is_ok())
        && m.count(HeaderName::CallId) == 1
}
