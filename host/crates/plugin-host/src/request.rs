//! The `request` resource: a received request as plugins see it, and the edits
//! they asked for, checked when asked and applied once, when the request goes out.

use std::sync::Arc;

use weir_sip::headers::{HeaderName, NameAddr};
use weir_sip::message::{Framing, Message, Span as MessageSpan, StartLine};
use weir_sip::proxy::{Flow, Transport};
use weir_sip::uri::{SipUri, Uri};

use weir_sip::Rewrite;

use crate::bindings::weir::proxy::types as wit;

/// Headers the host owns. Plugins read them but may not write them.
const GUARDED: &[(HeaderName, &str)] = &[
    (HeaderName::Via, "Via"),
    (HeaderName::CSeq, "CSeq"),
    (HeaderName::CallId, "Call-ID"),
    (HeaderName::Route, "Route"),
    (HeaderName::RecordRoute, "Record-Route"),
    (HeaderName::ContentLength, "Content-Length"),
    (HeaderName::MaxForwards, "Max-Forwards"),
    (HeaderName::From, "From"),
    (HeaderName::To, "To"),
];

/// Why an edit was refused (mirrors the WIT `edit-error`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EditError {
    Guarded(String),
    Invalid(String),
}

#[derive(Debug, Clone)]
enum HeaderEdit {
    /// Every line of the name goes, then this one is added.
    Set(String, String),
    Append(String, String),
    Remove(String),
}

/// The edits a plugin chain made to one request, in order.
#[derive(Debug, Clone, Default)]
pub struct Edits {
    request_uri: Option<String>,
    headers: Vec<HeaderEdit>,
    from_user: Option<String>,
    /// `Some(None)` removes the display name.
    from_display: Option<Option<String>>,
}

impl Edits {
    pub fn is_empty(&self) -> bool {
        self.request_uri.is_none()
            && self.headers.is_empty()
            && self.from_user.is_none()
            && self.from_display.is_none()
    }
}

/// A request lent to plugins.
#[derive(Debug)]
pub struct RequestRep {
    pub(crate) msg: Arc<Message>,
    pub(crate) source: Flow,
    pub(crate) identity: Option<String>,
    pub(crate) edits: Edits,
}

impl RequestRep {
    pub fn new(msg: Arc<Message>, source: Flow, identity: Option<String>) -> RequestRep {
        RequestRep {
            msg,
            source,
            identity,
            edits: Edits::default(),
        }
    }

    pub fn edits(&self) -> &Edits {
        &self.edits
    }

    pub fn message(&self) -> &Message {
        &self.msg
    }

    pub fn method(&self) -> String {
        lossy(self.msg.method_bytes())
    }

    pub fn request_uri(&self) -> String {
        match &self.edits.request_uri {
            Some(u) => u.clone(),
            None => lossy(self.msg.request_uri_bytes()),
        }
    }

    pub fn request_user(&self) -> Option<String> {
        user_of(&self.request_uri())
    }

    pub fn call_id(&self) -> String {
        lossy(self.msg.call_id().unwrap_or_default())
    }

    pub fn from_uri(&self) -> String {
        name_addr_uri(self.msg.header(HeaderName::From))
    }

    pub fn to_uri(&self) -> String {
        name_addr_uri(self.msg.header(HeaderName::To))
    }

    pub fn from_user(&self) -> Option<String> {
        match &self.edits.from_user {
            Some(u) => Some(u.clone()),
            None => user_of(&self.from_uri()),
        }
    }

    pub fn to_user(&self) -> Option<String> {
        user_of(&self.to_uri())
    }

    pub fn header(&self, name: &str) -> Option<String> {
        self.lines(name).next().map(lossy)
    }

    pub fn header_all(&self, name: &str) -> Vec<String> {
        self.lines(name).map(lossy).collect()
    }

    pub fn headers_raw(&self) -> String {
        let m = &*self.msg;
        let fields = m.fields_all();
        let (Some(first), Some(last)) = (fields.first(), fields.last()) else {
            return String::new();
        };
        let bytes = m.as_bytes();
        let end = (last.line.end as usize).min(bytes.len());
        let start = (first.line.start as usize).min(end);
        lossy(&bytes[start..end])
    }

