//! Registering with a carrier's registrar (RFC 3261 §10.2), so that calls for
//! a number come to this proxy, refreshed before the binding expires.
//!
//! ```text
//!                 due (start, refresh time, retry time)
//!       Waiting ───────────────────────────────────────▶ Sending
//!        ▲  ▲                                             │ │ │
//!        │  │ 2xx: registered, refresh before it expires  │ │ │ 401/407 once per round (with a
//!        │  └─────────────────────────────────────────────┘ │ │ credential), 423 with Min-Expires:
//!        │                                                  │ │ sent again, CSeq + 1
//!        │ any other final answer, timeout, transport error │ └───────────▶ Sending
//!        └── retry after a backoff (30 s doubling, 5 min) ──┘
//! ```
//!
//! One Call-ID and From tag per registration for its lifetime, CSeq rising by
//! one per REGISTER (§10.2.4). The proxy core sends the requests built here
//! like forwarded ones (it adds its Via and Max-Forwards) and hands back what
//! comes of them.

use std::time::{Duration, Instant};

use super::upstream_auth::{self, ClientCredential};
use crate::headers::{HeaderName, NameAddr};
use crate::message::{Framing, Message};

/// `[[registrations]]`: one address-of-record to keep registered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistrationConfig {
    /// Names it in logs and the admin API.
    pub name: String,
    /// The registrar's URI: the Request-URI and where REGISTERs go
    /// (`sip:sip.carrier.example;transport=tls`).
    pub registrar: String,
    /// The address-of-record registered (From and To).
    pub aor: String,
    /// The Contact to bind; None: the AOR's user at this proxy's listener
    /// for the registrar's transport.
    pub contact: Option<String>,
    /// Answers the registrar's digest challenge.
    pub credential: Option<ClientCredential>,
    /// The lifetime asked for.
    pub expires: Duration,
}

/// Where a registration stands, for operators.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistrationStatus {
    pub name: String,
    pub aor: String,
    pub registrar: String,
    /// "registering", "registered" or "failed" (failed: waiting to retry).
    pub state: &'static str,
    /// Seconds the registrar granted that are left.
    pub expires_in: Option<u64>,
    /// The last final answer (or the local reason it ended), e.g. "200 OK".
    pub last_answer: Option<String>,
    pub failures: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Nothing in flight; the next REGISTER goes at `due`.
    Waiting {
        due: Instant,
        failed: bool,
    },
    Sending,
}

const RETRY_FIRST: Duration = Duration::from_secs(30);
const RETRY_MAX: Duration = Duration::from_secs(300);

/// One registration's state machine (see the module doc).
#[derive(Debug)]
pub(crate) struct Registration {
    cfg: RegistrationConfig,
    call_id: String,
    from_tag: String,
    cseq: u32,
    /// The lifetime asked for (raised by a 423).
    expires: u32,
    state: State,
    /// The binding holds until then.
    until: Option<Instant>,
    /// The REGISTER in flight (to answer a challenge to it).
    sent: Option<Message>,
    /// A challenge was answered in this round: a second one is a failure
    /// (unless it says the nonce was only stale).
    answered: bool,
    /// A stale nonce was answered again in this round (once is enough).
    answered_stale: bool,
    /// The lifetime was raised after a 423 in this round (once per round).
    raised: bool,
    failures: u32,
    last: Option<String>,
    /// The Contact of the REGISTERs of this round.
    sent_contact: String,
    /// What operators should hear of: (registered, detail).
    news: Option<(bool, String)>,
}

impl Registration {
    pub fn new(cfg: RegistrationConfig, now: Instant, random: u64) -> Registration {
        let expires = u32::try_from(cfg.expires.as_secs()).unwrap_or(u32::MAX);
        Registration {
            call_id: format!("reg-{random:016x}@weir"),
            from_tag: format!("{:08x}", random >> 32),
            cfg,
            cseq: 0,
            expires,
            state: State::Waiting {
                due: now,
                failed: false,
            },
            until: None,
            sent: None,
            answered: false,
            answered_stale: false,
            raised: false,
            failures: 0,
            last: None,
            sent_contact: String::new(),
            news: None,
        }
    }

    /// Registered (true) or failed (false) since last asked, and how.
    pub fn take_news(&mut self) -> Option<(bool, String)> {
        self.news.take()
    }

