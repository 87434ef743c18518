//! The registrar of RFC 3261 §10.3, sans-IO: bindings from an address-of-
//! record to contacts, each with an expiry, kept in memory.
//!
//! ```text
//!  REGISTER ─▶ no Contact ───────────────────────────▶ 200 listing the bindings
//!           ─▶ Contact: * (Expires: 0, alone) ───────▶ every binding removed, 200
//!           ─▶ Contact: <uri>;expires=N, … ─┬─ N = 0 ─▶ that binding removed
//!                                            ├─ N < min_expires ─▶ 423 + Min-Expires
//!                                            ├─ same Call-ID, CSeq not higher ─▶ 400
//!                                            └─ added or refreshed (N capped at max_expires)
//! ```
//!
//! Who may register which address is the plugin's decision (it challenges,
//! then checks the identity); this module only keeps the bindings straight.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::headers::{HeaderName, NameAddr};
use crate::message::Message;
use crate::proxy::{Rejection, Transport};
use crate::uri::{Scheme, Uri};

/// Limits and defaults (`[registrar]` in the configuration).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RegistrarSettings {
    /// Shorter non-zero intervals get 423 Interval Too Brief.
    pub min_expires: u32,
    /// Longer intervals are cut to this.
    pub max_expires: u32,
    /// The interval when the request gives none.
    pub default_expires: u32,
    /// Bindings one address-of-record may hold.
    pub max_contacts: usize,
    /// Addresses-of-record held at once.
    pub max_aors: usize,
}

impl Default for RegistrarSettings {
    fn default() -> Self {
        RegistrarSettings {
            min_expires: 60,
            max_expires: 7200,
            default_expires: 3600,
            max_contacts: 10,
            max_aors: 100_000,
        }
    }
}

/// One contact bound to an address-of-record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Binding {
    /// The contact URI as the user agent wrote it (without `<>` or header
    /// parameters).
    pub uri: String,
    /// `q` in thousandths (1000 = 1.0), when given.
    pub q: Option<u16>,
    pub expires_at: Instant,
    pub call_id: String,
    pub cseq: u32,
    /// Where the REGISTER came from (it differs from the contact behind NAT).
    pub source: SocketAddr,
    pub transport: Transport,
    pub updated: Instant,
}

impl Binding {
    /// Seconds until it expires (0 once expired).
    pub fn expires_in(&self, now: Instant) -> u32 {
        let left = self.expires_at.saturating_duration_since(now);
        u32::try_from(left.as_secs()).unwrap_or(u32::MAX)
    }
}

/// The bindings, by address-of-record.
#[derive(Debug, Default)]
pub struct Registrar {
    settings: RegistrarSettings,
    aors: HashMap<String, Vec<Binding>>,
}

/// The canonical address-of-record for a URI: `sip:user@host` (scheme, the
/// user unescaped, the host in lower case; no port, parameters or headers).
pub fn aor_of(uri: &str) -> Result<String, String> {
    let parsed = Uri::parse(uri).map_err(|e| format!("{uri:?} is not a URI: {e}"))?;
    let Some(sip) = parsed.as_sip() else {
        return Err(format!("{uri:?} is not a sip: or sips: URI"));
    };
    let user = sip
        .user_decoded()
        .ok_or_else(|| format!("{uri:?} has no user part"))?;
    let user = String::from_utf8(user.into_owned())
        .map_err(|_| format!("{uri:?} has a user part that is not UTF-8"))?;
    let scheme = match sip.scheme {
        Scheme::Sips => "sips",
        _ => "sip",
    };
    Ok(format!(
        "{scheme}:{user}@{}",
        sip.host_text.to_ascii_lowercase()
    ))
}

impl Registrar {
    pub fn new(settings: RegistrarSettings) -> Registrar {
        Registrar {
            settings,
            aors: HashMap::new(),
        }
    }

    pub fn settings(&self) -> RegistrarSettings {
        self.settings
    }