    /// Method, URIs, users, Call-ID and every header line in one copy (the WIT
    /// `request-view`): one call instead of one per accessor. Derived values
    /// are spans inside the copied head where they can be (a URI inside its
    /// name-addr, a user without escapes), appended otherwise.
    pub fn view(&self) -> wit::RequestView {
        let m = &*self.msg;
        let head = m.head();
        let mut text = String::with_capacity(head.len() + 64);
        // Message spans index the text when the head is UTF-8 (the usual case);
        // otherwise each piece is appended, its invalid bytes replaced.
        let utf8 = match std::str::from_utf8(head) {
            Ok(h) => {
                text.push_str(h);
                true
            }
            Err(_) => false,
        };
        let piece = |text: &mut String, s: MessageSpan| -> wit::Span {
            if utf8 {
                wit::Span {
                    start: s.start,
                    end: s.end,
                }
            } else {
                push(text, &String::from_utf8_lossy(&head[s.range()]))
            }
        };
        let (method, uri) = match m.start() {
            StartLine::Request {
                method_span, uri, ..
            } => (*method_span, *uri),
            StartLine::Response { .. } => Default::default(),
        };
        let method = piece(&mut text, method);
        let uri = piece(&mut text, uri);
        let empty = wit::Span { start: 0, end: 0 };
        let (mut call_id, mut from, mut to) = (None, None, None);
        let mut fields = Vec::with_capacity(m.fields_all().len() * 4);
        for f in m.fields_all() {
            let name = piece(&mut text, f.name_span);
            let value = piece(&mut text, f.value);
            let first = match f.name {
                HeaderName::CallId => &mut call_id,
                HeaderName::From => &mut from,
                HeaderName::To => &mut to,
                _ => &mut None,
            };
            first.get_or_insert(value);
            fields.extend([name.start, name.end, value.start, value.end]);
        }
        let request_uri = match &self.edits.request_uri {
            Some(edited) => push(&mut text, edited),
            None => uri,
        };
        let uri_in = |text: &String, value: Option<wit::Span>| {
            value.map_or(empty, |v| {
                inner(v, name_addr_uri_range(&text.as_bytes()[range(v)]))
            })
        };
        let (from_uri, to_uri) = (uri_in(&text, from), uri_in(&text, to));
        let from_user = match &self.edits.from_user {
            Some(edited) => Some(push(&mut text, edited)),
            None => user_span(&mut text, from_uri),
        };
        wit::RequestView {
            method,
            request_uri,
            request_user: user_span(&mut text, request_uri),
            call_id: call_id.unwrap_or(empty),
            from_uri,
            from_user,
            to_uri,
            to_user: user_span(&mut text, to_uri),
            fields,
            text,
        }
    }

    pub fn body(&self) -> Vec<u8> {
        self.msg.body().to_vec()
    }

