//! SIP messages that keep their bytes (RFC 3261 §7).
//!
//! [`Message::parse`] indexes a framed message: the start line, one [`Field`] per
//! header line (name, value and whole-line spans into the original bytes) and the
//! body. Nothing is copied or unescaped. Typed views ([`Via`], [`NameAddr`],
//! [`CSeq`]) are parsed lazily on request. [`Rewrite`] produces a new message that
//! copies every untouched line byte for byte, so unknown headers, their order, case
//! and odd white space survive forwarding.
//!
//! Problems that still leave the message addressable (a bad Content-Length, a
//! wrong SIP version, a header line without a colon…) are recorded as a
//! [`Defect`] rather than failing the parse, so the proxy can answer them with a
//! precise status along the Via.

use std::borrow::Cow;
use std::fmt;

use bytes::{BufMut, Bytes, BytesMut};

use crate::headers::{CSeq, HeaderError, HeaderName, NameAddr, Via};
use crate::text::{is_token, parse_decimal, split_list, trim};
use crate::uri::{Uri, UriError};

/// A byte range in the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Span {
    pub start: u32,
    pub end: u32,
}

impl Span {
    fn new(start: usize, end: usize) -> Span {
        // Messages are capped far below 4 GiB by the framers.
        Span {
            start: start as u32,
            end: end as u32,
        }
    }
    pub fn range(&self) -> std::ops::Range<usize> {
        self.start as usize..self.end as usize
    }
    pub fn len(&self) -> usize {
        (self.end - self.start) as usize
    }
    pub fn is_empty(&self) -> bool {
        self.start == self.end
    }
}

/// SIP methods (RFC 3261 and the common extensions). Extension methods keep
/// their text; `RE%47IST%45R` is an extension method, not REGISTER.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Method {
    Invite,
    Ack,
    Bye,
    Cancel,
    Options,
    Register,
    Prack,
    Subscribe,
    Notify,
    Publish,
    Info,
    Refer,
    Message,
    Update,
    Extension,
}

impl Method {
    pub fn from_bytes(m: &[u8]) -> Method {
        match m {
            b"INVITE" => Method::Invite,
            b"ACK" => Method::Ack,
            b"BYE" => Method::Bye,
            b"CANCEL" => Method::Cancel,
            b"OPTIONS" => Method::Options,
            b"REGISTER" => Method::Register,
            b"PRACK" => Method::Prack,
            b"SUBSCRIBE" => Method::Subscribe,
            b"NOTIFY" => Method::Notify,
            b"PUBLISH" => Method::Publish,
            b"INFO" => Method::Info,
            b"REFER" => Method::Refer,
            b"MESSAGE" => Method::Message,
            b"UPDATE" => Method::Update,
            _ => Method::Extension,
        }
    }

    pub fn as_str(&self) -> &'static str {
        match self {
            Method::Invite => "INVITE",
            Method::Ack => "ACK",
            Method::Bye => "BYE",
            Method::Cancel => "CANCEL",
            Method::Options => "OPTIONS",
            Method::Register => "REGISTER",
            Method::Prack => "PRACK",
            Method::Subscribe => "SUBSCRIBE",
            Method::Notify => "NOTIFY",
            Method::Publish => "PUBLISH",
            Method::Info => "INFO",
            Method::Refer => "REFER",
            Method::Message => "MESSAGE",
            Method::Update => "UPDATE",
            Method::Extension => "",
        }
    }
}

/// The first line of a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartLine {
    Request {
        method: Method,
        method_span: Span,
        uri: Span,
    },
    Response {
        code: u16,
        reason: Span,
    },
}

/// One header line (possibly folded over several physical lines).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Field {
    pub name: HeaderName,
    pub name_span: Span,
    /// The value, white space trimmed at both ends (folds inside are kept).
    pub value: Span,
    /// The whole line, from the name to and including the final CRLF.
    pub line: Span,
}

/// Something wrong with a message that is still addressable. `status` is the
/// response a request deserves; responses with a defect are dropped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Defect {
    pub status: u16,
    pub reason: Cow<'static, str>,
}

impl Defect {
    pub fn new(status: u16, reason: impl Into<Cow<'static, str>>) -> Defect {
        Defect {
            status,
            reason: reason.into(),
        }
    }
}

const SLOTS: usize = 16;

/// Why bytes could not be indexed as a SIP message at all. Such input is dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("empty message")]
    Empty,
    #[error("the start line is not a SIP request or status line")]
    StartLine,
    #[error("the header section does not end with an empty line")]
    Unterminated,
    #[error("a line does not end with CRLF")]
    BareLineFeed,
}

