//! HTTP Digest authentication for SIP (RFC 3261 §22, updated by RFC 7616 and
//! RFC 8760): challenges and credentials parsed and written, responses
//! computed, and the server side's nonces and brute-force bans.
//!
//! Sans-IO like the rest of the crate: the caller passes the time and the
//! random parts. Only `qop=auth` is answered or asked for (`auth-int` would
//! need the body hashed and no carrier asks for it); MD5 and SHA-256 are the
//! algorithms (RFC 8760 §2.1 lists SHA-512-256 too, which no SIP peer here
//! offers). A challenge without `qop` is answered the RFC 2069 way, as old
//! carriers still send it; this server never issues one.
//!
//! ```text
//!   UAC                       server
//!    |  INVITE                  |
//!    |------------------------->|
//!    |  407 Proxy-Authenticate: Digest realm, nonce, qop="auth", algorithm
//!    |<-------------------------|
//!    |  INVITE (CSeq + 1) Proxy-Authorization: Digest username, realm, nonce,
//!    |         uri, response = H(H(A1):nonce:nc:cnonce:auth:H(A2)), nc, cnonce
//!    |------------------------->|
//! ```

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::time::{Duration, Instant};

use hmac::{Hmac, Mac};
use md5::Md5;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::text::is_token;

/// The hash a challenge names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Algorithm {
    Md5,
    Sha256,
}

impl Algorithm {
    /// `MD5` or `SHA-256`, any case (RFC 7616 §3.3); `None` for anything else.
    pub fn parse(s: &str) -> Option<Algorithm> {
        if s.eq_ignore_ascii_case("MD5") {
            Some(Algorithm::Md5)
        } else if s.eq_ignore_ascii_case("SHA-256") {
            Some(Algorithm::Sha256)
        } else {
            None
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Algorithm::Md5 => "MD5",
            Algorithm::Sha256 => "SHA-256",
        }
    }

    /// Lower-case hex of the hash of the parts joined by `:`.
    fn hash(self, parts: &[&[u8]]) -> String {
        fn feed<D: Digest>(mut d: D, parts: &[&[u8]]) -> String {
            for (i, p) in parts.iter().enumerate() {
                if i > 0 {
                    d.update(b":");
                }
                d.update(p);
            }
            hex(&d.finalize())
        }
        match self {
            Algorithm::Md5 => feed(Md5::new(), parts),
            Algorithm::Sha256 => feed(Sha256::new(), parts),
        }
    }
}

/// Why a challenge or credentials could not be used. The peer is to blame.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DigestError {
    #[error("not a Digest header")]
    NotDigest,
    #[error("malformed parameters: {0}")]
    Malformed(&'static str),
    #[error("the {0} parameter is given twice")]
    Duplicate(String),
    #[error("the {0} parameter is missing")]
    Missing(&'static str),
    #[error("unsupported algorithm {0:?}")]
    UnsupportedAlgorithm(String),
    #[error("unsupported qop {0:?} (only auth)")]
    UnsupportedQop(String),
    #[error("nc {0:?} is not eight hex digits")]
    BadNonceCount(String),
}

/// A `WWW-Authenticate` / `Proxy-Authenticate` value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Challenge {
    pub realm: String,
    pub nonce: String,
    pub opaque: Option<String>,
    pub algorithm: Algorithm,
    /// `qop` offered `auth`; false for an RFC 2069 challenge without `qop`.
    pub qop_auth: bool,
    /// The previous nonce was good but too old: answer again, no need to ask
    /// the user for a password.
    pub stale: bool,
}

impl Challenge {
    pub fn parse(value: &[u8]) -> Result<Challenge, DigestError> {
        let params = Params::parse(value)?;
        let algorithm = params.algorithm()?;
        let qop_auth = match params.get("qop") {
            None => false,
            Some(list) => {
                if !list
                    .split(',')
                    .any(|q| q.trim().eq_ignore_ascii_case("auth"))
                {
                    return Err(DigestError::UnsupportedQop(list.to_string()));
                }
                true
            }
        };
        Ok(Challenge {
            realm: params.required("realm")?.to_string(),
            nonce: params.required("nonce")?.to_string(),
            opaque: params.get("opaque").map(str::to_string),
            algorithm,
            qop_auth,
            stale: params
                .get("stale")
                .is_some_and(|s| s.eq_ignore_ascii_case("true")),
        })
    }