    fn lines<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a [u8]> + 'a {
        let class = HeaderName::classify(name.as_bytes());
        let m = &*self.msg;
        m.fields_all()
            .iter()
            .filter(move |f| same_header(m, f, class, name))
            .map(move |f| m.value(f))
    }

    // ----- edits ----------------------------------------------------------------

    pub fn set_request_uri(&mut self, uri: &str) -> Result<(), EditError> {
        check_uri(uri)?;
        self.edits.request_uri = Some(uri.to_string());
        Ok(())
    }

    pub fn set_header(&mut self, name: &str, value: &str) -> Result<(), EditError> {
        check_header(name, value)?;
        self.edits
            .headers
            .push(HeaderEdit::Set(name.to_string(), value.to_string()));
        Ok(())
    }

    pub fn append_header(&mut self, name: &str, value: &str) -> Result<(), EditError> {
        check_header(name, value)?;
        self.edits
            .headers
            .push(HeaderEdit::Append(name.to_string(), value.to_string()));
        Ok(())
    }

    /// Removes every line of `name`; how many lines that was (received lines
    /// not yet removed plus lines added by earlier edits).
    pub fn remove_header(&mut self, name: &str) -> Result<u32, EditError> {
        check_header(name, "")?;
        let class = HeaderName::classify(name.as_bytes());
        let plan = self.plan();
        let m = &*self.msg;
        let received = m
            .fields_all()
            .iter()
            .enumerate()
            .filter(|(i, f)| !plan.removed[*i] && same_header(m, f, class, name))
            .count();
        let added = plan
            .added
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .count();
        self.edits
            .headers
            .push(HeaderEdit::Remove(name.to_string()));
        Ok((received + added) as u32)
    }

    pub fn set_from_user(&mut self, user: &str) -> Result<(), EditError> {
        if user.is_empty() || user.bytes().any(|b| b.is_ascii_control()) {
            return Err(EditError::Invalid(
                "a From user must be non-empty, without control characters".into(),
            ));
        }
        self.edits.from_user = Some(user.to_string());
        // Checked against the real From now, so a bad result is refused here.
        self.new_from().map(|_| ())
    }

    pub fn set_from_display(&mut self, display: Option<&str>) -> Result<(), EditError> {
        if let Some(d) = display {
            if d.bytes().any(|b| b.is_ascii_control()) {
                return Err(EditError::Invalid(
                    "a display name may not contain control characters".into(),
                ));
            }
        }
        self.edits.from_display = Some(display.map(str::to_string));
        self.new_from().map(|_| ())
    }

    /// The request with every edit applied, or `None` when there are none.
    pub fn edited(&self) -> Result<Option<Message>, EditError> {
        if self.edits.is_empty() {
            return Ok(None);
        }
        let m = &*self.msg;
        let mut rw = Rewrite::new(m);
        if let Some(uri) = &self.edits.request_uri {
            rw.set_request_uri(uri.as_bytes());
        }
        let plan = self.plan();
        for (i, gone) in plan.removed.iter().enumerate() {
            if *gone {
                rw.remove(i);
            }
        }
        if let Some(from) = self.new_from()? {
            if let Some(i) = m
                .fields_all()
                .iter()
                .position(|f| f.name == HeaderName::From)
            {
                rw.replace_value(i, &from);
            }
        }
        for (name, value) in &plan.added {
            rw.append(name, value.as_bytes());
        }
        let bytes = rw.finish();
        Message::parse(bytes, Framing::Datagram)
            .map(Some)
            .map_err(|e| EditError::Invalid(format!("the edited request does not parse: {e}")))
    }

    /// Which received lines the header edits remove, and the lines they add.
    fn plan(&self) -> Plan<'_> {
        let m = &*self.msg;
        let mut removed = vec![false; m.fields_all().len()];
        let mut added: Vec<(&str, &str)> = Vec::new();
        for e in &self.edits.headers {
            match e {
                HeaderEdit::Set(n, v) => {
                    remove_named(m, &mut removed, &mut added, n);
                    added.push((n, v));
                }
                HeaderEdit::Append(n, v) => added.push((n, v)),
                HeaderEdit::Remove(n) => remove_named(m, &mut removed, &mut added, n),
            }
        }
        Plan { removed, added }
    }

    /// The From value after `set-from-user` / `set-from-display`.
    fn new_from(&self) -> Result<Option<String>, EditError> {
        if self.edits.from_user.is_none() && self.edits.from_display.is_none() {
            return Ok(None);
        }
        let raw = self.msg.header(HeaderName::From).unwrap_or_default();
        let na = NameAddr::parse(raw)
            .map_err(|e| EditError::Invalid(format!("the From header does not parse: {e}")))?;
        let uri = match &self.edits.from_user {
            Some(user) => with_user(na.uri_text, user)?,
            None => na.uri_text.to_string(),
        };
        let display = match &self.edits.from_display {
            Some(Some(d)) => Some(quote(d)),
            Some(None) => None,
            None => na.display.map(lossy),
        };
        let mut out = String::with_capacity(raw.len() + 16);
        if let Some(d) = display {
            out.push_str(&d);
            out.push(' ');
        }
        out.push('<');
        out.push_str(&uri);
        out.push('>');
        out.push_str(&lossy(na.params.raw()));
        NameAddr::parse(out.as_bytes())
            .map_err(|e| EditError::Invalid(format!("the new From would not parse: {e}")))?;
        Ok(Some(out))
    }
}

