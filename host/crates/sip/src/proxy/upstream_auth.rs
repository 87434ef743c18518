//! Answering a next hop's digest challenge for a target that names a
//! credential (RFC 3261 §22.2, §22.3), and keeping CSeq consistent after.
//!
//! The retried request is a new transaction: a new branch and CSeq + 1
//! (§8.1.3.5). Both ends of the call still count from their own numbers, so
//! for the rest of the transaction the proxy maps the number back on the way
//! up, and for the rest of the dialog it shifts every request from the caller
//! on the way down (and its responses back up). Requests in the other
//! direction are numbered by the callee and are left alone.

use std::fmt;
use std::time::{Duration, Instant};

use super::dialog_map::{dialog_key, DialogMap};
use crate::digest::Challenge;
use crate::headers::HeaderName;
use crate::message::Message;

/// A credential Weir answers a next hop's challenge with. The secret never
/// leaves the proxy: plugins only name it.
#[derive(Clone, PartialEq, Eq)]
pub struct ClientCredential {
    pub username: String,
    pub password: String,
}

impl fmt::Debug for ClientCredential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientCredential")
            .field("username", &self.username)
            .field("password", &"…")
            .finish()
    }
}

/// The header to add to the retried request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Answer {
    pub name: &'static str,
    pub value: String,
}

/// The answer to `resp` (a 401 or 407 to `sent`), if it carries a challenge
/// this proxy can answer: SHA-256 preferred over MD5 when both are offered.
pub(crate) fn answer(
    resp: &Message,
    sent: &Message,
    cred: &ClientCredential,
    cnonce: &str,
) -> Option<Answer> {
    let (challenge_header, name) = match resp.status()? {
        401 => ("WWW-Authenticate", "Authorization"),
        407 => ("Proxy-Authenticate", "Proxy-Authorization"),
        _ => return None,
    };
    let challenge = resp
        .fields_named(challenge_header)
        .filter(|f| f.name == HeaderName::Other)
        .filter_map(|f| Challenge::parse(resp.value(f)).ok())
        .max_by_key(|c| c.algorithm == crate::digest::Algorithm::Sha256)?;
    let uri = std::str::from_utf8(sent.request_uri_bytes()).ok()?;
    let creds = challenge.answer(
        &cred.username,
        &cred.password,
        sent.method_bytes(),
        uri,
        cnonce,
        1,
    );
    Some(Answer {
        name,
        value: creds.to_value(),
    })
}

/// The dialogs whose caller-side CSeq the proxy shifts (by how much).
#[derive(Debug)]
pub(crate) struct CseqShifts {
    shifts: DialogMap<u32>,
}

impl CseqShifts {
    pub fn new(idle: Duration, max: usize) -> CseqShifts {
        CseqShifts {
            shifts: DialogMap::new(idle, max),
        }
    }

    /// Remembers that requests from `request`'s sender in its dialog go out
    /// `delta` higher.
    pub fn insert(&mut self, now: Instant, request: &Message, delta: u32) {
        if let Some(key) = dialog_key(request, true) {
            self.shifts.insert(now, key, delta);
        }
    }

    /// The shift for an in-dialog request from the caller, if any; a BYE ends it.
    pub fn take_for(&mut self, now: Instant, request: &Message, is_bye: bool) -> Option<u32> {
        if self.shifts.is_empty() {
            return None;
        }
        let key = dialog_key(request, true)?;
        let delta = *self.shifts.touch(now, &key)?;
        if is_bye {
            self.shifts.remove(&key);
        }
        Some(delta)
    }

    /// Forgets the shift of `request`'s dialog (its INVITE failed).
    pub fn remove(&mut self, request: &Message) {
        if let Some(key) = dialog_key(request, true) {
            self.shifts.remove(&key);
        }
    }

    /// The shift for a message of a shifted dialog in the caller's numbering.
    pub fn peek(&self, msg: &Message) -> Option<u32> {
        if self.shifts.is_empty() {
            return None;
        }
        self.shifts.get(&dialog_key(msg, true)?).copied()
    }

    pub fn len(&self) -> usize {
        self.shifts.len()
    }
}