    /// The header value, `Digest realm="…", nonce="…", …`.
    pub fn to_value(&self) -> String {
        let mut out = String::with_capacity(160);
        out.push_str("Digest realm=");
        quote_into(&mut out, &self.realm);
        out.push_str(", nonce=");
        quote_into(&mut out, &self.nonce);
        if let Some(o) = &self.opaque {
            out.push_str(", opaque=");
            quote_into(&mut out, o);
        }
        out.push_str(", algorithm=");
        out.push_str(self.algorithm.as_str());
        if self.qop_auth {
            out.push_str(", qop=\"auth\"");
        }
        if self.stale {
            out.push_str(", stale=true");
        }
        out
    }

    /// Credentials answering this challenge for `method` and `uri`. `cnonce`
    /// should be fresh random text; `nc` counts the requests made with this
    /// nonce, from 1.
    pub fn answer(
        &self,
        username: &str,
        password: &str,
        method: &[u8],
        uri: &str,
        cnonce: &str,
        nc: u32,
    ) -> Credentials {
        let ha1 = ha1(self.algorithm, username, &self.realm, password);
        let qop = self.qop_auth.then_some((nc, cnonce));
        Credentials {
            username: username.to_string(),
            realm: self.realm.clone(),
            nonce: self.nonce.clone(),
            uri: uri.to_string(),
            response: response(self.algorithm, &ha1, &self.nonce, qop, method, uri),
            algorithm: self.algorithm,
            cnonce: qop.map(|_| cnonce.to_string()),
            nc: qop.map(|_| nc),
            opaque: self.opaque.clone(),
        }
    }
}

/// An `Authorization` / `Proxy-Authorization` value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    pub realm: String,
    pub nonce: String,
    pub uri: String,
    pub response: String,
    pub algorithm: Algorithm,
    /// Present with `qop=auth`, as is `nc`.
    pub cnonce: Option<String>,
    pub nc: Option<u32>,
    pub opaque: Option<String>,
}

impl Credentials {
    pub fn parse(value: &[u8]) -> Result<Credentials, DigestError> {
        let params = Params::parse(value)?;
        let algorithm = params.algorithm()?;
        if params
            .get("userhash")
            .is_some_and(|u| u.eq_ignore_ascii_case("true"))
        {
            return Err(DigestError::Malformed("userhash is not supported"));
        }
        let (cnonce, nc) = match params.get("qop") {
            None => (None, None),
            Some(q) if q.eq_ignore_ascii_case("auth") => {
                let nc = params.required("nc")?;
                let count = (nc.len() == 8)
                    .then(|| u32::from_str_radix(nc, 16).ok())
                    .flatten()
                    .ok_or_else(|| DigestError::BadNonceCount(nc.to_string()))?;
                (Some(params.required("cnonce")?.to_string()), Some(count))
            }
            Some(q) => return Err(DigestError::UnsupportedQop(q.to_string())),
        };
        Ok(Credentials {
            username: params.required("username")?.to_string(),
            realm: params.required("realm")?.to_string(),
            nonce: params.required("nonce")?.to_string(),
            uri: params.required("uri")?.to_string(),
            response: params.required("response")?.to_string(),
            algorithm,
            cnonce,
            nc,
            opaque: params.get("opaque").map(str::to_string),
        })
    }

    /// The header value, `Digest username="…", …`.
    pub fn to_value(&self) -> String {
        let mut out = String::with_capacity(256);
        out.push_str("Digest username=");
        quote_into(&mut out, &self.username);
        for (name, value) in [
            ("realm", &self.realm),
            ("nonce", &self.nonce),
            ("uri", &self.uri),
            ("response", &self.response),
        ] {
            out.push_str(", ");
            out.push_str(name);
            out.push('=');
            quote_into(&mut out, value);
        }
        out.push_str(", algorithm=");
        out.push_str(self.algorithm.as_str());
        if let (Some(cnonce), Some(nc)) = (&self.cnonce, self.nc) {
            out.push_str(", cnonce=");
            quote_into(&mut out, cnonce);
            out.push_str(&format!(", qop=auth, nc={nc:08x}"));
        }
        if let Some(o) = &self.opaque {
            out.push_str(", opaque=");
            quote_into(&mut out, o);
        }
        out
    }
}

