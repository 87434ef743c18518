//! The request being routed.

use std::cell::{OnceCell, RefCell};
use std::ops::Range;

use crate::bindings::weir::proxy::types as wit;
use crate::decision::Transport;
use crate::sip;

/// Why the proxy refused an edit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EditError {
    /// The header is the proxy's; the payload names it.
    Guarded(String),
    /// The value is not valid there; the payload says why.
    Invalid(String),
}

impl std::fmt::Display for EditError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            EditError::Guarded(h) => write!(f, "{h} belongs to the proxy"),
            EditError::Invalid(m) => f.write_str(m),
        }
    }
}

impl std::error::Error for EditError {}

/// Where a request came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    pub ip: String,
    pub port: u16,
    pub transport: Transport,
}

/// An edit a mock request recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Edit {
    SetRequestUri(String),
    SetHeader(String, String),
    AppendHeader(String, String),
    RemoveHeader(String),
    SetFromUser(String),
    SetFromDisplay(Option<String>),
}

/// The request being routed, owned by the proxy. The first read copies what
/// routers read (method, URIs, users, Call-ID, every header line) out of the
/// proxy in one call; later reads are local and borrow from that copy. Reads
/// show the request as it reached this plugin; edits apply when it goes out
/// (and a later plugin in the chain sees the new Request-URI and From user).
#[derive(Debug)]
pub struct Request<'a> {
    inner: Inner<'a>,
    view: OnceCell<View>,
}

/// The readable part of a request: strings as ranges of one text.
#[derive(Debug)]
struct View {
    text: String,
    method: Range<usize>,
    request_uri: Range<usize>,
    request_user: Option<Range<usize>>,
    call_id: Range<usize>,
    from_uri: Range<usize>,
    from_user: Option<Range<usize>>,
    to_uri: Range<usize>,
    to_user: Option<Range<usize>>,
    /// Per header line, in order: name start, name end, value start, value end.
    fields: Vec<u32>,
}

impl View {
    fn from_wit(v: wit::RequestView) -> View {
        let r = |s: wit::Span| s.start as usize..s.end as usize;
        View {
            method: r(v.method),
            request_uri: r(v.request_uri),
            request_user: v.request_user.map(r),
            call_id: r(v.call_id),
            from_uri: r(v.from_uri),
            from_user: v.from_user.map(r),
            to_uri: r(v.to_uri),
            to_user: v.to_user.map(r),
            fields: v.fields,
            text: v.text,
        }
    }

    /// What the proxy would answer for this mock request.
    fn from_mock(m: &Mock) -> View {
        let mut text = String::new();
        let mut push = |s: &str| {
            let start = text.len();
            text.push_str(s);
            start..text.len()
        };
        let method = push(&m.method);
        let request_uri = push(&m.uri);
        // The proxy turns a fold's line break into spaces.
        let mut fields = Vec::with_capacity(m.headers.len() * 4);
        for (n, v) in &m.headers {
            let (n, v) = (push(n), push(&v.replace("\r\n", "  ")));
            fields.extend([n.start, n.end, v.start, v.end].map(|o| o as u32));
        }
        let first = |name: &str| {
            m.headers
                .iter()
                .find(|(n, _)| long_form(n).eq_ignore_ascii_case(name))
                .map(|(_, v)| v.as_str())
                .unwrap_or_default()
        };
        let from_uri = sip::name_addr_uri(first("from"));
        let to_uri = sip::name_addr_uri(first("to"));
        View {
            method,
            request_user: sip::user_of(&m.uri).map(|u| push(&u)),
            request_uri,
            call_id: push(first("call-id")),
            from_user: sip::user_of(&from_uri).map(|u| push(&u)),
            from_uri: push(&from_uri),
            to_user: sip::user_of(&to_uri).map(|u| push(&u)),
            to_uri: push(&to_uri),
            fields,
            text,
        }
    }

    fn get(&self, r: &Range<usize>) -> &str {
        // The proxy's ranges are trusted, but a bad one must not panic a plugin.
        self.text.get(r.clone()).unwrap_or_default()
    }

