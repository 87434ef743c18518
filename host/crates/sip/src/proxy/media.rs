//! Relayed media as the proxy core sees it: which dialogs' SDP goes through
//! the relay the host provides ([`MediaRelay`]), and what it takes to end a
//! relayed call whose media stopped (a BYE to each party, as if from the
//! other).
//!
//! ```text
//!  INVITE (offer or none) ──▶ relayed ──2xx──▶ confirmed ──BYE──▶ released
//!          │                    │                 │
//!          │                    └─ final failure, CANCEL ─▶ released
//!          └─ 488 / 503 from the relay: the INVITE is refused, nothing held
//!                                    confirmed ──media timeout──▶ BYE both ways, released
//! ```
//!
//! Every SDP body of a relayed dialog, in a request or a response, either
//! way, goes through [`MediaRelay::describe`]; the relay tells offers from
//! answers by their order (RFC 3264), as a proxy cannot see the roles.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::dialog_map::{dialog_key, DialogKey};
use crate::headers::{HeaderName, NameAddr};
use crate::message::Message;

/// What happens to a forwarded INVITE's media (the plugin contract's
/// `media-mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MediaMode {
    /// SDP untouched; media flows end to end.
    #[default]
    Pass,
    /// Both parties send their media to the relay.
    Relay,
    /// Relay, terminating SRTP on the caller's leg (RTP on the callee's).
    RelaySrtpCaller,
    /// Relay, terminating SRTP on the callee's leg (RTP on the caller's).
    RelaySrtpCallee,
}

/// When the proxy relays an INVITE's media that its router left to pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MediaPolicy {
    /// Never: the router's mode stands.
    #[default]
    AsRouted,
    /// When the offer names a private address (RFC 1918, RFC 6598, ULA) or
    /// the target is one: the "connected but no audio" calls.
    Auto,
    /// Every INVITE.
    Always,
}

/// A party of a dialog.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Party {
    /// Sent the initial INVITE.
    Caller,
    Callee,
}

impl Party {
    pub fn other(self) -> Party {
        match self {
            Party::Caller => Party::Callee,
            Party::Callee => Party::Caller,
        }
    }
}

/// One SDP body of a relayed dialog, for [`MediaRelay::describe`].
#[derive(Debug, Clone, Copy)]
pub struct MediaCall<'a> {
    /// The relayed dialog (the first description opens the session).
    pub id: u64,
    pub call_id: &'a [u8],
    /// Who wrote the description.
    pub from: Party,
    pub mode: MediaMode,
    /// Where the message carrying it came from, when known: a private SDP
    /// address equal to it is reachable from here.
    pub signalled_from: Option<std::net::IpAddr>,
    /// Whether it may be a resend of what the relay already took.
    pub repeat: weir_media::relay::Repeat,
}

/// Why the relay would not take a description: the status and reason the
/// request gets (488 for SDP it cannot relay, 503 when out of ports or
/// sessions).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MediaRefusal {
    pub status: u16,
    pub reason: String,
}

/// The media relay, provided by the host (sockets live there). Called from
/// the proxy core as bodies pass.
pub trait MediaRelay: Send {
    /// `sdp` from `call.from`: the description to pass on in its place
    /// (pointing the other party at the relay).
    fn describe(&mut self, call: &MediaCall<'_>, sdp: &[u8]) -> Result<Vec<u8>, MediaRefusal>;
    /// The dialog ended: every port back. Unknown ids are ignored.
    fn release(&mut self, id: u64);
    /// The offer `from` made in the dialog was refused (its re-INVITE or
    /// UPDATE failed): its media goes on as last agreed, and ports the
    /// offer took go back. Unknown ids, and parties with no offer
    /// outstanding, are ignored.
    fn withdraw(&mut self, id: u64, from: Party);
}

/// No relay configured: a router asking for one gets a 500 naming it.
#[derive(Debug, Default)]
pub struct NoRelay;

impl MediaRelay for NoRelay {
    fn describe(&mut self, _: &MediaCall<'_>, _: &[u8]) -> Result<Vec<u8>, MediaRefusal> {
        Err(MediaRefusal {
            status: 500,
            reason: "Server Internal Error (media relay not configured)".into(),
        })
    }