    pub fn config(&self) -> &RegistrationConfig {
        &self.cfg
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        match self.state {
            State::Waiting { due, .. } => Some(due),
            State::Sending => None,
        }
    }

    /// The REGISTER to send now, if one is due. `contact` is the default
    /// Contact (used when the configuration names none).
    pub fn poll_request(&mut self, now: Instant, contact: &str) -> Option<Message> {
        match self.state {
            State::Waiting { due, .. } if due <= now => {}
            _ => return None,
        }
        self.answered = false;
        self.answered_stale = false;
        self.raised = false;
        let msg = self.build(contact, None);
        self.state = State::Sending;
        self.sent = msg.clone();
        if msg.is_none() {
            self.fail(
                now,
                "the REGISTER could not be written (check the URIs)".into(),
            );
        }
        msg
    }

    /// A final answer to the REGISTER in flight; returns the REGISTER to send
    /// again at once (a challenge answered, a longer lifetime), if any.
    pub fn handle_response(
        &mut self,
        now: Instant,
        resp: &Message,
        cnonce: &str,
    ) -> Option<Message> {
        if self.state != State::Sending {
            return None;
        }
        let status = resp.status()?;
        if status < 200 {
            return None;
        }
        let reason = String::from_utf8_lossy(resp.reason()).into_owned();
        self.last = Some(format!("{status} {reason}"));
        let sent = self.sent.take()?;
        match status {
            200..=299 => {
                let granted = self.granted(resp);
                if granted == 0 {
                    self.fail(
                        now,
                        format!("{status} {reason} (the registrar kept no binding)"),
                    );
                    return None;
                }
                self.failures = 0;
                self.until = Some(now + Duration::from_secs(granted.into()));
                self.news = Some((true, format!("{status} {reason}, for {granted} s")));
                self.state = State::Waiting {
                    due: now + refresh_after(granted),
                    failed: false,
                };
                None
            }
            401 | 407 if !self.answered || (!self.answered_stale && is_stale(resp)) => {
                if self.answered {
                    self.answered_stale = true;
                }
                let answer = self
                    .cfg
                    .credential
                    .as_ref()
                    .and_then(|c| upstream_auth::answer(resp, &sent, c, cnonce));
                let Some(answer) = answer else {
                    let why = if self.cfg.credential.is_none() {
                        "challenged, and no credential is configured"
                    } else {
                        "challenged with nothing this proxy can answer"
                    };
                    self.fail(now, format!("{status} {reason} ({why})"));
                    return None;
                };
                self.answered = true;
                self.retry_now(now, Some(answer))
            }
            423 => {
                let min = resp
                    .fields_named("Min-Expires")
                    .next()
                    .and_then(|f| crate::registrar::parse_seconds(resp.value(f)));
                match min {
                    Some(m) if m > self.expires && !self.raised => {
                        self.expires = m;
                        self.raised = true;
                        // The registrar may challenge the new request again.
                        self.answered = false;
                        self.retry_now(now, None)
                    }
                    _ => {
                        self.fail(now, format!("{status} {reason} (no usable Min-Expires)"));
                        None
                    }
                }
            }
            _ => {
                self.fail(now, format!("{status} {reason}"));
                None
            }
        }
    }

    /// The REGISTER in flight got no answer (timeout) or could not be sent.
    pub fn handle_failure(&mut self, now: Instant, why: String) {
        if self.state == State::Sending {
            self.sent = None;
            self.last = Some(why.clone());
            self.fail(now, why);
        }
    }

    pub fn status(&self, now: Instant) -> RegistrationStatus {
        let registered = self.until.is_some_and(|u| u > now);
        let state = if registered {
            "registered"
        } else if matches!(self.state, State::Waiting { failed: true, .. }) {
            "failed"
        } else {
            "registering"
        };
        RegistrationStatus {
            name: self.cfg.name.clone(),
            aor: self.cfg.aor.clone(),
            registrar: self.cfg.registrar.clone(),
            state,
            expires_in: self
                .until
                .filter(|_| registered)
                .map(|u| u.saturating_duration_since(now).as_secs()),
            last_answer: self.last.clone(),
            failures: self.failures,
        }
    }