/// H(A1) = H(username:realm:password), the form credentials are stored in.
pub fn ha1(algorithm: Algorithm, username: &str, realm: &str, password: &str) -> String {
    algorithm.hash(&[username.as_bytes(), realm.as_bytes(), password.as_bytes()])
}

/// The `response` parameter from H(A1): with `qop=auth` (`Some((nc, cnonce))`)
/// per RFC 7616 §3.4.1, else the RFC 2069 form.
pub fn response(
    algorithm: Algorithm,
    ha1: &str,
    nonce: &str,
    qop: Option<(u32, &str)>,
    method: &[u8],
    uri: &str,
) -> String {
    let ha2 = algorithm.hash(&[method, uri.as_bytes()]);
    match qop {
        Some((nc, cnonce)) => {
            let nc = format!("{nc:08x}");
            algorithm.hash(&[
                ha1.as_bytes(),
                nonce.as_bytes(),
                nc.as_bytes(),
                cnonce.as_bytes(),
                b"auth",
                ha2.as_bytes(),
            ])
        }
        None => algorithm.hash(&[ha1.as_bytes(), nonce.as_bytes(), ha2.as_bytes()]),
    }
}

/// Why the server refused credentials.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The nonce is ours and the answer may be right, but the nonce is too old:
    /// challenge again with `stale=true`.
    #[error("the nonce has expired")]
    Stale,
    #[error("the nonce was not issued here")]
    ForeignNonce,
    #[error("the realm {0:?} is not this server's")]
    WrongRealm(String),
    #[error("the algorithm does not match the nonce")]
    WrongAlgorithm,
    #[error("qop=auth is required")]
    NoQop,
    /// A nonce count that is not above the last one seen for the nonce.
    #[error("nc {0} was used before with this nonce")]
    Replay(u32),
    /// Unknown user or wrong password: the two look the same to the peer, so
    /// that nobody can learn which users exist.
    #[error("wrong credentials")]
    Wrong,
}

/// The server side: issues nonces bound to this server (an HMAC under its
/// secret, with the time of issue and the algorithm), and checks answers,
/// refusing old nonces and reused nonce counts.
#[derive(Debug)]
pub struct Server {
    realm: String,
    secret: [u8; 32],
    start: Instant,
    lifetime: Duration,
    /// Per nonce in use: when it was issued (seconds since `start`) and the
    /// highest nonce count accepted.
    seen: HashMap<String, (u64, u32)>,
    /// Tracked nonces in the order they were first used, to forget the
    /// oldest in O(1) when full.
    order: VecDeque<String>,
    /// Nonces issued at or before this time (seconds since `start`) that are
    /// no longer tracked are stale: a forgotten nonce count cannot be replayed.
    floor: Option<u64>,
    max_tracked: usize,
}

/// Nonce: 8 hex digits of issue time (seconds), 16 of salt, 32 of MAC.
const NONCE_LEN: usize = 8 + 16 + 32;

impl Server {
    /// `secret` must be random and stay in the process; `lifetime` is how long
    /// a nonce may be used (a minute or five is usual).
    pub fn new(realm: &str, secret: [u8; 32], now: Instant, lifetime: Duration) -> Server {
        Server {
            realm: realm.to_string(),
            secret,
            start: now,
            lifetime,
            seen: HashMap::new(),
            order: VecDeque::new(),
            floor: None,
            max_tracked: 100_000,
        }
    }

    /// A challenge with a fresh nonce. `salt` should be random.
    pub fn challenge(
        &self,
        now: Instant,
        salt: u64,
        algorithm: Algorithm,
        stale: bool,
    ) -> Challenge {
        let issued = now.saturating_duration_since(self.start).as_secs();
        let issued = u32::try_from(issued).unwrap_or(u32::MAX);
        let mut nonce = format!("{issued:08x}{salt:016x}");
        nonce.push_str(&hex(&self.mac(&nonce, algorithm)[..16]));
        Challenge {
            realm: self.realm.clone(),
            nonce,
            opaque: None,
            algorithm,
            qop_auth: true,
            stale,
        }
    }