    /// Applies `msg` (a REGISTER from `source` over `transport`) to the
    /// bindings of `aor` (canonical, see [`aor_of`]). On success, the
    /// `Contact:` lines of the 200 (every binding now held, with its
    /// remaining time); otherwise the error response, with nothing changed.
    pub fn register(
        &mut self,
        now: Instant,
        msg: &Message,
        aor: &str,
        source: SocketAddr,
        transport: Transport,
    ) -> Result<Vec<String>, Rejection> {
        let call_id = String::from_utf8_lossy(msg.call_id().unwrap_or_default()).into_owned();
        let cseq = match msg.cseq() {
            Some(Ok(c)) => c.seq,
            _ => return Err(Rejection::new(400, "Bad Request (no valid CSeq)")),
        };
        let expires_header = match msg.fields_named("Expires").next() {
            None => None,
            Some(f) => {
                let v = msg.value(f);
                Some(parse_seconds(v).ok_or_else(|| {
                    Rejection::new(400, "Bad Request (Expires is not a number of seconds)")
                })?)
            }
        };
        let contacts: Vec<&[u8]> = msg.list(HeaderName::Contact).map(|(_, v)| v).collect();
        self.expire(now, aor);
        if contacts.iter().any(|c| crate::text::trim(c) == b"*") {
            if contacts.len() != 1 || expires_header != Some(0) {
                return Err(Rejection::new(
                    400,
                    "Bad Request (Contact: * must be alone, with Expires: 0)",
                ));
            }
            self.aors.remove(aor);
            return Ok(Vec::new());
        }
        // Work on a copy: a request that fails changes nothing.
        let mut bindings = self.aors.get(aor).cloned().unwrap_or_default();
        for value in contacts {
            let na = NameAddr::parse(value).map_err(|e| {
                Rejection::new(400, format!("Bad Request (malformed Contact: {e})"))
            })?;
            na.uri().map_err(|e| {
                Rejection::new(400, format!("Bad Request (malformed Contact URI: {e})"))
            })?;
            let expires = match na.params.get("expires") {
                Some(Some(v)) => parse_seconds(v).ok_or_else(|| {
                    Rejection::new(400, "Bad Request (Contact expires is not a number)")
                })?,
                Some(None) => {
                    return Err(Rejection::new(
                        400,
                        "Bad Request (Contact expires has no value)",
                    ))
                }
                None => expires_header.unwrap_or(self.settings.default_expires),
            };
            let q = match na.params.get("q") {
                Some(Some(v)) => Some(parse_q(v).ok_or_else(|| {
                    Rejection::new(400, "Bad Request (Contact q is not between 0 and 1)")
                })?),
                Some(None) => {
                    return Err(Rejection::new(400, "Bad Request (Contact q has no value)"))
                }
                None => None,
            };
            if expires != 0 && expires < self.settings.min_expires {
                let mut rej = Rejection::new(423, "Interval Too Brief");
                rej.headers
                    .push(format!("Min-Expires: {}", self.settings.min_expires));
                return Err(rej);
            }
            let existing = bindings
                .iter()
                .position(|b| same_contact(&b.uri, na.uri_text));
            if let Some(i) = existing {
                let b = &bindings[i];
                if b.call_id == call_id && cseq <= b.cseq {
                    return Err(Rejection::new(
                        400,
                        "Bad Request (CSeq is not above the binding's: out of order)",
                    ));
                }
            }
            match (existing, expires) {
                (Some(i), 0) => {
                    bindings.remove(i);
                }
                (None, 0) => {}
                (existing, secs) => {
                    let secs = secs.min(self.settings.max_expires);
                    let b = Binding {
                        uri: na.uri_text.to_string(),
                        q,
                        expires_at: now + Duration::from_secs(u64::from(secs)),
                        call_id: call_id.clone(),
                        cseq,
                        source,
                        transport,
                        updated: now,
                    };
                    match existing {
                        Some(i) => bindings[i] = b,
                        None => {
                            if bindings.len() >= self.settings.max_contacts {
                                return Err(Rejection::new(
                                    403,
                                    format!(
                                        "Forbidden (at most {} contacts per address)",
                                        self.settings.max_contacts
                                    ),
                                ));
                            }
                            bindings.push(b);
                        }
                    }
                }
            }
        }
        if bindings.is_empty() {
            self.aors.remove(aor);
        } else {
            if !self.aors.contains_key(aor) && self.aors.len() >= self.settings.max_aors {
                self.sweep(now);
                if self.aors.len() >= self.settings.max_aors {
                    return Err(Rejection::new(503, "Service Unavailable (registrar full)"));
                }
            }
            self.aors.insert(aor.to_string(), bindings);
        }
        Ok(self.contact_lines(now, aor))
    }