/// How the body of a message is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// The bytes are one UDP datagram: Content-Length, when present, cuts the
    /// body and anything after it is discarded (RFC 3261 §18.3); without it the
    /// body is the rest of the datagram.
    Datagram,
    /// The bytes are exactly one message, already framed by Content-Length.
    Exact,
}

/// A parsed SIP message over its original bytes.
#[derive(Clone)]
pub struct Message {
    buf: Bytes,
    /// `buf` with the CR LF of every fold turned into spaces (same offsets), when
    /// the message has folded lines; typed parsers read values from here.
    unfolded: Option<Bytes>,
    start: StartLine,
    start_line: Span,
    headers: Vec<Field>,
    /// Per known header name: index of its first line + 1 (0: absent), and count.
    first: [u16; SLOTS],
    counts: [u8; SLOTS],
    body: Span,
    content_length: Option<usize>,
    defect: Option<Defect>,
}

impl fmt::Debug for Message {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Message")
            .field(
                "start",
                &String::from_utf8_lossy(&self.buf[self.start_line.range()]),
            )
            .field("headers", &self.headers.len())
            .field("body", &self.body.len())
            .field("defect", &self.defect)
            .finish()
    }
}

impl Message {
    /// Indexes one message. See [`Framing`] for how the body is found.
    pub fn parse(buf: Bytes, framing: Framing) -> Result<Message, ParseError> {
        let bytes = &buf[..];
        // RFC 3261 §7.5: ignore CRLFs before the start line.
        let mut pos = 0;
        while bytes[pos..].starts_with(b"\r\n") {
            pos += 2;
        }
        if pos >= bytes.len() {
            return Err(ParseError::Empty);
        }
        let line_end = find_crlf(bytes, pos).ok_or(ParseError::Unterminated)?;
        let start_line = Span::new(pos, line_end);
        let mut defect = None;
        let start = parse_start_line(&bytes[pos..line_end], pos, &mut defect)?;

        let mut headers = Vec::with_capacity(20);
        let mut first = [0u16; SLOTS];
        let mut counts = [0u8; SLOTS];
        let mut folded = false;
        let mut pos = line_end + 2;
        let head_end = loop {
            if pos + 2 > bytes.len() {
                return Err(ParseError::Unterminated);
            }
            if bytes[pos] == b'\r' && bytes[pos + 1] == b'\n' {
                break pos;
            }
            // One logical header line: up to a CRLF not followed by SP/HT.
            let mut end = find_crlf(bytes, pos).ok_or(ParseError::Unterminated)?;
            while end + 2 < bytes.len() && matches!(bytes[end + 2], b' ' | b'\t') {
                folded = true;
                end = find_crlf(bytes, end + 2).ok_or(ParseError::Unterminated)?;
            }
            let line = &bytes[pos..end];
            match line.iter().position(|&b| b == b':') {
                Some(colon) => {
                    let name = trim(&line[..colon]);
                    if name.is_empty() || !name.iter().all(|&b| is_token(b)) {
                        defect.get_or_insert(Defect::new(400, "Malformed header name"));
                    } else {
                        let name_start = pos + (name.as_ptr() as usize - line.as_ptr() as usize);
                        let raw_value = &line[colon + 1..];
                        let v = trim(raw_value);
                        let v_start = if v.is_empty() {
                            pos + colon + 1
                        } else {
                            pos + colon + 1 + (v.as_ptr() as usize - raw_value.as_ptr() as usize)
                        };
                        let hn = HeaderName::classify(name);
                        if let Some(slot) = hn.slot() {
                            if first[slot] == 0 {
                                first[slot] = u16::try_from(headers.len() + 1).unwrap_or(u16::MAX);
                            }
                            counts[slot] = counts[slot].saturating_add(1);
                        }
                        headers.push(Field {
                            name: hn,
                            name_span: Span::new(name_start, name_start + name.len()),
                            value: Span::new(v_start, v_start + v.len()),
                            line: Span::new(pos, end + 2),
                        });
                    }
                }
                None => {
                    defect.get_or_insert(Defect::new(400, "Header line without a colon"));
                }
            }
            pos = end + 2;
        };
        let body_start = head_end + 2;

        let unfolded = folded.then(|| unfold(&bytes[..body_start], &headers));
        let mut msg = Message {
            buf,
            unfolded,
            start,
            start_line,
            headers,
            first,
            counts,
            body: Span::default(),
            content_length: None,
            defect,
        };
        let available = msg.buf.len() - body_start;
        let cl = msg.scan_content_length();
        msg.content_length = cl.as_ref().ok().copied().flatten();
        let body_len = match (cl, framing) {
            (Ok(Some(n)), Framing::Datagram) if n > available => {
                msg.defect.get_or_insert(Defect::new(
                    400,
                    "Content-Length is larger than the datagram",
                ));
                available
            }
            (Ok(Some(n)), _) => n.min(available),
            (Ok(None), _) => available,
            (Err(d), _) => {
                msg.defect.get_or_insert(d);
                available
            }
        };
        msg.body = Span::new(body_start, body_start + body_len);
        Ok(msg)
    }