    fn mac(&self, nonce_head: &str, algorithm: Algorithm) -> [u8; 32] {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.secret)
            .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
        mac.update(self.realm.as_bytes());
        mac.update(b"\0");
        mac.update(algorithm.as_str().as_bytes());
        mac.update(b"\0");
        mac.update(nonce_head.as_bytes());
        mac.finalize().into_bytes().into()
    }

    /// Checks `creds` for a request with `method`. `stored_ha1` is the user's
    /// H(A1) for the credentials' algorithm, `None` for an unknown user (the
    /// work done is the same, so timing tells nothing either). On success the
    /// nonce count is remembered.
    pub fn verify(
        &mut self,
        now: Instant,
        creds: &Credentials,
        method: &[u8],
        stored_ha1: Option<&str>,
    ) -> Result<(), Refusal> {
        if creds.realm != self.realm {
            return Err(Refusal::WrongRealm(creds.realm.clone()));
        }
        let n = creds.nonce.as_str();
        let issued = match (n.len() == NONCE_LEN && n.is_ascii(), n.get(..8)) {
            (true, Some(head)) => {
                u64::from_str_radix(head, 16).map_err(|_| Refusal::ForeignNonce)?
            }
            _ => return Err(Refusal::ForeignNonce),
        };
        let mac = self.mac(&n[..24], creds.algorithm);
        let ours = hex(&mac[..16]);
        if !bool::from(ours.as_bytes().ct_eq(&n.as_bytes()[24..])) {
            // Either forged, or a nonce of ours answered with another algorithm.
            let other = match creds.algorithm {
                Algorithm::Md5 => Algorithm::Sha256,
                Algorithm::Sha256 => Algorithm::Md5,
            };
            let theirs = hex(&self.mac(&n[..24], other)[..16]);
            return Err(
                if bool::from(theirs.as_bytes().ct_eq(&n.as_bytes()[24..])) {
                    Refusal::WrongAlgorithm
                } else {
                    Refusal::ForeignNonce
                },
            );
        }
        let (Some(nc), Some(cnonce)) = (creds.nc, creds.cnonce.as_deref()) else {
            return Err(Refusal::NoQop);
        };
        // A fixed stand-in for unknown users, computed on both paths so that
        // known and unknown users cost the same work.
        let absent = ha1(creds.algorithm, "", &self.realm, "");
        let expected = response(
            creds.algorithm,
            stored_ha1.unwrap_or(&absent),
            n,
            Some((nc, cnonce)),
            method,
            &creds.uri,
        );
        let matches = bool::from(expected.as_bytes().ct_eq(creds.response.as_bytes()));
        if !matches || stored_ha1.is_none() {
            return Err(Refusal::Wrong);
        }
        let age = now.saturating_duration_since(self.start).as_secs();
        if age.saturating_sub(issued) > self.lifetime.as_secs() {
            return Err(Refusal::Stale);
        }
        match self.seen.get_mut(n) {
            Some((_, last)) if nc <= *last => return Err(Refusal::Replay(nc)),
            Some((_, last)) => *last = nc,
            None if self.floor.is_some_and(|f| issued <= f) => return Err(Refusal::Stale),
            None => self.remember(now, n, issued, nc),
        }
        Ok(())
    }

    fn remember(&mut self, now: Instant, nonce: &str, issued: u64, nc: u32) {
        let age = now.saturating_duration_since(self.start).as_secs();
        let life = self.lifetime.as_secs();
        // Forget expired nonces from the front (they are refused as stale
        // anyway), then the oldest live ones while full: those become stale.
        while let Some(front) = self.order.front() {
            let Some(&(front_issued, _)) = self.seen.get(front) else {
                self.order.pop_front();
                continue;
            };
            let expired = age.saturating_sub(front_issued) > life;
            if !expired && self.seen.len() < self.max_tracked {
                break;
            }
            if !expired {
                self.floor = Some(self.floor.map_or(front_issued, |f| f.max(front_issued)));
            }
            if let Some(old) = self.order.pop_front() {
                self.seen.remove(&old);
            }
        }
        self.seen.insert(nonce.to_string(), (issued, nc));
        self.order.push_back(nonce.to_string());
    }

    /// Nonces whose counts are being tracked.
    pub fn tracked(&self) -> usize {
        self.seen.len()
    }
}

