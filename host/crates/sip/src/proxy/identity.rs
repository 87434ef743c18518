//! Keeping a caller-ID rewrite consistent for the whole dialog.
//!
//! When a router changes the From of an INVITE (a verified number instead of
//! the agent's), the callee knows the caller by the new From and the caller
//! knows itself by the old one. For the rest of the dialog the proxy keeps
//! both views apart, as if the rewrite had never happened for the side that
//! did not ask for it:
//!
//! ```text
//!  caller ── From: old ──▶ proxy ── From: new ──▶ callee     (caller's requests)
//!  caller ◀─ To: old ───── proxy ◀─ To: new ───── callee     (callee's requests)
//! ```
//!
//! and every response carries back the From/To its request had when the
//! proxy received it. Tags are never changed (plugins may not write them), so
//! the dialog is still found by Call-ID and the caller's tag.

use std::time::{Duration, Instant};

use bytes::Bytes;

use super::dialog_map::{dialog_key, DialogMap};
use crate::headers::HeaderName;
use crate::message::{Framing, Message, Rewrite};

#[derive(Debug)]
struct Identity {
    /// The From value as the caller wrote it.
    received: Bytes,
    /// The From value the callee got.
    sent: Bytes,
}

/// Dialogs whose caller-ID the proxy rewrote.
#[derive(Debug)]
pub(crate) struct CallerIdentities {
    dialogs: DialogMap<Identity>,
}

impl CallerIdentities {
    pub fn new(idle: Duration, max: usize) -> CallerIdentities {
        CallerIdentities {
            dialogs: DialogMap::new(idle, max),
        }
    }

    /// Remembers the rewrite of `request`'s From (`received` → `sent`).
    pub fn insert(&mut self, now: Instant, request: &Message, received: &[u8], sent: &[u8]) {
        if let Some(key) = dialog_key(request, true) {
            self.dialogs.insert(
                now,
                key,
                Identity {
                    received: Bytes::copy_from_slice(received),
                    sent: Bytes::copy_from_slice(sent),
                },
            );
        }
    }

    /// For an in-dialog request: the header to change on its way out and the
    /// value it gets (From for the caller's requests, To for the callee's).
    /// A BYE (`ends`) ends the dialog's entry.
    pub fn for_request(
        &mut self,
        now: Instant,
        request: &Message,
        ends: bool,
    ) -> Option<(HeaderName, Bytes)> {
        if self.dialogs.is_empty() {
            return None;
        }
        for from_side in [true, false] {
            let Some(key) = dialog_key(request, from_side) else {
                continue;
            };
            let Some(id) = self.dialogs.touch(now, &key) else {
                continue;
            };
            let change = if from_side {
                (HeaderName::From, id.sent.clone())
            } else {
                (HeaderName::To, id.received.clone())
            };
            if ends {
                self.dialogs.remove(&key);
            }
            return Some(change);
        }
        None
    }

    /// The caller's own From for a message of its dialog going up to it (a
    /// 2xx retransmission no transaction knows any more).
    pub fn caller_from(&self, msg: &Message) -> Option<Bytes> {
        if self.dialogs.is_empty() {
            return None;
        }
        self.dialogs
            .get(&dialog_key(msg, true)?)
            .map(|id| id.received.clone())
    }

    /// Forgets `request`'s dialog (its INVITE failed).
    pub fn remove(&mut self, request: &Message) {
        if let Some(key) = dialog_key(request, true) {
            self.dialogs.remove(&key);
        }
    }

    pub fn len(&self) -> usize {
        self.dialogs.len()
    }
}

/// Sets the value of the first `name` line (`rw` is a rewrite of `msg`).
pub(crate) fn set_header_value(
    rw: &mut Rewrite<'_>,
    msg: &Message,
    name: HeaderName,
    value: &[u8],
) {
    let Ok(value) = std::str::from_utf8(value) else {
        return;
    };
    if let Some(i) = msg.fields_all().iter().position(|f| f.name == name) {
        rw.replace_value(i, value);
    }
}

/// `msg` with the value of its first `name` line replaced.
pub(crate) fn with_header_value(msg: &Message, name: HeaderName, value: &[u8]) -> Option<Message> {
    let mut rw = Rewrite::new(msg);
    set_header_value(&mut rw, msg, name, value);
    Message::parse(rw.finish(), Framing::Exact).ok()
}