struct Plan<'a> {
    removed: Vec<bool>,
    added: Vec<(&'a str, &'a str)>,
}

fn remove_named<'a>(
    m: &Message,
    removed: &mut [bool],
    added: &mut Vec<(&'a str, &'a str)>,
    name: &str,
) {
    let class = HeaderName::classify(name.as_bytes());
    for (i, f) in m.fields_all().iter().enumerate() {
        if same_header(m, f, class, name) {
            removed[i] = true;
        }
    }
    let target = class;
    added.retain(|(n, _)| {
        let c = HeaderName::classify(n.as_bytes());
        !(if c == HeaderName::Other {
            n.eq_ignore_ascii_case(name)
        } else {
            c == target
        })
    });
}

fn same_header(m: &Message, f: &weir_sip::message::Field, class: HeaderName, name: &str) -> bool {
    if class == HeaderName::Other {
        f.name == HeaderName::Other && m.name_bytes(f).eq_ignore_ascii_case(name.as_bytes())
    } else {
        f.name == class
    }
}

fn range(s: wit::Span) -> std::ops::Range<usize> {
    s.start as usize..s.end as usize
}

/// `r`, a range inside the text of `outer`, as a span of the whole text.
fn inner(outer: wit::Span, r: std::ops::Range<usize>) -> wit::Span {
    wit::Span {
        start: outer.start + r.start as u32,
        end: outer.start + r.end as u32,
    }
}

/// The user of the URI at `uri` in a view's text: a span inside it, or the
/// unescaped user appended.
fn user_span(text: &mut String, uri: wit::Span) -> Option<wit::Span> {
    let r = user_range(&text.as_bytes()[range(uri)])?;
    let user = inner(uri, r);
    let raw = &text.as_bytes()[range(user)];
    if memchr::memchr(b'%', raw).is_none() {
        return Some(user);
    }
    let unescaped = lossy(&weir_sip::unescape(raw));
    Some(push(text, &unescaped))
}

/// Appends `s` to a view's text; its span there.
fn push(text: &mut String, s: &str) -> wit::Span {
    let start = text.len() as u32;
    text.push_str(s);
    wit::Span {
        start,
        end: text.len() as u32,
    }
}

fn lossy(b: &[u8]) -> String {
    match std::str::from_utf8(b) {
        Ok(s) => s.to_string(),
        Err(_) => String::from_utf8_lossy(b).into_owned(),
    }
}

/// The URI of a From/To value.
fn name_addr_uri(value: Option<&[u8]>) -> String {
    value.map_or_else(String::new, |v| lossy(&v[name_addr_uri_range(v)]))
}

/// Where the URI is in a From/To value. The proxy checked these headers when
/// the request came in, so a scan for the brackets is enough here.
fn name_addr_uri_range(v: &[u8]) -> std::ops::Range<usize> {
    // A quoted display name may contain '<': skip it first.
    let after_quote = if v.first() == Some(&b'"') {
        let mut i = 1;
        while i < v.len() && v[i] != b'"' {
            i += if v[i] == b'\\' { 2 } else { 1 };
        }
        (i + 1).min(v.len())
    } else {
        0
    };
    match memchr::memchr(b'<', &v[after_quote..]) {
        Some(open) => {
            let start = after_quote + open + 1;
            let end = memchr::memchr(b'>', &v[start..]).map_or(v.len(), |c| start + c);
            start..end
        }
        None => {
            let end = memchr::memchr(b';', v).unwrap_or(v.len());
            let start = v[..end].len() - v[..end].trim_ascii_start().len();
            start..start + v[start..end].trim_ascii_end().len()
        }
    }
}

/// The unescaped user part of a `sip:`/`sips:` URI, or the number of a `tel:` URI.
fn user_of(uri: &str) -> Option<String> {
    let r = user_range(uri.as_bytes())?;
    Some(lossy(&weir_sip::unescape(&uri.as_bytes()[r])))
}