    /// Content-Length as declared: `Ok(None)` when absent, an error when malformed
    /// or when several headers disagree (RFC 4475 §3.3.9).
    fn scan_content_length(&self) -> Result<Option<usize>, Defect> {
        let mut found: Option<usize> = None;
        for f in self.fields(HeaderName::ContentLength) {
            let v = self.value(f);
            let n = parse_decimal(v, 1 << 30)
                .ok_or_else(|| Defect::new(400, "Bad Content-Length"))?
                as usize;
            match found {
                Some(prev) if prev != n => {
                    return Err(Defect::new(400, "Conflicting Content-Length headers"))
                }
                _ => found = Some(n),
            }
        }
        Ok(found)
    }

    /// The original bytes, exactly as received (after framing).
    pub fn as_bytes(&self) -> &Bytes {
        &self.buf
    }

    pub fn start(&self) -> &StartLine {
        &self.start
    }

    pub fn is_request(&self) -> bool {
        matches!(self.start, StartLine::Request { .. })
    }

    /// The first problem found while indexing, if any.
    pub fn defect(&self) -> Option<&Defect> {
        self.defect.as_ref()
    }

    pub fn method(&self) -> Option<Method> {
        match self.start {
            StartLine::Request { method, .. } => Some(method),
            StartLine::Response { .. } => None,
        }
    }

    /// The method token as written (for extension methods).
    pub fn method_bytes(&self) -> &[u8] {
        match self.start {
            StartLine::Request { method_span, .. } => &self.buf[method_span.range()],
            StartLine::Response { .. } => b"",
        }
    }

    pub fn request_uri_bytes(&self) -> &[u8] {
        match self.start {
            StartLine::Request { uri, .. } => &self.buf[uri.range()],
            StartLine::Response { .. } => b"",
        }
    }

