//! Character classes and a small byte scanner for the RFC 3261 §25 grammar.
//!
//! Everything here works on bytes: SIP header values may carry UTF-8 and, inside
//! quoted strings, even NUL (RFC 4475 §3.1.1.2), so nothing assumes `str`.

/// Character classes as 256-entry tables: one load per byte on the hot path.
const fn class_table(extra: &[u8], alnum: bool) -> [bool; 256] {
    let mut t = [false; 256];
    let mut i = 0;
    while i < 256 {
        let b = i as u8;
        t[i] = alnum && b.is_ascii_alphanumeric();
        i += 1;
    }
    let mut j = 0;
    while j < extra.len() {
        t[extra[j] as usize] = true;
        j += 1;
    }
    t
}

static TOKEN: [bool; 256] = class_table(b"-.!%*_+`'~", true);
static UNRESERVED: [bool; 256] = class_table(b"-_.!~*'()", true);
/// unreserved / escaped / user-unreserved (RFC 3261 §25.1 `user`).
pub(crate) static USER: [bool; 256] = class_table(b"-_.!~*'()%&=+$,;?/", true);
/// unreserved / escaped / param-unreserved (`paramchar`, plus `=` and `;` handled by the caller).
pub(crate) static PARAM: [bool; 256] = class_table(b"-_.!~*'()%[]/:&+$", true);
/// Host name characters (domain labels, IPv4 dots).
pub(crate) static HOST: [bool; 256] = class_table(b"-.", true);

/// RFC 3261 `token` characters.
#[inline]
pub(crate) fn is_token(b: u8) -> bool {
    TOKEN[b as usize]
}

/// `unreserved` (alphanum / mark).
#[inline]
pub(crate) fn is_unreserved(b: u8) -> bool {
    UNRESERVED[b as usize]
}

/// Linear white space inside one (already unfolded) header value.
pub(crate) fn is_ws(b: u8) -> bool {
    b == b' ' || b == b'\t'
}

/// Strips linear white space (and stray CR/LF of folds) from both ends.
pub(crate) fn trim(s: &[u8]) -> &[u8] {
    let mut s = trim_start(s);
    while let [rest @ .., last] = s {
        if is_ws(*last) || *last == b'\r' || *last == b'\n' {
            s = rest;
        } else {
            break;
        }
    }
    s
}

/// Index of the first `needle` that is outside a quoted string and outside `<...>`.
pub(crate) fn find_top_level(s: &[u8], needle: u8) -> Option<usize> {
    let mut i = 0;
    while i < s.len() {
        // Jump to the next byte that matters.
        i += memchr::memchr3(needle, b'"', b'<', &s[i..])?;
        match s[i] {
            b'"' => {
                // Skip the quoted string, honouring backslash escapes.
                i += 1;
                loop {
                    let k = memchr::memchr2(b'"', b'\\', &s[i..])?;
                    i += k;
                    if s[i] == b'\\' {
                        i += 2;
                    } else {
                        i += 1;
                        break;
                    }
                    if i >= s.len() {
                        return None;
                    }
                }
            }
            b'<' if needle != b'<' => {
                i += memchr::memchr(b'>', &s[i..])? + 1;
            }
            _ => return Some(i),
        }
    }
    None
}

/// Splits a header value on top-level commas (RFC 3261 §7.3.1), yielding trimmed,
/// possibly empty, pieces with their offsets in `s`.
pub(crate) fn split_list(s: &[u8]) -> ListIter<'_> {
    ListIter {
        s,
        pos: 0,
        done: false,
    }
}

#[derive(Debug)]
pub(crate) struct ListIter<'a> {
    s: &'a [u8],
    pos: usize,
    done: bool,
}

impl<'a> Iterator for ListIter<'a> {
    /// (offset of the trimmed piece in the value, the trimmed piece)
    type Item = (usize, &'a [u8]);

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let rest = &self.s[self.pos..];
        let (piece, next) = match find_top_level(rest, b',') {
            Some(i) => (&rest[..i], self.pos + i + 1),
            None => {
                self.done = true;
                (rest, self.s.len())
            }
        };
        let lead = piece.len() - trim_start(piece).len();
        let start = self.pos + lead;
        self.pos = next;
        Some((start, trim(piece)))
    }
}

pub(crate) fn trim_start(mut s: &[u8]) -> &[u8] {
    while let [first, rest @ ..] = s {
        if is_ws(*first) || *first == b'\r' || *first == b'\n' {
            s = rest;
        } else {
            break;
        }
    }
    s
}

/// Parses an unsigned decimal with leading zeros allowed (`0068` is 68). `None` on
/// an empty string, a non-digit, or a value above `max`.
pub(crate) fn parse_decimal(s: &[u8], max: u64) -> Option<u64> {
    if s.is_empty() || s.len() > 20 {
        return None;
    }
    let mut v: u64 = 0;
    for &b in s {
        if !b.is_ascii_digit() {
            return None;
        }
        v = v.checked_mul(10)?.checked_add(u64::from(b - b'0'))?;
    }
    (v <= max).then_some(v)
}