    fn release(&mut self, _: u64) {}

    fn withdraw(&mut self, _: u64, _: Party) {}
}

/// What a BYE to one party needs: where it goes and the dialog as that party
/// knows it.
#[derive(Debug, Clone, Default)]
pub(crate) struct Leg {
    /// The party's Contact URI (the Request-URI of requests to it).
    pub target: String,
    /// Route set towards it from this proxy, nearest first.
    pub routes: Vec<String>,
    /// From and To of a request to this party (the other party's view
    /// swapped); empty until the dialog is confirmed.
    pub from: Bytes,
    pub to: Bytes,
    /// The highest CSeq number this party has seen from the other one.
    pub cseq: u32,
}

impl Leg {
    fn ready(&self) -> bool {
        !self.target.is_empty() && !self.from.is_empty() && !self.to.is_empty()
    }
}

#[derive(Debug)]
pub(crate) struct RelayedDialog {
    pub id: u64,
    pub mode: MediaMode,
    pub call_id: Bytes,
    pub to_caller: Leg,
    pub to_callee: Leg,
    /// Why the answer in a reliable provisional response (RFC 3262) was
    /// refused: the 2xx that follows without SDP ends the call.
    pub doomed: Option<String>,
    /// The initial INVITE's CSeq number, as the caller sent it: an ACK from
    /// the caller with it acknowledges the call's own 2xx.
    pub initial_cseq: u32,
    /// A re-INVITE's 2xx whose offer was withdrawn when the relay refused
    /// the answer in its ACK (who sent it, its CSeq number): resent (the
    /// ACK may have been lost), it goes on without its SDP.
    pub withdrawn_2xx: Option<(Party, u32)>,
}

/// BYEs that end a relayed call, sent once the caller's ACK of the 2xx
/// they follow has passed (RFC 3261 §15: no BYE to a party before its 2xx
/// is acknowledged) or at once.
#[derive(Debug)]
pub(crate) struct Byes {
    pub call_id: Bytes,
    pub legs: Vec<Leg>,
    /// The Reason header's value (RFC 3326).
    pub reason: String,
}

/// A dialog the proxy ended itself.
#[derive(Debug)]
struct Ended {
    /// Its place in `ended_order`.
    seq: u64,
    /// BYEs waiting for the caller's ACK.
    after_ack: Option<Byes>,
}

impl RelayedDialog {
    pub fn leg_to(&mut self, party: Party) -> &mut Leg {
        match party {
            Party::Caller => &mut self.to_caller,
            Party::Callee => &mut self.to_callee,
        }
    }

    /// The legs a BYE can be built for (a dialog confirmed by a 2xx).
    pub fn ready_legs(&self) -> impl Iterator<Item = &Leg> {
        [&self.to_caller, &self.to_callee]
            .into_iter()
            .filter(|l| l.ready())
    }
}

/// Relayed dialogs by (Call-ID, caller's tag) and by relay id. No idle
/// expiry: an entry ends with its dialog (BYE, failure, media timeout), so
/// its ports are always given back.
#[derive(Debug, Default)]
pub(crate) struct RelayedDialogs {
    by_key: HashMap<DialogKey, RelayedDialog>,
    by_id: HashMap<u64, DialogKey>,
    /// Dialogs this proxy ended itself (media timeout, an answer the relay
    /// refused), for as long as their 2xx may be resent (64·T1, RFC 3261
    /// §13.3.1.4): a 2xx resent meanwhile goes on without its SDP, and the
    /// caller's ACK releases the BYEs waiting for it.
    ended: HashMap<DialogKey, Ended>,
    /// When each was ended (oldest first), with its entry's number.
    ended_order: VecDeque<(Instant, DialogKey, u64)>,
    ended_seq: u64,
}

/// The most ended dialogs remembered, whatever their age: memory stays
/// bounded (about 500 calls ended by the proxy every second for 32 s).
const ENDED_MAX: usize = 16_384;

impl RelayedDialogs {
    pub fn len(&self) -> usize {
        self.by_key.len()
    }