    /// The Request-URI, parsed.
    pub fn request_uri(&self) -> Result<Uri<'_>, UriError> {
        let s =
            std::str::from_utf8(self.request_uri_bytes()).map_err(|_| UriError::BadCharacter)?;
        Uri::parse(s)
    }

    pub fn status(&self) -> Option<u16> {
        match self.start {
            StartLine::Response { code, .. } => Some(code),
            StartLine::Request { .. } => None,
        }
    }

    pub fn reason(&self) -> &[u8] {
        match self.start {
            StartLine::Response { reason, .. } => &self.buf[reason.range()],
            StartLine::Request { .. } => b"",
        }
    }

    /// Every header line, in order.
    pub fn fields_all(&self) -> &[Field] {
        &self.headers
    }

    /// Index of the first line of a known header name.
    fn first_index(&self, name: HeaderName) -> Option<usize> {
        match name.slot() {
            Some(slot) => (self.first[slot] as usize).checked_sub(1),
            None => self.headers.iter().position(|f| f.name == name),
        }
    }

    /// Header lines of one known name, in order.
    pub fn fields(&self, name: HeaderName) -> impl Iterator<Item = &Field> + '_ {
        let from = self.first_index(name).unwrap_or(self.headers.len());
        self.headers[from..].iter().filter(move |f| f.name == name)
    }

    /// Header lines whose name is `name` (any case; for headers without a typed name).
    pub fn fields_named<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a Field> + 'a {
        self.headers
            .iter()
            .filter(move |f| self.buf[f.name_span.range()].eq_ignore_ascii_case(name.as_bytes()))
    }

    /// A header value with folds turned into white space.
    pub fn value(&self, f: &Field) -> &[u8] {
        match &self.unfolded {
            Some(u) => &u[f.value.range()],
            None => &self.buf[f.value.range()],
        }
    }

    /// The header name as written.
    pub fn name_bytes(&self, f: &Field) -> &[u8] {
        &self.buf[f.name_span.range()]
    }

    /// The start line and header lines as values read them: folds turned into
    /// white space, at the offsets of [`Message::as_bytes`], so every span of
    /// the start line and of a [`Field`] indexes it.
    pub fn head(&self) -> &[u8] {
        let end = self
            .headers
            .last()
            .map_or(self.start_line.end, |f| f.line.end) as usize;
        let bytes = self.unfolded.as_ref().unwrap_or(&self.buf);
        &bytes[..end.min(bytes.len())]
    }

    /// The first value of the first header line of this name.
    pub fn header(&self, name: HeaderName) -> Option<&[u8]> {
        self.fields(name).next().map(|f| self.value(f))
    }

    pub fn count(&self, name: HeaderName) -> usize {
        match name.slot() {
            Some(slot) if self.counts[slot] < u8::MAX => usize::from(self.counts[slot]),
            _ => self.fields(name).count(),
        }
    }

    /// Every comma-separated value of a list header, across lines, in order:
    /// `(index of the line in [`Message::fields_all`], value)`.
    pub fn list(&self, name: HeaderName) -> impl Iterator<Item = (usize, &[u8])> + '_ {
        let from = self.first_index(name).unwrap_or(self.headers.len());
        self.headers
            .iter()
            .enumerate()
            .skip(from)
            .filter(move |(_, f)| f.name == name)
            .flat_map(move |(i, f)| split_list(self.value(f)).map(move |(_, v)| (i, v)))
    }

    /// The top Via, parsed.
    pub fn top_via(&self) -> Option<Result<Via<'_>, HeaderError>> {
        self.list(HeaderName::Via)
            .next()
            .map(|(_, v)| Via::parse(v))
    }

    pub fn call_id(&self) -> Option<&[u8]> {
        self.header(HeaderName::CallId)
    }

    pub fn cseq(&self) -> Option<Result<CSeq<'_>, HeaderError>> {
        self.header(HeaderName::CSeq).map(CSeq::parse)
    }

    pub fn from(&self) -> Option<Result<NameAddr<'_>, HeaderError>> {
        self.header(HeaderName::From).map(NameAddr::parse)
    }

    pub fn to(&self) -> Option<Result<NameAddr<'_>, HeaderError>> {
        self.header(HeaderName::To).map(NameAddr::parse)
    }

    /// Max-Forwards: `None` when absent, `Some(Err)` when not a number. Values
    /// above 255 are clamped (RFC 4475 §3.1.2.4 tolerates overlarge values).
    pub fn max_forwards(&self) -> Option<Result<u8, HeaderError>> {
        self.header(HeaderName::MaxForwards).map(|v| {
            let digits = trim(v);
            if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
                return Err(HeaderError::Number);
            }
            Ok(parse_decimal(digits, u64::MAX).map_or(255, |n| n.min(255) as u8))
        })
    }

    pub fn content_length(&self) -> Option<usize> {
        self.content_length
    }

    pub fn content_type(&self) -> Option<&[u8]> {
        self.header(HeaderName::ContentType)
    }

    pub fn body(&self) -> &[u8] {
        &self.buf[self.body.range()]
    }

    /// The body as a zero-copy slice of the message bytes.
    pub fn body_bytes(&self) -> Bytes {
        self.buf.slice(self.body.range())
    }

    /// Total length of the framed message (start line to end of body).
    pub fn len(&self) -> usize {
        self.body.end as usize
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub(crate) fn raw(&self, span: Span) -> &[u8] {
        &self.buf[span.range()]
    }
}

fn find_crlf(bytes: &[u8], from: usize) -> Option<usize> {
    let mut i = from;
    loop {
        let lf = memchr::memchr(b'\n', &bytes[i..])? + i;
        if lf > 0 && bytes[lf - 1] == b'\r' {
            return Some(lf - 1);
        }
        // A bare LF inside a header line is not a line end; keep looking. It is
        // reported when the line itself fails to parse.
        i = lf + 1;
        if i >= bytes.len() {
            return None;
        }
    }
}

fn unfold(head: &[u8], headers: &[Field]) -> Bytes {
    let mut out = head.to_vec();
    for f in headers {
        for i in f.value.range() {
            if out[i] == b'\r' || out[i] == b'\n' {
                out[i] = b' ';
            }
        }
    }
    Bytes::from(out)
}