/// Brute-force defence: a source that fails `threshold` times within
/// `window` is refused for `ban`, without its credentials being looked at.
#[derive(Debug)]
pub struct Bans {
    threshold: u32,
    window: Duration,
    ban: Duration,
    sources: HashMap<IpAddr, Record>,
    max_tracked: usize,
}

#[derive(Debug, Clone, Copy)]
struct Record {
    since: Instant,
    failures: u32,
    banned_until: Option<Instant>,
}

impl Bans {
    pub fn new(threshold: u32, window: Duration, ban: Duration) -> Bans {
        Bans {
            threshold: threshold.max(1),
            window,
            ban,
            sources: HashMap::new(),
            max_tracked: 100_000,
        }
    }

    /// Whether `ip` is banned now.
    pub fn is_banned(&self, ip: IpAddr, now: Instant) -> bool {
        self.sources
            .get(&ip)
            .and_then(|r| r.banned_until)
            .is_some_and(|until| now < until)
    }

    /// Counts a failure; true when it bans the source.
    pub fn failed(&mut self, ip: IpAddr, now: Instant) -> bool {
        if self.sources.len() >= self.max_tracked && !self.sources.contains_key(&ip) {
            self.forget_old(now);
            if self.sources.len() >= self.max_tracked {
                // Too many sources failing at once to keep track of each.
                return false;
            }
        }
        let r = self.sources.entry(ip).or_insert(Record {
            since: now,
            failures: 0,
            banned_until: None,
        });
        if now.saturating_duration_since(r.since) > self.window {
            *r = Record {
                since: now,
                failures: 0,
                banned_until: r.banned_until.filter(|u| now < *u),
            };
        }
        r.failures += 1;
        if r.failures >= self.threshold {
            r.banned_until = Some(now + self.ban);
            r.failures = 0;
            r.since = now;
            return true;
        }
        false
    }

    /// A success clears the source's failures (not a ban in force).
    pub fn succeeded(&mut self, ip: IpAddr) {
        if let Some(r) = self.sources.get_mut(&ip) {
            r.failures = 0;
        }
    }

    fn forget_old(&mut self, now: Instant) {
        let window = self.window;
        self.sources.retain(|_, r| {
            r.banned_until.is_some_and(|u| now < u)
                || now.saturating_duration_since(r.since) <= window
        });
    }
}

/// Auth parameters after the `Digest` scheme, names lower-cased, values unquoted.
struct Params(Vec<(String, String)>);

impl Params {
    fn parse(value: &[u8]) -> Result<Params, DigestError> {
        let s = value.trim_ascii();
        let scheme_end = s.iter().position(|&b| is_ws(b)).unwrap_or(s.len());
        if !s[..scheme_end].eq_ignore_ascii_case(b"Digest") {
            return Err(DigestError::NotDigest);
        }
        let mut out: Vec<(String, String)> = Vec::new();
        let mut i = scheme_end;
        let skip_ws = |i: &mut usize| {
            while *i < s.len() && is_ws(s[*i]) {
                *i += 1;
            }
        };
        loop {
            // Empty list elements are allowed (RFC 7230 §7).
            while i < s.len() && (is_ws(s[i]) || s[i] == b',') {
                i += 1;
            }
            if i == s.len() {
                break;
            }
            let start = i;
            while i < s.len() && is_token(s[i]) {
                i += 1;
            }
            if i == start {
                return Err(DigestError::Malformed("a parameter name is not a token"));
            }
            let name = String::from_utf8_lossy(&s[start..i]).to_ascii_lowercase();
            skip_ws(&mut i);
            if s.get(i) != Some(&b'=') {
                return Err(DigestError::Malformed("a parameter has no '='"));
            }
            i += 1;
            skip_ws(&mut i);
            let value = if s.get(i) == Some(&b'"') {
                i += 1;
                let mut v = Vec::new();
                loop {
                    match s.get(i) {
                        None => {
                            return Err(DigestError::Malformed("an unterminated quoted string"))
                        }
                        Some(b'"') => {
                            i += 1;
                            break;
                        }
                        Some(b'\\') => {
                            let Some(&c) = s.get(i + 1) else {
                                return Err(DigestError::Malformed("a quoted string ends in '\\'"));
                            };
                            v.push(c);
                            i += 2;
                        }
                        Some(&c) => {
                            v.push(c);
                            i += 1;
                        }
                    }
                }
                v
            } else {
                let start = i;
                while i < s.len() && !is_ws(s[i]) && s[i] != b',' {
                    i += 1;
                }
                if i == start {
                    return Err(DigestError::Malformed("a parameter has no value"));
                }
                s[start..i].to_vec()
            };
            skip_ws(&mut i);
            if i < s.len() && s[i] != b',' {
                return Err(DigestError::Malformed("parameters are not comma-separated"));
            }
            if out.iter().any(|(n, _)| *n == name) {
                return Err(DigestError::Duplicate(name));
            }
            let value = String::from_utf8(value)
                .map_err(|_| DigestError::Malformed("a value is not UTF-8"))?;
            out.push((name, value));
        }
        Ok(Params(out))
    }

    fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    fn required(&self, name: &'static str) -> Result<&str, DigestError> {
        self.get(name).ok_or(DigestError::Missing(name))
    }

    fn algorithm(&self) -> Result<Algorithm, DigestError> {
        match self.get("algorithm") {
            None => Ok(Algorithm::Md5),
            Some(a) => {
                Algorithm::parse(a).ok_or_else(|| DigestError::UnsupportedAlgorithm(a.to_string()))
            }
        }
    }
}

/// White space inside a parameter list (a fold's line break counts).
fn is_ws(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\r' | b'\n')
}

fn quote_into(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        // Line breaks cannot be quoted: a header value stays on one line.
        if c != '\r' && c != '\n' {
            out.push(c);
        }
    }
    out.push('"');
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[(b >> 4) as usize] as char);
        s.push(DIGITS[(b & 15) as usize] as char);
    }
    s
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn rfc_2617_and_rfc_7616_examples() {
        // RFC 2617 §3.5.
        let h = ha1(
            Algorithm::Md5,
            "Mufasa",
            "testrealm@host.com",
            "Circle Of Life",
        );
        let r = response(
            Algorithm::Md5,
            &h,
            "dcd98b7102dd2f0e8b11d0f600bfb0c093",
            Some((1, "0a4f113b")),
            b"GET",
            "/dir/index.html",
        );
        assert_eq!(r, "6629fae49393a05397450978507c4ef1");
        // RFC 7616 §3.9.1, both algorithms.
        let nonce = "7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v";
        let cnonce = "f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ";
        for (alg, want) in [
            (Algorithm::Md5, "8ca523f5e9506fed4657c9700eebdbec"),
            (
                Algorithm::Sha256,
                "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1",
            ),
        ] {
            let h = ha1(alg, "Mufasa", "http-auth@example.org", "Circle of Life");
            let r = response(alg, &h, nonce, Some((1, cnonce)), b"GET", "/dir/index.html");
            assert_eq!(r, want, "{alg:?}");
        }
    }

    #[test]
    fn challenges_and_credentials_round_trip() {
        let c = Challenge::parse(
            b"Digest realm=\"sip.twilio.com\",nonce=\"n\\\"1\", opaque=\"o\",\r\n qop=\"auth,auth-int\", algorithm=md5, stale=TRUE",
        )
        .unwrap();
        assert_eq!(c.realm, "sip.twilio.com");
        assert_eq!(c.nonce, "n\"1");
        assert!(c.qop_auth && c.stale);
        assert_eq!(Challenge::parse(c.to_value().as_bytes()).unwrap(), c);
        let a = c.answer("alice", "pw", b"INVITE", "sip:+1@sip.twilio.com", "cn", 1);
        let back = Credentials::parse(a.to_value().as_bytes()).unwrap();
        assert_eq!(back, a);
        assert_eq!(back.nc, Some(1));
        assert!(a.to_value().contains("nc=00000001"));
        // RFC 2069: no qop, no cnonce/nc in the answer.
        let old = Challenge::parse(b"Digest realm=\"r\", nonce=\"n\"").unwrap();
        let a = old.answer("u", "p", b"REGISTER", "sip:r", "cn", 1);
        assert_eq!((a.cnonce, a.nc), (None, None));
    }

    #[test]
    fn bad_headers_get_precise_errors() {
        use DigestError::*;
        let cases: &[(&[u8], DigestError)] = &[
            (b"Basic dXNlcjpwYXNz", NotDigest),
            (
                b"Digest realm=\"r",
                Malformed("an unterminated quoted string"),
            ),
            (
                b"Digest realm=r nonce=n",
                Malformed("parameters are not comma-separated"),
            ),
            (b"Digest =x", Malformed("a parameter name is not a token")),
            (b"Digest realm", Malformed("a parameter has no '='")),
            (b"Digest realm=", Malformed("a parameter has no value")),
            (b"Digest realm=a, REALM=b", Duplicate("realm".into())),
            (b"Digest realm=a", Missing("nonce")),
            (
                b"Digest realm=a, nonce=b, algorithm=SHA-512-256",
                UnsupportedAlgorithm("SHA-512-256".into()),
            ),
            (
                b"Digest realm=a, nonce=b, qop=auth-int",
                UnsupportedQop("auth-int".into()),
            ),
        ];
        for (input, want) in cases {
            assert_eq!(
                Challenge::parse(input).as_ref(),
                Err(want),
                "{}",
                String::from_utf8_lossy(input)
            );
        }
        let creds = |extra: &str| {
            Credentials::parse(
                format!("Digest username=u, realm=r, nonce=n, uri=\"sip:x\", response=f{extra}")
                    .as_bytes(),
            )
        };
        assert_eq!(
            creds(", qop=auth, cnonce=c, nc=1"),
            Err(BadNonceCount("1".into()))
        );
        assert_eq!(creds(", qop=auth, nc=00000001"), Err(Missing("cnonce")));
        assert_eq!(
            creds(", qop=auth-int, nc=00000001, cnonce=c"),
            Err(UnsupportedQop("auth-int".into()))
        );
        assert_eq!(
            creds(", userhash=true"),
            Err(Malformed("userhash is not supported"))
        );
        assert!(creds("").is_ok());
    }

    fn server(now: Instant) -> Server {
        Server::new("weir.example", [7; 32], now, Duration::from_secs(60))
    }

    #[test]
    fn the_server_accepts_a_right_answer_once_per_count() {
        let t0 = Instant::now();
        let mut s = server(t0);
        for alg in [Algorithm::Md5, Algorithm::Sha256] {
            let c = s.challenge(t0, 42, alg, false);
            assert_eq!(c.nonce.len(), NONCE_LEN);
            let h = ha1(alg, "alice", "weir.example", "secret");
            let a = c.answer("alice", "secret", b"INVITE", "sip:bob@w", "cn", 1);
            assert_eq!(s.verify(t0, &a, b"INVITE", Some(&h)), Ok(()));
            assert_eq!(
                s.verify(t0, &a, b"INVITE", Some(&h)),
                Err(Refusal::Replay(1))
            );
            let a2 = c.answer("alice", "secret", b"INVITE", "sip:bob@w", "cn", 2);
            assert_eq!(s.verify(t0, &a2, b"INVITE", Some(&h)), Ok(()));
            // The method is part of the answer.
            let a3 = c.answer("alice", "secret", b"INVITE", "sip:bob@w", "cn", 3);
            assert_eq!(s.verify(t0, &a3, b"BYE", Some(&h)), Err(Refusal::Wrong));
        }
    }

    #[test]
    fn the_server_refuses_what_it_must() {
        let t0 = Instant::now();
        let mut s = server(t0);
        let h = ha1(Algorithm::Md5, "alice", "weir.example", "secret");
        let c = s.challenge(t0, 1, Algorithm::Md5, false);
        let good = c.answer("alice", "secret", b"INVITE", "sip:b@w", "cn", 1);
        // Wrong password and unknown user look the same.
        let wrong = c.answer("alice", "guess", b"INVITE", "sip:b@w", "cn", 1);
        assert_eq!(
            s.verify(t0, &wrong, b"INVITE", Some(&h)),
            Err(Refusal::Wrong)
        );
        assert_eq!(s.verify(t0, &good, b"INVITE", None), Err(Refusal::Wrong));
        // Another server's nonce, or ours edited.
        let other = Server::new("weir.example", [8; 32], t0, Duration::from_secs(60));
        let foreign = other
            .challenge(t0, 1, Algorithm::Md5, false)
            .answer("alice", "secret", b"INVITE", "sip:b@w", "cn", 1);
        assert_eq!(
            s.verify(t0, &foreign, b"INVITE", Some(&h)),
            Err(Refusal::ForeignNonce)
        );
        let mut edited = good.clone();
        edited.nonce.replace_range(..8, "00000009");
        assert_eq!(
            s.verify(t0, &edited, b"INVITE", Some(&h)),
            Err(Refusal::ForeignNonce)
        );
        // A nonce issued for MD5 answered with SHA-256.
        let mut switched = good.clone();
        switched.algorithm = Algorithm::Sha256;
        assert_eq!(
            s.verify(t0, &switched, b"INVITE", Some(&h)),
            Err(Refusal::WrongAlgorithm)
        );
        // Another realm.
        let mut realm = good.clone();
        realm.realm = "evil".into();
        assert_eq!(
            s.verify(t0, &realm, b"INVITE", Some(&h)),
            Err(Refusal::WrongRealm("evil".into()))
        );
        // No qop.
        let mut bare = good.clone();
        (bare.nc, bare.cnonce) = (None, None);
        assert_eq!(
            s.verify(t0, &bare, b"INVITE", Some(&h)),
            Err(Refusal::NoQop)
        );
        // Too old: stale, and only when the answer is otherwise right.
        let later = t0 + Duration::from_secs(61);
        assert_eq!(
            s.verify(later, &good, b"INVITE", Some(&h)),
            Err(Refusal::Stale)
        );
        assert_eq!(
            s.verify(later, &wrong, b"INVITE", Some(&h)),
            Err(Refusal::Wrong)
        );
        assert_eq!(
            s.verify(t0 + Duration::from_secs(60), &good, b"INVITE", Some(&h)),
            Ok(())
        );
    }

    #[test]
    fn tracked_nonces_are_bounded() {
        let t0 = Instant::now();
        let mut s = server(t0);
        s.max_tracked = 4;
        let h = ha1(Algorithm::Md5, "a", "weir.example", "p");
        for i in 0..10u64 {
            let now = t0 + Duration::from_secs(i);
            let c = s.challenge(now, i, Algorithm::Md5, false);
            let a = c.answer("a", "p", b"REGISTER", "sip:w", "c", 1);
            assert_eq!(s.verify(now, &a, b"REGISTER", Some(&h)), Ok(()));
            assert!(s.tracked() <= 4);
        }
        // A forgotten nonce cannot be replayed with its next count: it is stale
        // (the client answers a fresh nonce), and tracked ones still count up.
        let now = t0 + Duration::from_secs(10);
        let old = s.challenge(t0, 0, Algorithm::Md5, false);
        let again = old.answer("a", "p", b"REGISTER", "sip:w", "c", 2);
        assert_eq!(
            s.verify(now, &again, b"REGISTER", Some(&h)),
            Err(Refusal::Stale)
        );
        let recent = s.challenge(t0 + Duration::from_secs(9), 9, Algorithm::Md5, false);
        let next = recent.answer("a", "p", b"REGISTER", "sip:w", "c", 2);
        assert_eq!(s.verify(now, &next, b"REGISTER", Some(&h)), Ok(()));
        assert_eq!(
            s.verify(now, &next, b"REGISTER", Some(&h)),
            Err(Refusal::Replay(2))
        );
    }

    #[test]
    fn bans_follow_failures_in_a_window() {
        let t0 = Instant::now();
        let ip: IpAddr = "192.0.2.9".parse().unwrap();
        let mut b = Bans::new(3, Duration::from_secs(60), Duration::from_secs(300));
        assert!(!b.failed(ip, t0));
        assert!(!b.failed(ip, t0));
        // Failures outside the window start a new count.
        assert!(!b.failed(ip, t0 + Duration::from_secs(61)));
        assert!(!b.failed(ip, t0 + Duration::from_secs(62)));
        assert!(b.failed(ip, t0 + Duration::from_secs(63)));
        assert!(b.is_banned(ip, t0 + Duration::from_secs(64)));
        assert!(!b.is_banned("192.0.2.10".parse().unwrap(), t0));
        assert!(!b.is_banned(ip, t0 + Duration::from_secs(364)));
        b.succeeded(ip);
        assert!(!b.failed(ip, t0 + Duration::from_secs(365)));
    }
}