    /// Adds the dialog of initial request `msg`; returns the entry it replaced
    /// (the same Call-ID and tag tried again), whose relay must be released.
    pub fn insert(&mut self, msg: &Message, d: RelayedDialog) -> Option<RelayedDialog> {
        let key = dialog_key(msg, true)?;
        // The same Call-ID and tag relayed again is that dialog, not the
        // one ended before.
        self.ended.remove(&key);
        self.by_id.insert(d.id, key.clone());
        let old = self.by_key.insert(key, d)?;
        self.by_id.remove(&old.id);
        Some(old)
    }

    /// The relayed dialog `msg` belongs to and who sent it (for a response:
    /// who sent its request).
    pub fn find(&mut self, msg: &Message) -> Option<(&mut RelayedDialog, Party)> {
        if self.by_key.is_empty() {
            return None;
        }
        for (from_side, party) in [(true, Party::Caller), (false, Party::Callee)] {
            let Some(key) = dialog_key(msg, from_side) else {
                continue;
            };
            if self.by_key.contains_key(&key) {
                return self.by_key.get_mut(&key).map(|d| (d, party));
            }
        }
        None
    }

    pub fn get_mut(&mut self, id: u64) -> Option<&mut RelayedDialog> {
        let key = self.by_id.get(&id)?;
        self.by_key.get_mut(key)
    }

    pub fn remove(&mut self, id: u64) -> Option<RelayedDialog> {
        let key = self.by_id.remove(&id)?;
        self.by_key.remove(&key)
    }

    /// Removes dialog `id`, which the proxy ends itself: its key and entry
    /// (see [`RelayedDialogs::remember_ended`]).
    pub fn end(&mut self, id: u64) -> Option<(DialogKey, RelayedDialog)> {
        let key = self.by_id.remove(&id)?;
        let d = self.by_key.remove(&key)?;
        Some((key, d))
    }

    /// Remembers a dialog the proxy ended at `now`, with the BYEs that wait
    /// for the caller's ACK, if any, for `keep` (64·T1); older ones are
    /// forgotten.
    pub fn remember_ended(
        &mut self,
        now: Instant,
        keep: Duration,
        key: DialogKey,
        after_ack: Option<Byes>,
    ) {
        self.ended_seq += 1;
        let seq = self.ended_seq;
        self.ended_order.push_back((now, key.clone(), seq));
        self.ended.insert(key, Ended { seq, after_ack });
        while let Some((at, _, _)) = self.ended_order.front() {
            let stale = now.saturating_duration_since(*at) > keep;
            if !stale && self.ended_order.len() <= ENDED_MAX {
                break;
            }
            if let Some((_, old, seq)) = self.ended_order.pop_front() {
                // Only if not ended again since.
                if self.ended.get(&old).is_some_and(|e| e.seq == seq) {
                    self.ended.remove(&old);
                }
            }
        }
    }

    /// How many ended dialogs are remembered.
    #[cfg(test)]
    pub fn ended_len(&self) -> usize {
        self.ended.len()
    }

    /// True when `msg` belongs to a dialog the proxy ended itself.
    pub fn was_ended(&self, msg: &Message) -> bool {
        !self.ended.is_empty()
            && [true, false]
                .into_iter()
                .filter_map(|from_caller| dialog_key(msg, from_caller))
                .any(|k| self.ended.contains_key(&k))
    }