fn parse_start_line(
    line: &[u8],
    offset: usize,
    defect: &mut Option<Defect>,
) -> Result<StartLine, ParseError> {
    if let Some(rest) = line.strip_prefix(b"SIP/") {
        // Status-Line = SIP-Version SP Status-Code SP Reason-Phrase
        let sp = rest
            .iter()
            .position(|&b| b == b' ')
            .ok_or(ParseError::StartLine)?;
        let after = &rest[sp + 1..];
        let code_end = after.iter().position(|&b| b == b' ').unwrap_or(after.len());
        let code = &after[..code_end];
        if code.len() != 3 || !code.iter().all(u8::is_ascii_digit) {
            return Err(ParseError::StartLine);
        }
        let code = parse_decimal(code, 999).ok_or(ParseError::StartLine)? as u16;
        if !(100..=699).contains(&code) {
            return Err(ParseError::StartLine);
        }
        if &rest[..sp] != b"2.0" {
            defect.get_or_insert(Defect::new(505, "Version Not Supported"));
        }
        let reason_start = offset + 4 + sp + 1 + code_end + usize::from(code_end < after.len());
        return Ok(StartLine::Response {
            code,
            reason: Span::new(reason_start.min(offset + line.len()), offset + line.len()),
        });
    }
    // Request-Line = Method SP Request-URI SP SIP-Version
    let m_end = line
        .iter()
        .position(|&b| b == b' ')
        .ok_or(ParseError::StartLine)?;
    let method = &line[..m_end];
    if method.is_empty() || !method.iter().all(|&b| is_token(b)) {
        return Err(ParseError::StartLine);
    }
    let after = &line[m_end + 1..];
    let core_end = after.len() - after.iter().rev().take_while(|&&b| b == b' ').count();
    let lead = after[..core_end].iter().take_while(|&&b| b == b' ').count();
    let v_sp = after[..core_end]
        .iter()
        .rposition(|&b| b == b' ')
        .ok_or(ParseError::StartLine)?;
    if v_sp < lead {
        return Err(ParseError::StartLine);
    }
    let version = &after[v_sp + 1..core_end];
    if version.len() < 5 || !version[..4].eq_ignore_ascii_case(b"SIP/") {
        return Err(ParseError::StartLine);
    }
    let uri_s = m_end + 1 + lead;
    let mut uri_e = m_end + 1 + v_sp;
    while uri_e > uri_s && line[uri_e - 1] == b' ' {
        uri_e -= 1;
    }
    // RFC 4475 §3.1.2.9/10: extra SP around the URI or after the version is invalid.
    if lead > 0 || core_end < after.len() || uri_e < m_end + 1 + v_sp {
        defect.get_or_insert(Defect::new(
            400,
            "Malformed request line (extra white space)",
        ));
    }
    if &version[4..] != b"2.0" {
        defect.get_or_insert(Defect::new(505, "Version Not Supported"));
    }
    let uri = &line[uri_s..uri_e];
    if uri.is_empty() || uri.contains(&b' ') || uri.contains(&b'\t') {
        defect.get_or_insert(Defect::new(400, "White space in the Request-URI"));
    }
    Ok(StartLine::Request {
        method: Method::from_bytes(method),
        method_span: Span::new(offset, offset + m_end),
        uri: Span::new(offset + uri_s, offset + uri_e),
    })
}

/// An edit of a message that re-serialises only what changed.
///
/// ```
/// # use weir_sip::message::{Message, Framing, Rewrite};
/// # use weir_sip::headers::HeaderName;
/// let m = Message::parse(
///     bytes::Bytes::from_static(b"OPTIONS sip:a@b SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\nX-Odd :  kept  \r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"),
///     Framing::Datagram,
/// ).unwrap();
/// let mf = m.fields_all().iter().position(|f| f.name == HeaderName::MaxForwards).unwrap();
/// let mut rw = Rewrite::new(&m);
/// rw.prepend("Via", "SIP/2.0/UDP proxy;branch=z9hG4bKp");
/// rw.replace_value(mf, "69");
/// let out = rw.finish();
/// assert_eq!(&out[..], &b"OPTIONS sip:a@b SIP/2.0\r\nVia: SIP/2.0/UDP proxy;branch=z9hG4bKp\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\nX-Odd :  kept  \r\nMax-Forwards: 69\r\nContent-Length: 0\r\n\r\n"[..]);
/// ```
#[derive(Debug)]
pub struct Rewrite<'m> {
    msg: &'m Message,
    start_line: Option<Vec<u8>>,
    uri: Option<Vec<u8>>,
    top: Vec<u8>,
    edits: Vec<(usize, FieldEdit)>,
    tail: Vec<u8>,
    body: Option<Bytes>,
}

#[derive(Debug)]
enum FieldEdit {
    Remove,
    Replace(Vec<u8>),
    /// Edits of a comma-separated line: values dropped at either end, and a new
    /// first value (after the drops).
    Values {
        drop_front: usize,
        drop_back: usize,
        first: Option<Vec<u8>>,
    },
}

impl<'m> Rewrite<'m> {
    pub fn new(msg: &'m Message) -> Self {
        Rewrite {
            msg,
            start_line: None,
            uri: None,
            top: Vec::new(),
            edits: Vec::new(),
            tail: Vec::new(),
            body: None,
        }
    }