/// Where the user part of a `sip:`/`sips:` URI is (still escaped), or the
/// number of a `tel:` URI.
fn user_range(uri: &[u8]) -> Option<std::ops::Range<usize>> {
    let colon = memchr::memchr(b':', uri)?;
    let (scheme, start) = (&uri[..colon], colon + 1);
    let rest = &uri[start..];
    if scheme.eq_ignore_ascii_case(b"tel") {
        let end = start + memchr::memchr(b';', rest).unwrap_or(rest.len());
        return (end > start).then_some(start..end);
    }
    if !scheme.eq_ignore_ascii_case(b"sip") && !scheme.eq_ignore_ascii_case(b"sips") {
        return None;
    }
    // RFC 3261 §19.1.1: the userinfo ends at the first '@'; ';' and '?' may occur
    // in it (RFC 4475 §3.1.1.9), a password after ':'.
    let at = memchr::memchr(b'@', rest)?;
    let end = memchr::memchr(b':', &rest[..at]).unwrap_or(at);
    Some(start..start + end)
}

/// Rejects a URI the proxy could not send a request to.
pub(crate) fn check_uri(uri: &str) -> Result<(), EditError> {
    match Uri::parse(uri) {
        Ok(Uri::Sip(_)) => Ok(()),
        Ok(_) => Err(EditError::Invalid(format!(
            "{uri:?} is not a sip: or sips: URI"
        ))),
        Err(e) => Err(EditError::Invalid(format!(
            "{uri:?} is not a valid URI: {e}"
        ))),
    }
}

/// Checks a header a plugin wants to write: a token name that is not the
/// host's, and a value on one line.
pub(crate) fn check_header(name: &str, value: &str) -> Result<(), EditError> {
    if name.is_empty() || !name.bytes().all(is_token_char) {
        return Err(EditError::Invalid(format!(
            "{name:?} is not a header name (RFC 3261 token)"
        )));
    }
    let class = HeaderName::classify(name.as_bytes());
    if let Some((_, canonical)) = GUARDED.iter().find(|(h, _)| *h == class) {
        return Err(EditError::Guarded((*canonical).to_string()));
    }
    if value.bytes().any(|b| b == b'\r' || b == b'\n' || b == 0) {
        return Err(EditError::Invalid(format!(
            "the value for {name} contains a line break or NUL"
        )));
    }
    Ok(())
}