    fn contact_lines(&self, now: Instant, aor: &str) -> Vec<String> {
        self.contacts(now, aor)
            .into_iter()
            .map(|b| {
                let mut line = format!("Contact: <{}>;expires={}", b.uri, b.expires_in(now));
                if let Some(q) = b.q {
                    line.push_str(&format!(";q={}", format_q(q)));
                }
                line
            })
            .collect()
    }

    /// The live bindings of `aor`, best first: highest `q` (none counts as
    /// 1.0), then the most recently refreshed.
    pub fn contacts(&self, now: Instant, aor: &str) -> Vec<&Binding> {
        let mut v: Vec<&Binding> = self
            .aors
            .get(aor)
            .map(|bs| bs.iter().filter(|b| b.expires_at > now).collect())
            .unwrap_or_default();
        v.sort_by(|a, b| {
            b.q.unwrap_or(1000)
                .cmp(&a.q.unwrap_or(1000))
                .then(b.updated.cmp(&a.updated))
        });
        v
    }

    /// Every address-of-record with live bindings, sorted.
    pub fn aors(&self, now: Instant) -> Vec<&str> {
        let mut v: Vec<&str> = self
            .aors
            .iter()
            .filter(|(_, bs)| bs.iter().any(|b| b.expires_at > now))
            .map(|(k, _)| k.as_str())
            .collect();
        v.sort_unstable();
        v
    }

    /// Removes every binding of `aor`; true when there were any.
    pub fn remove(&mut self, aor: &str) -> bool {
        self.aors.remove(aor).is_some()
    }

    /// Forgets expired bindings everywhere.
    pub fn sweep(&mut self, now: Instant) {
        self.aors.retain(|_, bs| {
            bs.retain(|b| b.expires_at > now);
            !bs.is_empty()
        });
    }

    fn expire(&mut self, now: Instant, aor: &str) {
        if let Some(bs) = self.aors.get_mut(aor) {
            bs.retain(|b| b.expires_at > now);
            if bs.is_empty() {
                self.aors.remove(aor);
            }
        }
    }
}

/// RFC 3261 §10.3 step 7: contacts are the same binding when their URIs are
/// equivalent (§19.1.4).
pub(crate) fn same_contact(stored: &str, new: &str) -> bool {
    match (Uri::parse(stored), Uri::parse(new)) {
        (Ok(Uri::Sip(a)), Ok(Uri::Sip(b))) => a.equivalent(&b),
        _ => stored == new,
    }
}

pub(crate) fn parse_seconds(v: &[u8]) -> Option<u32> {
    let v = crate::text::trim(v);
    if v.is_empty() || v.len() > 10 || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    // Larger than 2^32-1 is capped (RFC 3261 §20.19 allows such values).
    let n: u64 = std::str::from_utf8(v).ok()?.parse().ok()?;
    Some(u32::try_from(n).unwrap_or(u32::MAX))
}