    fn retry_now(&mut self, now: Instant, auth: Option<upstream_auth::Answer>) -> Option<Message> {
        let contact = self.sent_contact.clone();
        let msg = self.build(&contact, auth);
        if msg.is_none() {
            self.fail(now, "the REGISTER could not be written".into());
        }
        self.sent = msg.clone();
        msg
    }

    fn fail(&mut self, now: Instant, why: String) {
        self.failures = self.failures.saturating_add(1);
        self.news = Some((false, why));
        let mut backoff = RETRY_FIRST
            .saturating_mul(1 << self.failures.saturating_sub(1).min(8))
            .min(RETRY_MAX);
        // A binding that still holds is retried within half of what is left,
        // so that one lost refresh does not cost it.
        if let Some(left) = self.until.map(|u| u.saturating_duration_since(now)) {
            if !left.is_zero() {
                backoff = backoff.min(left / 2).max(Duration::from_secs(1));
            }
        }
        self.state = State::Waiting {
            due: now + backoff,
            failed: true,
        };
        self.sent = None;
    }

    /// The lifetime granted: our Contact's `expires` in the answer, else its
    /// Expires header, else what we asked for (RFC 3261 §10.2.4).
    fn granted(&self, resp: &Message) -> u32 {
        let ours = self.sent_contact.as_str();
        for (_, value) in resp.list(HeaderName::Contact) {
            let Ok(na) = NameAddr::parse(value) else {
                continue;
            };
            if !crate::registrar::same_contact(na.uri_text, ours) {
                continue;
            }
            if let Some(Some(v)) = na.params.get("expires") {
                if let Some(n) = crate::registrar::parse_seconds(v) {
                    return n;
                }
            }
        }
        resp.fields_named("Expires")
            .next()
            .and_then(|f| crate::registrar::parse_seconds(resp.value(f)))
            .unwrap_or(self.expires)
    }

    fn build(&mut self, contact: &str, auth: Option<upstream_auth::Answer>) -> Option<Message> {
        let contact = self
            .cfg
            .contact
            .clone()
            .unwrap_or_else(|| contact.to_string());
        self.cseq += 1;
        let mut text = format!(
            "REGISTER {} SIP/2.0\r\nFrom: <{}>;tag={}\r\nTo: <{}>\r\nCall-ID: {}\r\n\
             CSeq: {} REGISTER\r\nContact: <{}>\r\nExpires: {}\r\n",
            self.cfg.registrar,
            self.cfg.aor,
            self.from_tag,
            self.cfg.aor,
            self.call_id,
            self.cseq,
            contact,
            self.expires,
        );
        if let Some(a) = auth {
            text.push_str(&format!("{}: {}\r\n", a.name, a.value));
        }
        text.push_str("Content-Length: 0\r\n\r\n");
        self.sent_contact = contact;
        Message::parse(text.into(), Framing::Datagram).ok()
    }
}

/// True when the response's challenge says only that the nonce was stale.
fn is_stale(resp: &Message) -> bool {
    let header = match resp.status() {
        Some(401) => "WWW-Authenticate",
        _ => "Proxy-Authenticate",
    };
    resp.fields_named(header)
        .filter_map(|f| crate::digest::Challenge::parse(resp.value(f)).ok())
        .any(|c| c.stale)
}