fn is_token_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-.!%*_+`'~".contains(&b)
}

/// `uri` with its user part replaced by `user` (escaped as RFC 3261 §25.1 asks).
fn with_user(uri: &str, user: &str) -> Result<String, EditError> {
    let u = SipUri::parse(uri)
        .map_err(|_| EditError::Invalid(format!("the From URI {uri:?} is not a sip: URI")))?;
    let scheme_end = uri.find(':').map_or(0, |i| i + 1);
    let host_at = uri[scheme_end..]
        .find(u.host_text)
        .map_or(scheme_end, |i| scheme_end + i);
    // Keep the password part out: RFC 3261 says not to use it; we drop it.
    let mut out = String::with_capacity(uri.len() + user.len());
    out.push_str(&uri[..scheme_end]);
    for b in user.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.!~*'()&=+$,;?/".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out.push('@');
    out.push_str(&uri[host_at..]);
    Ok(out)
}

/// A display name as a quoted string.
fn quote(d: &str) -> String {
    let mut out = String::with_capacity(d.len() + 2);
    out.push('"');
    for c in d.chars() {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out
}

/// The transport name the WIT uses.
pub(crate) fn transport_of(t: Transport) -> crate::bindings::weir::proxy::types::Transport {
    use crate::bindings::weir::proxy::types::Transport as T;
    match t {
        Transport::Udp => T::Udp,
        Transport::Tcp => T::Tcp,
        Transport::Tls => T::Tls,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use std::net::SocketAddr;

    const INVITE: &str = "INVITE sip:+14155550100@weir.example.com SIP/2.0\r\n\
Via: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK1\r\n\
Max-Forwards: 70\r\n\
From: \"Alice\" <sip:alice@carrier.example.com>;tag=1\r\n\
To: <sip:+14155550100@weir.example.com>\r\n\
Call-ID: abc@192.0.2.1\r\n\
CSeq: 1 INVITE\r\n\
X-Trace: one\r\n\
x-trace: two\r\n\
Contact: <sip:alice@192.0.2.1>\r\n\
Content-Length: 0\r\n\r\n";

    fn rep() -> RequestRep {
        let msg = Message::parse(Bytes::from_static(INVITE.as_bytes()), Framing::Datagram)
            .expect("parses");
        let addr: SocketAddr = "192.0.2.1:5060".parse().expect("addr");
        let local: SocketAddr = "127.0.0.1:5060".parse().expect("addr");
        RequestRep::new(
            Arc::new(msg),
            Flow {
                transport: Transport::Udp,
                local,
                remote: addr,
                conn: None,
            },
            None,
        )
    }

    fn text(m: &Message) -> String {
        String::from_utf8_lossy(m.as_bytes()).into_owned()
    }

    #[test]
    fn accessors_read_the_received_request() {
        let r = rep();
        assert_eq!(r.method(), "INVITE");
        assert_eq!(r.request_user().as_deref(), Some("+14155550100"));
        assert_eq!(r.from_user().as_deref(), Some("alice"));
        assert_eq!(r.to_uri(), "sip:+14155550100@weir.example.com");
        assert_eq!(r.call_id(), "abc@192.0.2.1");
        assert_eq!(r.header_all("X-TRACE"), vec!["one", "two"]);
        assert_eq!(
            r.header("f").as_deref(),
            Some("\"Alice\" <sip:alice@carrier.example.com>;tag=1")
        );
        assert!(r.headers_raw().starts_with("Via: SIP/2.0/UDP"));
        assert!(r.headers_raw().ends_with("Content-Length: 0\r\n"));
    }

    fn rep_of(text: &[u8]) -> RequestRep {
        let mut r = rep();
        r.msg = Arc::new(
            Message::parse(Bytes::copy_from_slice(text), Framing::Datagram).expect("parses"),
        );
        r
    }

    /// Resolves a view the way the SDK does and checks it against the accessors.
    fn assert_view_matches_accessors(r: &RequestRep) {
        let v = r.view();
        let at = |s: wit::Span| &v.text[range(s)];
        let user = |s: Option<wit::Span>| s.map(|s| at(s).to_string());
        assert_eq!(at(v.method), r.method());
        assert_eq!(at(v.request_uri), r.request_uri());
        assert_eq!(user(v.request_user), r.request_user());
        assert_eq!(at(v.call_id), r.call_id());
        assert_eq!(at(v.from_uri), r.from_uri());
        assert_eq!(user(v.from_user), r.from_user());
        assert_eq!(at(v.to_uri), r.to_uri());
        assert_eq!(user(v.to_user), r.to_user());
        let m = r.message();
        assert_eq!(v.fields.len(), m.fields_all().len() * 4);
        for (f, w) in m.fields_all().iter().zip(v.fields.chunks_exact(4)) {
            let (name, value) = (
                &v.text[w[0] as usize..w[1] as usize],
                &v.text[w[2] as usize..w[3] as usize],
            );
            assert_eq!(name, lossy(m.name_bytes(f)));
            assert_eq!(value, lossy(m.value(f)));
        }
    }

    #[test]
    fn the_view_answers_what_the_accessors_answer() {
        assert_view_matches_accessors(&rep());
        // Escaped users, compact forms, a fold, a tel: To, no display name.
        assert_view_matches_accessors(&rep_of(
            b"INVITE sip:%2B1415%20x@w;user=phone SIP/2.0\r\nv: SIP/2.0/UDP h;branch=z9hG4bK2\r\n\
f: sip:ca%6Cler@h;tag=1\r\nt: <tel:+14155550100;phone-context=x>\r\ni: c2\r\n\
CSeq: 1 INVITE\r\nSubject: one\r\n  two\r\nl: 0\r\n\r\n",
        ));
        // A byte that is not UTF-8: every piece is copied, the byte replaced.
        let latin1 = rep_of(
            b"INVITE sip:bob@w SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK3\r\n\
From: \"Ren\xe9\" <sip:rene@h>;tag=1\r\nTo: <sip:bob@w>\r\nCall-ID: c3\r\nCSeq: 1 INVITE\r\n\
X-Name: Ren\xe9\r\nContent-Length: 0\r\n\r\n",
        );
        assert_view_matches_accessors(&latin1);
        assert_eq!(latin1.view().from_user.map(|s| s.end - s.start), Some(4));
        // Edits made by an earlier plugin show in a later plugin's view.
        let mut edited = rep();
        edited
            .set_request_uri("sip:agent%2D7@10.0.0.7:5080")
            .unwrap();
        edited.set_from_user("+14155550199").unwrap();
        assert_view_matches_accessors(&edited);
        assert_eq!(edited.request_user().as_deref(), Some("agent-7"));
    }

    #[test]
    fn guarded_headers_are_refused_by_any_name() {
        let mut r = rep();
        for name in [
            "Via",
            "v",
            "CSeq",
            "call-id",
            "i",
            "Route",
            "Record-Route",
            "l",
            "Max-Forwards",
            "From",
            "t",
        ] {
            assert!(
                matches!(r.set_header(name, "x"), Err(EditError::Guarded(_))),
                "{name}"
            );
            assert!(
                matches!(r.remove_header(name), Err(EditError::Guarded(_))),
                "{name}"
            );
        }
        assert!(matches!(
            r.set_header("X-A", "a\r\nVia: evil"),
            Err(EditError::Invalid(_))
        ));
        assert!(matches!(
            r.set_header("X A", "a"),
            Err(EditError::Invalid(_))
        ));
        assert!(matches!(
            r.set_request_uri("not a uri"),
            Err(EditError::Invalid(_))
        ));
        assert!(matches!(
            r.set_request_uri("tel:+1415"),
            Err(EditError::Invalid(_))
        ));
        assert!(r.edited().expect("no edits").is_none());
    }

    #[test]
    fn edits_apply_in_order_and_keep_the_rest() {
        let mut r = rep();
        r.set_request_uri("sip:agent@10.0.0.5:5080").expect("uri");
        assert_eq!(r.remove_header("x-trace"), Ok(2));
        r.append_header("X-Agent", "a1").expect("append");
        r.set_header("X-Agent", "a2").expect("set");
        r.append_header("User-to-User", "00ff;encoding=hex")
            .expect("uui");
        r.set_from_user("+1 415 555").expect("from user");
        r.set_from_display(None).expect("display");
        let m = r.edited().expect("valid").expect("edited");
        let t = text(&m);
        assert!(
            t.starts_with("INVITE sip:agent@10.0.0.5:5080 SIP/2.0\r\n"),
            "{t}"
        );
        assert!(!t.contains("X-Trace") && !t.contains("x-trace"), "{t}");
        assert!(
            t.contains("\r\nX-Agent: a2\r\n") && !t.contains("a1"),
            "{t}"
        );
        assert!(t.contains("\r\nUser-to-User: 00ff;encoding=hex\r\n"), "{t}");
        assert!(
            t.contains("\r\nFrom: <sip:+1%20415%20555@carrier.example.com>;tag=1\r\n"),
            "{t}"
        );
        assert!(t.contains("\r\nContact: <sip:alice@192.0.2.1>\r\n"), "{t}");
        assert_eq!(m.call_id(), Some(&b"abc@192.0.2.1"[..]));
    }

    #[test]
    fn display_names_are_quoted() {
        let mut r = rep();
        r.set_from_display(Some("Acme \"Support\""))
            .expect("display");
        let t = text(&r.edited().expect("valid").expect("edited"));
        assert!(
            t.contains("From: \"Acme \\\"Support\\\"\" <sip:alice@carrier.example.com>;tag=1\r\n"),
            "{t}"
        );
    }
}