    pub fn message(&self) -> &'m Message {
        self.msg
    }

    /// Replaces the Request-URI (requests only).
    pub fn set_request_uri(&mut self, uri: &[u8]) {
        self.uri = Some(uri.to_vec());
    }

    /// Replaces the whole start line (without CRLF).
    pub fn set_start_line(&mut self, line: &[u8]) {
        self.start_line = Some(line.to_vec());
    }

    /// Inserts a header line above all existing ones. Later calls go above earlier ones,
    /// as a Via or Record-Route must.
    pub fn prepend(&mut self, name: &str, value: &str) {
        let mut line = Vec::with_capacity(name.len() + value.len() + 4);
        line.extend_from_slice(name.as_bytes());
        line.extend_from_slice(b": ");
        line.extend_from_slice(value.as_bytes());
        line.extend_from_slice(b"\r\n");
        line.extend_from_slice(&self.top);
        self.top = line;
    }

    /// Adds a header line below all existing ones.
    pub fn append(&mut self, name: &str, value: &[u8]) {
        self.tail.extend_from_slice(name.as_bytes());
        self.tail.extend_from_slice(b": ");
        self.tail.extend_from_slice(value);
        self.tail.extend_from_slice(b"\r\n");
    }

    /// Removes header line `index` (an index into [`Message::fields_all`]).
    pub fn remove(&mut self, index: usize) {
        self.set_edit(index, FieldEdit::Remove);
    }

    /// Replaces the value of header line `index`, keeping its name as written.
    pub fn replace_value(&mut self, index: usize, value: &str) {
        self.set_edit(index, FieldEdit::Replace(value.as_bytes().to_vec()));
    }

    /// Removes the first `n` values of a comma-separated header line; the whole line
    /// goes when nothing is left.
    pub fn drop_first_values(&mut self, index: usize, n: usize) {
        self.values_edit(index, |front, _, _| *front += n);
    }

    /// Removes the last `n` values of a comma-separated header line.
    pub fn drop_last_values(&mut self, index: usize, n: usize) {
        self.values_edit(index, |_, back, _| *back += n);
    }

    /// Replaces the first (remaining) value of a comma-separated header line.
    pub fn replace_first_value(&mut self, index: usize, value: &[u8]) {
        self.values_edit(index, |_, _, first| *first = Some(value.to_vec()));
    }

    fn values_edit(
        &mut self,
        index: usize,
        f: impl FnOnce(&mut usize, &mut usize, &mut Option<Vec<u8>>),
    ) {
        let slot = match self.edits.iter().position(|(i, _)| *i == index) {
            Some(p) => p,
            None => {
                self.edits.push((
                    index,
                    FieldEdit::Values {
                        drop_front: 0,
                        drop_back: 0,
                        first: None,
                    },
                ));
                self.edits.len() - 1
            }
        };
        if let FieldEdit::Values {
            drop_front,
            drop_back,
            first,
        } = &mut self.edits[slot].1
        {
            f(drop_front, drop_back, first);
        }
    }

    /// Replaces the body and its Content-Length.
    pub fn set_body(&mut self, body: Bytes) {
        self.body = Some(body);
    }

    fn set_edit(&mut self, index: usize, edit: FieldEdit) {
        match self.edits.iter_mut().find(|(i, _)| *i == index) {
            Some(slot) => slot.1 = edit,
            None => self.edits.push((index, edit)),
        }
    }

    /// Serialises the edited message.
    pub fn finish(mut self) -> Bytes {
        let m = self.msg;
        let body = self.body.take();
        let body_len = body.as_ref().map_or(m.body.len(), Bytes::len);
        let mut out = BytesMut::with_capacity(m.len() + self.top.len() + self.tail.len() + 64);
        match (&self.start_line, &self.uri, m.start) {
            (Some(line), _, _) => out.put_slice(line),
            (None, Some(uri), StartLine::Request { uri: span, .. }) => {
                let sl = m.start_line;
                out.put_slice(&m.buf[sl.start as usize..span.start as usize]);
                out.put_slice(uri);
                out.put_slice(&m.buf[span.end as usize..sl.end as usize]);
            }
            _ => out.put_slice(m.raw(m.start_line)),
        }
        out.put_slice(b"\r\n");
        out.put_slice(&self.top);
        let mut saw_cl = false;
        for (i, f) in m.headers.iter().enumerate() {
            let edit = self.edits.iter().find(|(j, _)| *j == i).map(|(_, e)| e);
            if f.name == HeaderName::ContentLength {
                if saw_cl {
                    continue;
                }
                saw_cl = true;
                if body.is_some() || m.content_length != Some(body_len) {
                    put_line(
                        &mut out,
                        m.raw(f.name_span),
                        body_len.to_string().as_bytes(),
                    );
                    continue;
                }
            }
            match edit {
                None => out.put_slice(m.raw(f.line)),
                Some(FieldEdit::Remove) => {}
                Some(FieldEdit::Replace(v)) => put_line(&mut out, m.raw(f.name_span), v),
                Some(FieldEdit::Values {
                    drop_front,
                    drop_back,
                    first,
                }) => {
                    let v = m.raw(f.value);
                    // Kept values: indices drop_front..n - drop_back. Two passes over
                    // a short value instead of collecting it (this runs on every
                    // forwarded request and response).
                    let n = split_list(v).count();
                    let end = n.saturating_sub(*drop_back);
                    if *drop_front >= end {
                        continue;
                    }
                    let mut start = 0;
                    let mut second = None;
                    let mut stop = 0;
                    for (i, (off, piece)) in split_list(v).enumerate().take(end) {
                        if i == *drop_front {
                            start = off;
                        } else if i == *drop_front + 1 {
                            second = Some(off);
                        }
                        stop = off + piece.len();
                    }
                    out.put_slice(m.raw(f.name_span));
                    out.put_slice(b": ");
                    match (first, second) {
                        (Some(first), Some(second)) => {
                            out.put_slice(first);
                            out.put_slice(b", ");
                            out.put_slice(&v[second..stop]);
                        }
                        (Some(first), None) => out.put_slice(first),
                        (None, _) => out.put_slice(&v[start..stop]),
                    }
                    out.put_slice(b"\r\n");
                }
            }
        }
        out.put_slice(&self.tail);
        if !saw_cl {
            put_line(&mut out, b"Content-Length", body_len.to_string().as_bytes());
        }
        out.put_slice(b"\r\n");
        match body {
            Some(b) => out.put_slice(&b),
            None => out.put_slice(m.body()),
        }
        out.freeze()
    }
}