/// When to refresh a binding granted for `secs`: comfortably before it ends
/// (a tenth of it, at least 5 s and at most 5 min early; never before half).
fn refresh_after(secs: u32) -> Duration {
    let granted = Duration::from_secs(secs.into());
    let early = (granted / 10).clamp(Duration::from_secs(5), Duration::from_secs(300));
    granted.saturating_sub(early).max(granted / 2)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn config(credential: bool) -> RegistrationConfig {
        RegistrationConfig {
            name: "carrier".into(),
            registrar: "sip:127.0.0.1:5099".into(),
            aor: "sip:+14155550100@carrier.example".into(),
            contact: None,
            credential: credential.then(|| ClientCredential {
                username: "weir".into(),
                password: "secret".into(),
            }),
            expires: Duration::from_secs(60),
        }
    }

    /// The answer `status` to `req`, with `extra` header lines.
    fn answer(req: &Message, status: u16, reason: &str, extra: &str) -> Message {
        let h = |name: &str| {
            req.fields_named(name)
                .next()
                .map(|f| String::from_utf8_lossy(req.value(f)).into_owned())
                .unwrap()
        };
        let text = format!(
            "SIP/2.0 {status} {reason}\r\nVia: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bKx\r\n\
             From: {}\r\nTo: {};tag=r\r\nCall-ID: {}\r\nCSeq: {}\r\n{extra}Content-Length: 0\r\n\r\n",
            h("From"),
            h("To"),
            h("Call-ID"),
            h("CSeq")
        );
        Message::parse(text.into(), Framing::Datagram).unwrap()
    }

    fn header(m: &Message, name: &str) -> Option<String> {
        m.fields_named(name)
            .next()
            .map(|f| String::from_utf8_lossy(m.value(f)).into_owned())
    }

    const CHALLENGE: &str =
        "WWW-Authenticate: Digest realm=\"carrier.example\", nonce=\"abc\", qop=\"auth\", algorithm=MD5\r\n";

    #[test]
    fn a_challenged_registration_is_answered_granted_and_refreshed_before_it_ends() {
        let t0 = Instant::now();
        let mut r = Registration::new(config(true), t0, 7);
        assert_eq!(r.poll_timeout(), Some(t0));
        let first = r
            .poll_request(t0, "sip:+14155550100@127.0.0.1:5060")
            .unwrap();
        assert_eq!(header(&first, "CSeq").unwrap(), "1 REGISTER");
        assert_eq!(
            header(&first, "Contact").unwrap(),
            "<sip:+14155550100@127.0.0.1:5060>"
        );
        assert_eq!(header(&first, "Expires").unwrap(), "60");
        assert_eq!(first.request_uri_bytes(), b"sip:127.0.0.1:5099");
        assert!(
            header(&first, "Via").is_none(),
            "the proxy adds its own Via"
        );
        assert_eq!(
            r.poll_timeout(),
            None,
            "nothing is due while one is in flight"
        );
        assert_eq!(r.status(t0).state, "registering");

        // 401: answered at once, CSeq + 1, same Call-ID.
        let second = r
            .handle_response(
                t0,
                &answer(&first, 401, "Unauthorized", CHALLENGE),
                "c0ffee",
            )
            .unwrap();
        assert_eq!(header(&second, "CSeq").unwrap(), "2 REGISTER");
        assert_eq!(header(&second, "Call-ID"), header(&first, "Call-ID"));
        let auth = header(&second, "Authorization").unwrap();
        assert!(
            auth.contains("username=\"weir\"") && auth.contains("uri=\"sip:127.0.0.1:5099\""),
            "{auth}"
        );

        // 200 granting 40 s (in our Contact): refreshed 5 s before it ends.
        let ok = answer(
            &second,
            200,
            "OK",
            "Contact: <sip:other@10.0.0.1>;expires=3600, <sip:+14155550100@127.0.0.1:5060>;expires=40\r\n",
        );
        assert!(r.handle_response(t0, &ok, "x").is_none());
        assert_eq!(r.take_news(), Some((true, "200 OK, for 40 s".into())));
        assert_eq!(r.poll_timeout(), Some(t0 + Duration::from_secs(35)));
        let st = r.status(t0 + Duration::from_secs(10));
        assert_eq!((st.state, st.expires_in), ("registered", Some(30)));
        let t1 = t0 + Duration::from_secs(35);
        assert!(r.poll_request(t1 - Duration::from_millis(1), "c").is_none());
        let refresh = r
            .poll_request(t1, "sip:+14155550100@127.0.0.1:5060")
            .unwrap();
        assert_eq!(header(&refresh, "CSeq").unwrap(), "3 REGISTER");
        assert_eq!(header(&refresh, "Call-ID"), header(&first, "Call-ID"));
        assert!(header(&refresh, "Authorization").is_none());
        // Still registered while the refresh is under way.
        assert_eq!(r.status(t1).state, "registered");
    }

    #[test]
    fn a_brief_interval_is_raised_and_failures_back_off() {
        let t0 = Instant::now();
        let mut r = Registration::new(config(true), t0, 1);
        let first = r.poll_request(t0, "sip:u@h").unwrap();
        let again = r
            .handle_response(
                t0,
                &answer(&first, 423, "Interval Too Brief", "Min-Expires: 120\r\n"),
                "c",
            )
            .unwrap();
        assert_eq!(header(&again, "Expires").unwrap(), "120");
        // A second challenge in the same round means the password is wrong.
        let answered = r
            .handle_response(t0, &answer(&again, 401, "Unauthorized", CHALLENGE), "c")
            .unwrap();
        assert!(r
            .handle_response(t0, &answer(&answered, 401, "Unauthorized", CHALLENGE), "c")
            .is_none());
        let (registered, why) = r.take_news().unwrap();
        assert!(!registered && why.starts_with("401 Unauthorized"), "{why}");
        assert_eq!(r.status(t0).state, "failed");
        assert_eq!(r.poll_timeout(), Some(t0 + RETRY_FIRST));
        // The next round: a timeout doubles the wait, up to the cap.
        let t1 = t0 + RETRY_FIRST;
        r.poll_request(t1, "sip:u@h").unwrap();
        r.handle_failure(t1, "no answer (timeout)".into());
        assert_eq!(r.poll_timeout(), Some(t1 + RETRY_FIRST * 2));
        let mut last = t1;
        for _ in 0..10 {
            last = r.poll_timeout().unwrap();
            r.poll_request(last, "sip:u@h").unwrap();
            r.handle_failure(last, "503 Service Unavailable".into());
        }
        let st = r.status(last);
        assert_eq!(st.failures, 12);
        assert_eq!(st.last_answer.as_deref(), Some("503 Service Unavailable"));
        assert_eq!(r.poll_timeout(), Some(last + RETRY_MAX), "capped");
    }

    #[test]
    fn a_challenge_without_a_credential_fails_with_the_reason() {
        let t0 = Instant::now();
        let mut r = Registration::new(config(false), t0, 1);
        let first = r.poll_request(t0, "sip:u@h").unwrap();
        assert!(r
            .handle_response(
                t0,
                &answer(&first, 407, "Proxy Authentication Required", CHALLENGE),
                "c"
            )
            .is_none());
        let (_, why) = r.take_news().unwrap();
        assert!(why.contains("no credential is configured"), "{why}");
        // A 200 that keeps no binding for us is a failure too.
        let t1 = r.poll_timeout().unwrap();
        let req = r.poll_request(t1, "sip:u@h").unwrap();
        assert!(r
            .handle_response(t1, &answer(&req, 200, "OK", "Expires: 0\r\n"), "c")
            .is_none());
        assert_eq!(r.status(t1).state, "failed");
    }

    #[test]
    fn a_stale_nonce_is_answered_again_and_a_holding_binding_is_retried_in_time() {
        let t0 = Instant::now();
        let mut r = Registration::new(config(true), t0, 3);
        let first = r.poll_request(t0, "sip:u@h").unwrap();
        let answered = r
            .handle_response(t0, &answer(&first, 401, "Unauthorized", CHALLENGE), "c")
            .unwrap();
        let stale = CHALLENGE.replace("qop=", "stale=true, qop=");
        let again = r
            .handle_response(t0, &answer(&answered, 401, "Unauthorized", &stale), "c")
            .expect("a stale nonce is answered once more");
        assert!(r
            .handle_response(t0, &answer(&again, 401, "Unauthorized", &stale), "c")
            .is_none());
        assert_eq!(r.status(t0).state, "failed");
        // Registered for 60 s; its refresh (at 54 s) is refused: retried within
        // half of the 6 s left, not after the 30 s backoff.
        let t1 = r.poll_timeout().unwrap();
        let req = r.poll_request(t1, "sip:u@h").unwrap();
        r.handle_response(t1, &answer(&req, 200, "OK", "Expires: 60\r\n"), "c");
        let t2 = r.poll_timeout().unwrap();
        assert_eq!(t2, t1 + Duration::from_secs(54));
        let req = r.poll_request(t2, "sip:u@h").unwrap();
        r.handle_response(t2, &answer(&req, 503, "Service Unavailable", ""), "c");
        assert_eq!(r.poll_timeout(), Some(t2 + Duration::from_secs(3)));
        assert_eq!(r.status(t2).state, "registered");
    }

    #[test]
    fn refresh_comes_before_expiry() {
        assert_eq!(refresh_after(3600), Duration::from_secs(3300));
        assert_eq!(refresh_after(60), Duration::from_secs(54));
        assert_eq!(refresh_after(8), Duration::from_secs(4));
    }
}