pub(crate) fn eq_ignore_case(a: &[u8], b: &[u8]) -> bool {
    a.eq_ignore_ascii_case(b)
}

/// Decodes `%HH` escapes once. Invalid escapes are kept as they are.
pub fn unescape(s: &[u8]) -> std::borrow::Cow<'_, [u8]> {
    if !s.contains(&b'%') {
        return std::borrow::Cow::Borrowed(s);
    }
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        if s[i] == b'%' && i + 2 < s.len() {
            if let (Some(h), Some(l)) = (hex(s[i + 1]), hex(s[i + 2])) {
                out.push(h << 4 | l);
                i += 3;
                continue;
            }
        }
        out.push(s[i]);
        i += 1;
    }
    std::borrow::Cow::Owned(out)
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Checks that every `%` in `s` starts a valid `%HH` escape.
pub(crate) fn escapes_valid(s: &[u8]) -> bool {
    let mut i = 0;
    while i < s.len() {
        if s[i] == b'%' {
            if i + 2 >= s.len() {
                return false;
            }
            if hex(s[i + 1]).is_none() || hex(s[i + 2]).is_none() {
                return false;
            }
            i += 3;
        } else {
            i += 1;
        }
    }
    true
}

/// A cursor over a header value that knows the §25.1 separators (`SWS`).
#[derive(Debug, Clone)]
pub(crate) struct Scanner<'a> {
    pub s: &'a [u8],
    pub pos: usize,
}

impl<'a> Scanner<'a> {
    pub fn new(s: &'a [u8]) -> Self {
        Scanner { s, pos: 0 }
    }

    pub fn rest(&self) -> &'a [u8] {
        &self.s[self.pos..]
    }

    pub fn at_end(&self) -> bool {
        self.pos >= self.s.len()
    }

    pub fn peek(&self) -> Option<u8> {
        self.s.get(self.pos).copied()
    }

    pub fn skip_ws(&mut self) {
        while let Some(b) = self.peek() {
            if is_ws(b) || b == b'\r' || b == b'\n' {
                self.pos += 1;
            } else {
                break;
            }
        }
    }

    /// Consumes `b` (after optional white space) if it is next.
    pub fn eat(&mut self, b: u8) -> bool {
        let save = self.pos;
        self.skip_ws();
        if self.peek() == Some(b) {
            self.pos += 1;
            true
        } else {
            self.pos = save;
            false
        }
    }

    pub fn take_while(&mut self, f: impl Fn(u8) -> bool) -> &'a [u8] {
        let start = self.pos;
        while let Some(b) = self.peek() {
            if f(b) {
                self.pos += 1;
            } else {
                break;
            }
        }
        &self.s[start..self.pos]
    }

    pub fn token(&mut self) -> Option<&'a [u8]> {
        let t = self.take_while(is_token);
        (!t.is_empty()).then_some(t)
    }

    /// A quoted string, returned with its quotes. `None` if it is not terminated.
    pub fn quoted(&mut self) -> Option<&'a [u8]> {
        let start = self.pos;
        if self.peek() != Some(b'"') {
            return None;
        }
        let mut i = self.pos + 1;
        while i < self.s.len() {
            match self.s[i] {
                b'\\' => i += 2,
                b'"' => {
                    self.pos = i + 1;
                    return Some(&self.s[start..self.pos]);
                }
                _ => i += 1,
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unescape_decodes_once() {
        assert_eq!(&*unescape(b"v%61lue%25%34%31"), b"value%41");
        assert_eq!(&*unescape(b"null-%00-null"), b"null-\0-null");
        assert_eq!(&*unescape(b"bad%zzescape%"), b"bad%zzescape%");
    }

    #[test]
    fn list_split_respects_quotes_and_brackets() {
        let v = br#""a, b" <sip:x@y;p=1,2>, <sip:z>"#;
        let parts: Vec<_> = split_list(v).map(|(_, p)| p).collect();
        assert_eq!(parts, vec![&br#""a, b" <sip:x@y;p=1,2>"#[..], b"<sip:z>"]);
    }

    #[test]
    fn decimals() {
        assert_eq!(parse_decimal(b"0068", 255), Some(68));
        assert_eq!(parse_decimal(b"4294967296", u64::from(u32::MAX)), None);
        assert_eq!(parse_decimal(b"-1", 10), None);
        assert_eq!(parse_decimal(b"", 10), None);
    }

    #[test]
    fn escape_validation() {
        assert!(escapes_valid(b"a%20b"));
        assert!(!escapes_valid(b"a%2"));
        assert!(!escapes_valid(b"a%zz"));
        assert!(!escapes_valid(b"%"));
    }
}