/// `q` (RFC 3261 §20.10: `0[.ddd]` or `1[.000]`) in thousandths.
fn parse_q(v: &[u8]) -> Option<u16> {
    let v = std::str::from_utf8(crate::text::trim(v)).ok()?;
    let (whole, frac) = v.split_once('.').unwrap_or((v, ""));
    if frac.len() > 3 || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let frac_n: u16 = format!("{frac:0<3}").parse().ok()?;
    match whole {
        "0" => Some(frac_n),
        "1" if frac_n == 0 => Some(1000),
        _ => None,
    }
}

fn format_q(q: u16) -> String {
    if q >= 1000 {
        "1".to_string()
    } else {
        let s = format!("0.{q:03}");
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::Framing;
    use bytes::Bytes;

    const AOR: &str = "sip:alice@weir.test";

    fn src() -> SocketAddr {
        "192.0.2.1:5070".parse().unwrap()
    }

    fn register(call_id: &str, cseq: u32, extra: &str) -> Message {
        let text = format!(
            "REGISTER sip:weir.test SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.1:5070;branch=z9hG4bK{cseq}\r\nMax-Forwards: 70\r\nFrom: <sip:alice@weir.test>;tag=a\r\nTo: <sip:alice@weir.test>\r\nCall-ID: {call_id}\r\nCSeq: {cseq} REGISTER\r\n{extra}Content-Length: 0\r\n\r\n"
        );
        Message::parse(Bytes::from(text), Framing::Datagram).unwrap()
    }

    fn reg(r: &mut Registrar, now: Instant, m: &Message) -> Result<Vec<String>, (u16, String)> {
        r.register(now, m, AOR, src(), Transport::Udp)
            .map_err(|e| (e.status, e.reason.into_owned()))
    }

    #[test]
    fn aors_are_canonical() {
        assert_eq!(
            aor_of("sip:%61lice@WEIR.test:5070;transport=tcp").unwrap(),
            "sip:alice@weir.test"
        );
        assert_eq!(aor_of("sips:bob@x").unwrap(), "sips:bob@x");
        assert!(aor_of("sip:weir.test").unwrap_err().contains("no user"));
        assert!(aor_of("tel:+1415").is_err());
    }

    #[test]
    fn bindings_are_added_refreshed_listed_and_removed() {
        let mut r = Registrar::new(RegistrarSettings::default());
        let now = Instant::now();
        let lines = reg(
            &mut r,
            now,
            &register(
                "c1",
                1,
                "Contact: <sip:alice@192.0.2.1:5070>;q=0.5, <sip:alice@198.51.100.7;transport=tcp>\r\nExpires: 600\r\n",
            ),
        )
        .unwrap();
        assert_eq!(
            lines,
            [
                "Contact: <sip:alice@198.51.100.7;transport=tcp>;expires=600",
                "Contact: <sip:alice@192.0.2.1:5070>;expires=600;q=0.5",
            ]
        );
        // A query lists without changing.
        let later = now + Duration::from_secs(100);
        assert_eq!(reg(&mut r, later, &register("c1", 2, "")).unwrap().len(), 2);
        // A refresh of one (equivalent URI), a per-contact expires, a cap.
        let lines = reg(
            &mut r,
            later,
            &register(
                "c1",
                3,
                "Contact: <sip:alice@192.0.2.1:5070>;expires=99999\r\n",
            ),
        )
        .unwrap();
        assert_eq!(
            lines,
            // The refresh carried no q (1.0) and is the most recent: first.
            [
                "Contact: <sip:alice@192.0.2.1:5070>;expires=7200",
                "Contact: <sip:alice@198.51.100.7;transport=tcp>;expires=500",
            ]
        );
        assert_eq!(r.contacts(later, AOR)[0].source, src());
        // expires=0 removes one; Contact: * with Expires: 0 removes all.
        let lines = reg(
            &mut r,
            later,
            &register("c1", 4, "Contact: <sip:alice@192.0.2.1:5070>;expires=0\r\n"),
        )
        .unwrap();
        assert_eq!(lines.len(), 1);
        assert!(reg(
            &mut r,
            later,
            &register("c1", 5, "Contact: *\r\nExpires: 0\r\n")
        )
        .unwrap()
        .is_empty());
        assert!(r.aors(later).is_empty());
    }

    #[test]
    fn bindings_expire() {
        let mut r = Registrar::new(RegistrarSettings::default());
        let now = Instant::now();
        reg(
            &mut r,
            now,
            &register("c1", 1, "Contact: <sip:a@192.0.2.1>;expires=60\r\n"),
        )
        .unwrap();
        assert_eq!(r.aors(now), [AOR]);
        assert_eq!(r.contacts(now + Duration::from_secs(59), AOR).len(), 1);
        assert!(r.contacts(now + Duration::from_secs(60), AOR).is_empty());
        r.sweep(now + Duration::from_secs(61));
        assert!(!r.remove(AOR));
    }

    #[test]
    fn bad_registrations_change_nothing_and_say_why() {
        let mut r = Registrar::new(RegistrarSettings {
            max_contacts: 2,
            ..RegistrarSettings::default()
        });
        let now = Instant::now();
        reg(
            &mut r,
            now,
            &register("c1", 5, "Contact: <sip:a@192.0.2.1>\r\n"),
        )
        .unwrap();
        let cases = [
            ("c2", 1, "Contact: <sip:a@192.0.2.2>;expires=30\r\n", 423),
            ("c2", 1, "Contact: *\r\n", 400),
            (
                "c2",
                1,
                "Contact: *, <sip:a@192.0.2.2>\r\nExpires: 0\r\n",
                400,
            ),
            (
                "c2",
                1,
                "Contact: <sip:a@192.0.2.2>\r\nExpires: soon\r\n",
                400,
            ),
            ("c2", 1, "Contact: <sip:a@192.0.2.2>;q=1.5\r\n", 400),
            ("c2", 1, "Contact: <sip:a@192.0.2.2>;expires\r\n", 400),
            ("c2", 1, "Contact: <sip:a@192.0.2.2\r\n", 400),
            // Same Call-ID, CSeq not above the binding's: out of order.
            ("c1", 5, "Contact: <sip:a@192.0.2.1>;expires=0\r\n", 400),
            // A third contact is one too many.
            (
                "c2",
                1,
                "Contact: <sip:a@192.0.2.2>, <sip:a@192.0.2.3>\r\n",
                403,
            ),
        ];
        for (call_id, cseq, extra, status) in cases {
            let got = reg(&mut r, now, &register(call_id, cseq, extra));
            assert_eq!(
                got.as_ref().map_err(|e| e.0),
                Err(status),
                "{extra}: {got:?}"
            );
        }
        let e = r
            .register(
                now,
                &register("c2", 1, "Contact: <sip:a@192.0.2.2>;expires=30\r\n"),
                AOR,
                src(),
                Transport::Udp,
            )
            .unwrap_err();
        assert_eq!(e.headers, ["Min-Expires: 60"]);
        assert_eq!(r.contacts(now, AOR).len(), 1, "nothing changed");
        // Another Call-ID (the agent restarted) may replace the binding.
        reg(
            &mut r,
            now,
            &register("c9", 1, "Contact: <sip:a@192.0.2.1>;expires=0\r\n"),
        )
        .unwrap();
        assert!(r.contacts(now, AOR).is_empty());
    }

    #[test]
    fn q_values() {
        assert_eq!(parse_q(b"0.5"), Some(500));
        assert_eq!(parse_q(b"1"), Some(1000));
        assert_eq!(parse_q(b"1.000"), Some(1000));
        assert_eq!(parse_q(b"0.0005"), None);
        assert_eq!(parse_q(b"2"), None);
        assert_eq!(format_q(500), "0.5");
        assert_eq!(format_q(25), "0.025");
        assert_eq!(format_q(0), "0");
    }
}