    /// The BYEs waiting for ACK `msg` (from the caller), once.
    pub fn take_byes_after_ack(&mut self, msg: &Message) -> Option<Byes> {
        let key = dialog_key(msg, true)?;
        self.ended.get_mut(&key)?.after_ack.take()
    }
}

/// True when `msg` carries an SDP body (Content-Type `application/sdp`).
pub(crate) fn has_sdp(msg: &Message) -> bool {
    !msg.body().is_empty()
        && msg.content_type().is_some_and(|t| {
            let media = t.split(|&b| b == b';').next().unwrap_or_default();
            crate::text::trim(media).eq_ignore_ascii_case(b"application/sdp")
        })
}

/// The URI of `msg`'s first Contact.
pub(crate) fn contact_uri(msg: &Message) -> Option<String> {
    let (_, v) = msg.list(HeaderName::Contact).next()?;
    NameAddr::parse(v).ok().map(|n| n.uri_text.to_string())
}

/// The URIs of `msg`'s Record-Route values, top first.
pub(crate) fn record_routes(msg: &Message) -> Vec<String> {
    msg.list(HeaderName::RecordRoute)
        .filter_map(|(_, v)| NameAddr::parse(v).ok().map(|n| n.uri_text.to_string()))
        .collect()
}

/// A BYE to `leg` of dialog `call_id`, without Via (the proxy adds its own
/// when it sends it); `reason`: its Reason header's value (RFC 3326).
pub(crate) fn bye(leg: &Leg, call_id: &[u8], server: Option<&str>, reason: &str) -> Vec<u8> {
    let mut m = Vec::with_capacity(512);
    m.extend_from_slice(format!("BYE {} SIP/2.0\r\n", leg.target).as_bytes());
    for r in &leg.routes {
        m.extend_from_slice(format!("Route: <{r}>\r\n").as_bytes());
    }
    m.extend_from_slice(b"Max-Forwards: 70\r\nFrom: ");
    m.extend_from_slice(&leg.from);
    m.extend_from_slice(b"\r\nTo: ");
    m.extend_from_slice(&leg.to);
    m.extend_from_slice(b"\r\nCall-ID: ");
    m.extend_from_slice(call_id);
    m.extend_from_slice(format!("\r\nCSeq: {} BYE\r\n", leg.cseq.wrapping_add(1)).as_bytes());
    m.extend_from_slice(format!("Reason: {reason}\r\n").as_bytes());
    if let Some(s) = server {
        m.extend_from_slice(format!("User-Agent: {s}\r\n").as_bytes());
    }
    m.extend_from_slice(b"Content-Length: 0\r\n\r\n");
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(n: usize) -> DialogKey {
        (Bytes::from(format!("call-{n}")), Bytes::from_static(b"tag"))
    }

    #[test]
    fn ended_dialogs_are_remembered_for_their_2xx_resends_and_no_longer() {
        let mut d = RelayedDialogs::default();
        let t0 = Instant::now();
        let keep = Duration::from_secs(37);
        d.remember_ended(t0, keep, key(1), None);
        d.remember_ended(t0 + Duration::from_secs(30), keep, key(2), None);
        assert_eq!(d.ended_len(), 2, "both within 64·T1");
        // However many end in between: the first is still known at 37 s.
        for n in 3..5_000 {
            d.remember_ended(t0 + Duration::from_secs(37), keep, key(n), None);
        }
        assert!(d.ended.contains_key(&key(1)));
        d.remember_ended(t0 + Duration::from_secs(38), keep, key(5_000), None);
        assert!(!d.ended.contains_key(&key(1)), "past 64·T1");
        assert!(d.ended.contains_key(&key(2)));
        // Ended again since: its newer entry stays when the old one goes.
        d.remember_ended(t0 + Duration::from_secs(40), keep, key(2), None);
        d.remember_ended(t0 + Duration::from_secs(68), keep, key(5_001), None);
        assert!(d.ended.contains_key(&key(2)));
        // Memory stays bounded whatever the rate.
        for n in 0..ENDED_MAX + 10 {
            d.remember_ended(t0 + Duration::from_secs(70), keep, key(10_000 + n), None);
        }
        assert_eq!(d.ended_len(), ENDED_MAX);
    }
}