/// Writes one header line `name: value` CRLF.
pub(crate) fn put_line(out: &mut BytesMut, name: &[u8], value: &[u8]) {
    out.put_slice(name);
    out.put_slice(b": ");
    out.put_slice(value);
    out.put_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &[u8]) -> Message {
        Message::parse(Bytes::copy_from_slice(s), Framing::Datagram).unwrap()
    }

    const INVITE: &[u8] = b"INVITE sip:bob@example.com SIP/2.0\r\n\
Via: SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bKa, SIP/2.0/UDP 10.0.0.2;branch=z9hG4bKb\r\n\
Route: <sip:p1.example.com;lr>,<sip:p2.example.com;lr>\r\n\
Max-Forwards: 70\r\n\
From: <sip:alice@example.com>;tag=1\r\n\
To: <sip:bob@example.com>\r\n\
Call-ID: abc\r\n\
CSeq: 1 INVITE\r\n\
X-Custom:    Weird   Spacing  \r\n\
Content-Length: 4\r\n\r\nbody";

    #[test]
    fn index_and_typed_access() {
        let m = parse(INVITE);
        assert_eq!(m.method(), Some(Method::Invite));
        assert_eq!(m.request_uri_bytes(), b"sip:bob@example.com");
        assert_eq!(m.list(HeaderName::Via).count(), 2);
        assert_eq!(
            m.top_via().unwrap().unwrap().branch(),
            Some(&b"z9hG4bKa"[..])
        );
        assert_eq!(m.call_id(), Some(&b"abc"[..]));
        assert_eq!(m.cseq().unwrap().unwrap().seq, 1);
        assert_eq!(m.from().unwrap().unwrap().tag(), Some(&b"1"[..]));
        assert_eq!(m.to().unwrap().unwrap().tag(), None);
        assert_eq!(m.max_forwards(), Some(Ok(70)));
        assert_eq!(m.body(), b"body");
        assert!(m.defect().is_none());
        let custom: Vec<_> = m.fields_named("x-custom").map(|f| m.value(f)).collect();
        assert_eq!(custom, vec![&b"Weird   Spacing"[..]]);
    }

    #[test]
    fn untouched_message_round_trips() {
        let m = parse(INVITE);
        assert_eq!(&Rewrite::new(&m).finish()[..], INVITE);
    }

    #[test]
    fn drop_first_values_keeps_the_rest() {
        let m = parse(INVITE);
        let route = m
            .fields_all()
            .iter()
            .position(|f| f.name == HeaderName::Route)
            .unwrap();
        let via = m
            .fields_all()
            .iter()
            .position(|f| f.name == HeaderName::Via)
            .unwrap();
        let mut rw = Rewrite::new(&m);
        rw.drop_first_values(route, 1);
        rw.drop_first_values(via, 2);
        let out = rw.finish();
        let s = std::str::from_utf8(&out).unwrap();
        assert!(s.contains("\r\nRoute: <sip:p2.example.com;lr>\r\n"), "{s}");
        assert!(!s.contains("Via:"), "{s}");

        let mut rw = Rewrite::new(&m);
        rw.drop_last_values(route, 1);
        rw.replace_first_value(
            via,
            b"SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bKa;received=192.0.2.9",
        );
        let out = rw.finish();
        let s = std::str::from_utf8(&out).unwrap();
        assert!(s.contains("\r\nRoute: <sip:p1.example.com;lr>\r\n"), "{s}");
        assert!(s.contains("\r\nVia: SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bKa;received=192.0.2.9, SIP/2.0/UDP 10.0.0.2;branch=z9hG4bKb\r\n"), "{s}");
    }

    #[test]
    fn datagram_content_length() {
        let m = parse(b"OPTIONS sip:a@b SIP/2.0\r\nl: 2\r\n\r\nabJUNK");
        assert_eq!(m.body(), b"ab");
        let m = parse(b"OPTIONS sip:a@b SIP/2.0\r\nContent-Length: 9999\r\n\r\nab");
        assert_eq!(m.defect().unwrap().status, 400);
        let m = parse(b"OPTIONS sip:a@b SIP/2.0\r\nContent-Length: -1\r\n\r\nab");
        assert_eq!(m.defect().unwrap().reason, "Bad Content-Length");
        let m = parse(b"OPTIONS sip:a@b SIP/2.0\r\nl: 1\r\nContent-Length: 2\r\n\r\nab");
        assert_eq!(
            m.defect().unwrap().reason,
            "Conflicting Content-Length headers"
        );
        let m = parse(b"OPTIONS sip:a@b SIP/2.0\r\nVia: x\r\n\r\nrest of datagram");
        assert_eq!(m.body(), b"rest of datagram");
        assert_eq!(m.content_length(), None);
    }

    #[test]
    fn missing_content_length_is_added_on_rewrite() {
        let m = parse(b"OPTIONS sip:a@b SIP/2.0\r\nVia: x\r\n\r\nabc");
        let out = Rewrite::new(&m).finish();
        assert_eq!(
            &out[..],
            b"OPTIONS sip:a@b SIP/2.0\r\nVia: x\r\nContent-Length: 3\r\n\r\nabc"
        );
    }

    #[test]
    fn folded_values_unfold_for_typed_access_only() {
        let raw = b"OPTIONS sip:a@b SIP/2.0\r\nCSeq: 0009\r\n  OPTIONS\r\nX: a\r\n b\r\n\r\n";
        let m = parse(raw);
        assert_eq!(m.cseq().unwrap().unwrap().seq, 9);
        assert_eq!(
            &Rewrite::new(&m).finish()[..raw.len() - 2],
            &raw[..raw.len() - 2]
        );
    }

    #[test]
    fn start_line_defects() {
        let m = parse(b"OPTIONS sip:a@b SIP/7.0\r\n\r\n");
        assert_eq!(m.defect().unwrap().status, 505);
        let m = parse(b"OPTIONS  sip:a@b SIP/2.0\r\n\r\n");
        assert_eq!(m.defect().unwrap().status, 400);
        let m = parse(b"OPTIONS sip:a@b SIP/2.0  \r\n\r\n");
        assert_eq!(m.defect().unwrap().status, 400);
        assert!(Message::parse(
            Bytes::from_static(b"INVITE sip:a@b\r\n\r\n"),
            Framing::Datagram
        )
        .is_err());
        let r = parse(b"SIP/2.0 100 \r\nVia: x\r\n\r\n");
        assert_eq!(r.status(), Some(100));
        assert_eq!(r.reason(), b"");
        assert!(Message::parse(
            Bytes::from_static(b"SIP/2.0 4294967301 Big\r\n\r\n"),
            Framing::Datagram
        )
        .is_err());
    }

    #[test]
    fn unterminated_and_bare_lf() {
        assert_eq!(
            Message::parse(
                Bytes::from_static(b"OPTIONS sip:a@b SIP/2.0\r\nl: 0\r\n"),
                Framing::Datagram
            )
            .err(),
            Some(ParseError::Unterminated)
        );
        assert!(Message::parse(
            Bytes::from_static(b"OPTIONS sip:a@b SIP/2.0\nl: 0\n\n"),
            Framing::Datagram
        )
        .is_err());
    }
}