    /// Name and value of each header line.
    fn lines(&self) -> impl Iterator<Item = (&str, &str)> + '_ {
        self.fields.chunks_exact(4).map(|f| {
            let at = |i: usize| f[i] as usize;
            (self.get(&(at(0)..at(1))), self.get(&(at(2)..at(3))))
        })
    }

    fn values<'v, 'n>(&'v self, name: &'n str) -> impl Iterator<Item = &'v str> + use<'v, 'n> {
        let want = long_form(name);
        self.lines()
            .filter(move |(n, _)| long_form(n).eq_ignore_ascii_case(want))
            .map(|(_, v)| v)
    }
}

#[derive(Debug)]
enum Inner<'a> {
    Wasm(&'a wit::Request),
    Mock(RefCell<Mock>),
}

#[derive(Debug)]
struct Mock {
    method: String,
    uri: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    source: Peer,
    identity: Option<String>,
    edits: Vec<Edit>,
}

const GUARDED: &[&str] = &[
    "via",
    "v",
    "cseq",
    "call-id",
    "i",
    "route",
    "record-route",
    "content-length",
    "l",
    "max-forwards",
    "from",
    "f",
    "to",
    "t",
];

const COMPACT: &[(&str, &str)] = &[
    ("f", "from"),
    ("t", "to"),
    ("i", "call-id"),
    ("v", "via"),
    ("m", "contact"),
    ("l", "content-length"),
    ("c", "content-type"),
    ("k", "supported"),
    ("s", "subject"),
    ("e", "content-encoding"),
    ("o", "event"),
    ("r", "refer-to"),
    ("b", "referred-by"),
];

/// The long form of a compact header name (`f` → `from`); other names as given.
fn long_form(name: &str) -> &str {
    if name.len() == 1 {
        if let Some((_, long)) = COMPACT.iter().find(|(c, _)| c.eq_ignore_ascii_case(name)) {
            return long;
        }
    }
    name
}

fn check_header(name: &str, value: &str) -> Result<(), EditError> {
    if name.is_empty()
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-.!%*_+`'~".contains(&b))
    {
        return Err(EditError::Invalid(format!("{name:?} is not a header name")));
    }
    if GUARDED.contains(&name.to_ascii_lowercase().as_str()) {
        return Err(EditError::Guarded(name.to_string()));
    }
    if value.contains(['\r', '\n', '\0']) {
        return Err(EditError::Invalid(format!(
            "the value for {name} contains a line break"
        )));
    }
    Ok(())
}

fn edit_error(e: wit::EditError) -> EditError {
    match e {
        wit::EditError::Guarded(h) => EditError::Guarded(h),
        wit::EditError::Invalid(m) => EditError::Invalid(m),
    }
}

impl<'a> Request<'a> {
    pub(crate) fn wasm(r: &'a wit::Request) -> Request<'a> {
        Request {
            inner: Inner::Wasm(r),
            view: OnceCell::new(),
        }
    }

    /// A request for native tests, from SIP text (CRLF or LF line ends). The
    /// source is 192.0.2.1:5060 over UDP unless [`Request::with_source`] says else.
    pub fn mock(text: &str) -> Result<Request<'static>, String> {
        let (head, body) = match text.find("\r\n\r\n") {
            Some(i) => (&text[..i], &text[i + 4..]),
            None => match text.find("\n\n") {
                Some(i) => (&text[..i], &text[i + 2..]),
                None => (text, ""),
            },
        };
        let mut lines = head.lines();
        let start = lines.next().ok_or("empty request")?;
        let mut parts = start.split_whitespace();
        let (Some(method), Some(uri), Some("SIP/2.0")) = (parts.next(), parts.next(), parts.next())
        else {
            return Err(format!("not a request line: {start:?}"));
        };
        let mut headers: Vec<(String, String)> = Vec::new();
        for line in lines {
            if line.starts_with([' ', '\t']) {
                // A fold: part of the previous value, kept as written.
                match headers.last_mut() {
                    Some((_, v)) => {
                        v.push_str("\r\n");
                        v.push_str(line);
                    }
                    None => return Err(format!("a fold before any header: {line:?}")),
                }
                continue;
            }
            let (n, v) = line
                .split_once(':')
                .ok_or_else(|| format!("not a header line: {line:?}"))?;
            headers.push((n.trim().to_string(), v.trim().to_string()));
        }
        Ok(Request {
            view: OnceCell::new(),
            inner: Inner::Mock(RefCell::new(Mock {
                method: method.to_string(),
                uri: uri.to_string(),
                headers,
                body: body.as_bytes().to_vec(),
                source: Peer {
                    ip: "192.0.2.1".into(),
                    port: 5060,
                    transport: Transport::Udp,
                },
                identity: None,
                edits: Vec::new(),
            })),
        })
    }

    /// Sets a mock request's source address.
    pub fn with_source(self, ip: &str, port: u16, transport: Transport) -> Request<'a> {
        if let Inner::Mock(m) = &self.inner {
            m.borrow_mut().source = Peer {
                ip: ip.to_string(),
                port,
                transport,
            };
        }
        self
    }

    /// Sets a mock request's verified identity.
    pub fn with_identity(self, identity: &str) -> Request<'a> {
        if let Inner::Mock(m) = &self.inner {
            m.borrow_mut().identity = Some(identity.to_string());
        }
        self
    }

    /// The edits made to a mock request, in order (empty inside the proxy).
    pub fn mock_edits(&self) -> Vec<Edit> {
        match &self.inner {
            Inner::Mock(m) => m.borrow().edits.clone(),
            Inner::Wasm(_) => Vec::new(),
        }
    }

    fn view(&self) -> &View {
        self.view.get_or_init(|| match &self.inner {
            Inner::Wasm(r) => View::from_wit(r.view()),
            Inner::Mock(m) => View::from_mock(&m.borrow()),
        })
    }

    pub fn method(&self) -> &str {
        let v = self.view();
        v.get(&v.method)
    }

    pub fn request_uri(&self) -> &str {
        let v = self.view();
        v.get(&v.request_uri)
    }

    /// The Request-URI's user part, unescaped (the dialled number, a call ID…).
    pub fn request_user(&self) -> Option<&str> {
        let v = self.view();
        v.request_user.as_ref().map(|u| v.get(u))
    }

    /// The Call-ID (empty when the request has none).
    pub fn call_id(&self) -> &str {
        let v = self.view();
        v.get(&v.call_id)
    }

    pub fn from_uri(&self) -> &str {
        let v = self.view();
        v.get(&v.from_uri)
    }

    pub fn from_user(&self) -> Option<&str> {
        let v = self.view();
        v.from_user.as_ref().map(|u| v.get(u))
    }

    pub fn to_uri(&self) -> &str {
        let v = self.view();
        v.get(&v.to_uri)
    }

    pub fn to_user(&self) -> Option<&str> {
        let v = self.view();
        v.to_user.as_ref().map(|u| v.get(u))
    }

    /// The first line of a header (any case, compact forms too).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.view().values(name).next()
    }

    /// Every line of a header, in order.
    pub fn header_all(&self, name: &str) -> Vec<&str> {
        self.view().values(name).collect()
    }

    /// The header block as received.
    pub fn headers_raw(&self) -> String {
        match &self.inner {
            Inner::Wasm(r) => r.headers_raw(),
            Inner::Mock(m) => m
                .borrow()
                .headers
                .iter()
                .map(|(n, v)| format!("{n}: {v}\r\n"))
                .collect(),
        }
    }

    /// Header names present, in order, as written.
    pub fn header_names(&self) -> Vec<&str> {
        self.view().lines().map(|(n, _)| n).collect()
    }

    pub fn body(&self) -> Vec<u8> {
        match &self.inner {
            Inner::Wasm(r) => r.body(),
            Inner::Mock(m) => m.borrow().body.clone(),
        }
    }

    /// True when the body is an SDP offer of SRTP: a `RTP/SAVP`(`F`) media
    /// line or SDES keys (`a=crypto`). Decides, for instance, whether to ask
    /// for [`Media::RelaySrtpCaller`](crate::Media::RelaySrtpCaller).
    pub fn offers_srtp(&self) -> bool {
        let body = self.body();
        let text = String::from_utf8_lossy(&body);
        text.lines().any(|l| {
            let l = l.trim_end();
            (l.starts_with("m=")
                && l.split_whitespace()
                    .nth(2)
                    .is_some_and(|p| p.contains("SAVP")))
                || l.starts_with("a=crypto:")
        })
    }

    pub fn source(&self) -> Peer {
        match &self.inner {
            Inner::Wasm(r) => {
                let p = r.source();
                Peer {
                    ip: p.ip,
                    port: p.port,
                    transport: match p.transport {
                        wit::Transport::Udp => Transport::Udp,
                        wit::Transport::Tcp => Transport::Tcp,
                        wit::Transport::Tls => Transport::Tls,
                    },
                }
            }
            Inner::Mock(m) => m.borrow().source.clone(),
        }
    }

    /// The identity the proxy verified (digest user), if any.
    pub fn identity(&self) -> Option<String> {
        match &self.inner {
            Inner::Wasm(r) => r.identity(),
            Inner::Mock(m) => m.borrow().identity.clone(),
        }
    }

    fn mock_edit(&self, e: Edit) {
        if let Inner::Mock(m) = &self.inner {
            m.borrow_mut().edits.push(e);
        }
    }

    pub fn set_request_uri(&self, uri: &str) -> Result<(), EditError> {
        match &self.inner {
            Inner::Wasm(r) => r.set_request_uri(uri).map_err(edit_error)?,
            Inner::Mock(_) => {
                if sip::Uri::parse(uri).is_none() {
                    return Err(EditError::Invalid(format!("{uri:?} is not a sip: URI")));
                }
                self.mock_edit(Edit::SetRequestUri(uri.to_string()));
            }
        }
        Ok(())
    }

    /// Replaces every line of `name` with one line (adds it when absent).
    pub fn set_header(&self, name: &str, value: &str) -> Result<(), EditError> {
        match &self.inner {
            Inner::Wasm(r) => r.set_header(name, value).map_err(edit_error),
            Inner::Mock(_) => {
                check_header(name, value)?;
                self.mock_edit(Edit::SetHeader(name.into(), value.into()));
                Ok(())
            }
        }
    }

    /// Adds a line after the existing ones.
    pub fn append_header(&self, name: &str, value: &str) -> Result<(), EditError> {
        match &self.inner {
            Inner::Wasm(r) => r.append_header(name, value).map_err(edit_error),
            Inner::Mock(_) => {
                check_header(name, value)?;
                self.mock_edit(Edit::AppendHeader(name.into(), value.into()));
                Ok(())
            }
        }
    }

    /// Removes every line of `name`; how many went.
    pub fn remove_header(&self, name: &str) -> Result<u32, EditError> {
        match &self.inner {
            Inner::Wasm(r) => r.remove_header(name).map_err(edit_error),
            Inner::Mock(_) => {
                check_header(name, "")?;
                let n = self.header_all(name).len() as u32;
                self.mock_edit(Edit::RemoveHeader(name.into()));
                Ok(n)
            }
        }
    }

    /// Replaces the From URI's user part (caller-ID).
    pub fn set_from_user(&self, user: &str) -> Result<(), EditError> {
        match &self.inner {
            Inner::Wasm(r) => r.set_from_user(user).map_err(edit_error),
            Inner::Mock(_) => {
                if user.is_empty() || user.chars().any(char::is_control) {
                    return Err(EditError::Invalid("bad From user".into()));
                }
                self.mock_edit(Edit::SetFromUser(user.into()));
                Ok(())
            }
        }
    }

    /// Sets or removes the From display name.
    pub fn set_from_display(&self, display: Option<&str>) -> Result<(), EditError> {
        match &self.inner {
            Inner::Wasm(r) => r.set_from_display(display).map_err(edit_error),
            Inner::Mock(_) => {
                self.mock_edit(Edit::SetFromDisplay(display.map(str::to_string)));
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn headers_are_read_from_one_copy_with_folds_and_compact_forms() {
        let r = Request::mock(
            "INVITE sip:%2B1415@w SIP/2.0\r\nf: \"A <x>\" <sip:alice@h>;tag=1\r\nTo: <sip:bob@w>\r\n\
i: c-1\r\nSubject: one\r\n  two\r\nX-A: 1\r\nx-a: 2\r\n\r\n",
        )
        .unwrap();
        assert_eq!(r.from_user(), Some("alice"));
        assert_eq!(r.to_user(), Some("bob"));
        assert_eq!(r.request_user(), Some("+1415"));
        assert_eq!(r.call_id(), "c-1");
        assert_eq!(r.header("subject"), Some("one    two"));
        assert_eq!(r.header_all("X-a"), vec!["1", "2"]);
        assert_eq!(r.header_names().len(), 6);
        // Reads show the request as it came; the edit is recorded for sending.
        r.set_from_user("+14155550100").unwrap();
        assert_eq!(r.from_user(), Some("alice"));
        assert_eq!(
            r.mock_edits(),
            vec![Edit::SetFromUser("+14155550100".into())]
        );
    }
}
