//! The proxy's side of relayed media (see `proxy::media`): SDP bodies sent
//! through the relay as they pass, the dialog remembered for the BYEs that
//! end it from here (a media timeout, an answer the relay refused), the
//! relay released when the dialog ends.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;

use super::{cseq_number, ForwardKind, Proxy, RoutePlan};
use crate::headers::HeaderName;
use crate::message::{Framing, Message, Method, Rewrite};
use crate::proxy::media::{
    self, Byes, Leg, MediaCall, MediaMode, MediaPolicy, MediaRefusal, Party, RelayedDialog,
};
use crate::proxy::validate::Rejection;
use crate::proxy::{Event, Flow, Target, Transport};
use crate::uri::{Host, Uri};
use weir_media::relay::Repeat;

/// A request to send, and its relay id and who answers it when its
/// dialog's media is relayed.
type Relayed = (Arc<Message>, Option<(u64, Party)>);

impl Proxy {
    /// For a request about to be forwarded: whether its dialog's media is
    /// relayed (the relay id and who answers the request) and the request to
    /// send, its SDP pointing at the relay. An initial INVITE starts relaying
    /// when `mode` asks for it (or `media_policy` says so); a
    /// relayed dialog's requests follow it, and its BYE ends it. An error
    /// refuses the request; nothing is held after one.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn media_out(
        &mut self,
        received: &Message,
        request: Arc<Message>,
        in_dialog: bool,
        method: Method,
        sent_cseq: Option<u32>,
        mode: MediaMode,
        targets: &[Target],
        flow: &Flow,
    ) -> Result<Relayed, Rejection> {
        let source = flow.remote.ip();
        if in_dialog {
            return self.media_in_dialog(request, method, sent_cseq, source);
        }
        if method != Method::Invite {
            return Ok((request, None));
        }
        let mode = match (mode, self.cfg.media_policy) {
            (MediaMode::Pass, MediaPolicy::Always) => MediaMode::Relay,
            (MediaMode::Pass, MediaPolicy::Auto) => match auto_relay_reason(&request, targets) {
                Some(why) => {
                    self.events.push_back(Event::MediaAutoRelay {
                        call_id: call_id_text(&request),
                        why,
                    });
                    MediaMode::Relay
                }
                None => MediaMode::Pass,
            },
            (m, _) => m,
        };
        if mode == MediaMode::Pass {
            return Ok((request, None));
        }
        if !self.cfg.media_srtp_over_plain_sip {
            // SDES keys travel in the SDP: on plain signalling anyone on the
            // path could read them.
            if mode == MediaMode::RelaySrtpCaller && flow.transport != Transport::Tls {
                return Err(Rejection::new(
                    488,
                    "Not Acceptable Here (SRTP keys need TLS signalling)",
                ));
            }
            if mode == MediaMode::RelaySrtpCallee && !targets.first().is_some_and(reached_over_tls)
            {
                return Err(Rejection::new(
                    500,
                    "Server Internal Error (SRTP to the callee needs a sips: or transport=tls target)",
                ));
            }
        }
        if self.relayed.len() >= self.cfg.media_max_dialogs {
            return Err(Rejection::new(
                503,
                "Service Unavailable (relayed calls at their limit)",
            ));
        }
        if !request.body().is_empty() && !media::has_sdp(&request) {
            return Err(Rejection::new(
                488,
                "Not Acceptable Here (the media relay reads application/sdp bodies only)",
            ));
        }
        let id = self.next_media;
        self.next_media += 1;
        let call_id = Bytes::copy_from_slice(request.call_id().unwrap_or_default());
        let dialog = RelayedDialog {
            id,
            mode,
            call_id,
            // Requests to the caller go where its Contact says, through the
            // proxies it came through (top of its Record-Route nearest us).
            to_caller: Leg {
                target: media::contact_uri(received).unwrap_or_default(),
                routes: media::record_routes(received),
                ..Leg::default()
            },
            to_callee: Leg::default(),
            doomed: None,
            initial_cseq: cseq_number(received).unwrap_or(0),
            withdrawn_2xx: None,
        };
        if let Some(old) = self.relayed.insert(&request, dialog) {
            self.media.release(old.id);
        }
        match self.relay_sdp(id, Party::Caller, mode, &request, Some(source), false) {
            Ok(Some(sent)) => Ok((Arc::new(sent), Some((id, Party::Callee)))),
            Ok(None) => Ok((request, Some((id, Party::Callee)))),
            Err(r) => {
                self.release_media(id);
                Err(Rejection::new(r.status, r.reason))
            }
        }
    }

    fn media_in_dialog(
        &mut self,
        request: Arc<Message>,
        method: Method,
        sent_cseq: Option<u32>,
        source: IpAddr,
    ) -> Result<Relayed, Rejection> {
        let Some((d, from)) = self.relayed.find(&request) else {
            return Ok((request, None));
        };
        let (id, mode) = (d.id, d.mode);
        // The numbering the other party knows its peer by, for our own BYE.
        if let Some(seq) = sent_cseq.or_else(|| cseq_number(&request)) {
            let leg = d.leg_to(from.other());
            leg.cseq = leg.cseq.max(seq);
        }
        if method == Method::Bye {
            self.release_media(id);
            return Ok((request, None));
        }
        match self.relay_sdp(id, from, mode, &request, Some(source), false) {
            Ok(Some(sent)) => Ok((Arc::new(sent), Some((id, from.other())))),
            Ok(None) => Ok((request, Some((id, from.other())))),
            Err(r) => Err(Rejection::new(r.status, r.reason)),
        }
    }

    /// An in-dialog ACK about to be forwarded: what goes on in its place
    /// (None: nothing, it cannot be sent without the SDP it must not carry)
    /// and what follows it once it has gone.
    ///
    /// In a relayed dialog its SDP (the answer to an offer in a 2xx) is
    /// relayed like the rest. One the relay refuses goes on without it (an
    /// ACK has no answer to refuse it with, and its own SDP names what the
    /// relay stands in for). When it answered the call's own 2xx, the
    /// call, whose media could never flow, is ended; when a re-INVITE's,
    /// the 2xx's offer is withdrawn and the call goes on with the media it
    /// had. In a dialog the proxy ended, it releases the BYEs waiting for
    /// it.
    pub(super) fn media_ack(
        &mut self,
        msg: Message,
        source: IpAddr,
    ) -> (Option<Message>, Option<AfterAck>) {
        let Some((d, from)) = self.relayed.find(&msg) else {
            if !self.relayed.was_ended(&msg) {
                return (Some(msg), None);
            }
            let byes = self.relayed.take_byes_after_ack(&msg).map(AfterAck::Byes);
            let out = if media::has_sdp(&msg) {
                without_sdp(&msg)
            } else {
                Some(msg)
            };
            return (out, byes);
        };
        let (id, mode) = (d.id, d.mode);
        let initial = from == Party::Caller && cseq_number(&msg) == Some(d.initial_cseq);
        match self.relay_sdp(id, from, mode, &msg, Some(source), false) {
            Ok(Some(sent)) => (Some(sent), None),
            Ok(None) => (Some(msg), None),
            Err(r) => {
                let (call_id, why) = (call_id_text(&msg), r.reason);
                let then = if initial {
                    AfterAck::End { id, call_id, why }
                } else {
                    if let Some(d) = self.relayed.get_mut(id) {
                        d.withdrawn_2xx = cseq_number(&msg).map(|c| (from.other(), c));
                    }
                    AfterAck::Withdraw {
                        id,
                        offerer: from.other(),
                        call_id,
                        why,
                    }
                };
                (without_sdp(&msg), Some(then))
            }
        }
    }

    /// What follows an ACK, once it has been forwarded.
    pub(super) fn after_ack(&mut self, now: Instant, then: AfterAck) {
        match then {
            AfterAck::Byes(byes) => self.send_byes(now, &byes),
            AfterAck::End { id, call_id, why } => {
                self.media_failed(now, id, call_id, why, Some(Ending::Now));
            }
            AfterAck::Withdraw {
                id,
                offerer,
                call_id,
                why,
            } => {
                self.media.withdraw(id, offerer);
                self.media_failed(now, id, call_id, why, None);
            }
        }
    }

    /// A description of relayed dialog `id` that the relay refused went on
    /// without its SDP; `ending`: it was the answer completing the initial
    /// offer (in a 2xx or an ACK), so the call could only be "connected, no
    /// audio" and is ended with a BYE to each party.
    fn media_failed(
        &mut self,
        now: Instant,
        id: u64,
        call_id: String,
        why: String,
        ending: Option<Ending>,
    ) {
        let byes = match ending {
            Some(when) => {
                let reason = format!(
                    "SIP;cause=488;text=\"{}\"",
                    why.replace(['"', '\\', '\r', '\n'], "'")
                );
                self.end_relayed(now, id, &reason, when)
                    .map_or(0, |(_, n)| n)
            }
            None => 0,
        };
        self.events
            .push_back(Event::MediaFailed { call_id, why, byes });
    }

    /// Relayed dialog `id`'s response `resp` went upstream as `code`;
    /// `refused`: why the relay refused its SDP (it went without it).
    ///
    /// The answer to the initial offer, refused, leaves a call that could
    /// only be "connected, no audio": it ends once the caller has ACKed.
    /// Anywhere else (a 1xx, a re-INVITE's or an UPDATE's 2xx) the call
    /// goes on with the media it has, but a reliable 1xx's answer is final
    /// (RFC 3262): the 2xx after it, carrying none, ends the call.
    pub(super) fn media_sent(
        &mut self,
        now: Instant,
        id: u64,
        resp: &Message,
        code: u16,
        initial: bool,
        refused: Option<String>,
    ) {
        let answered = initial && (200..300).contains(&code);
        let why = match refused {
            Some(why) => why,
            None if answered => match self.relayed.get_mut(id).and_then(|d| d.doomed.take()) {
                Some(why) => why,
                None => return,
            },
            None => return,
        };
        if !answered && code < 200 && resp.fields_named("RSeq").next().is_some() {
            if let Some(d) = self.relayed.get_mut(id) {
                d.doomed = Some(why.clone());
            }
        }
        let ending = answered.then_some(Ending::AfterAck);
        self.media_failed(now, id, call_id_text(resp), why, ending);
    }

    /// The body a response of a relayed request goes on with (its SDP
    /// pointing at the relay), None to leave it as it is, or why the relay
    /// refused its SDP. A 2xx to the initial INVITE also completes what a
    /// BYE to the callee needs.
    pub(super) fn media_response(
        &mut self,
        id: u64,
        responder: Party,
        resp: &Message,
        initial: bool,
        source: Option<IpAddr>,
    ) -> Result<Option<Bytes>, String> {
        let confirms = initial && resp.status().is_some_and(|s| (200..300).contains(&s));
        let mut routes = Vec::new();
        if confirms {
            routes = media::record_routes(resp);
            // Entries above ours were added between us and the callee; a
            // request to it takes them nearest first.
            let ours = routes
                .iter()
                .position(|r| self.uri_bytes_are_local(r.as_bytes()))
                .unwrap_or(routes.len());
            routes.truncate(ours);
            routes.reverse();
        }
        let Some(d) = self.relayed.get_mut(id) else {
            return Ok(None);
        };
        let mode = d.mode;
        if confirms {
            let seq = cseq_number(resp).unwrap_or(0);
            let leg = &mut d.to_callee;
            leg.target = media::contact_uri(resp).unwrap_or_default();
            leg.routes = routes;
            leg.from = Bytes::copy_from_slice(resp.header(HeaderName::From).unwrap_or_default());
            leg.to = Bytes::copy_from_slice(resp.header(HeaderName::To).unwrap_or_default());
            leg.cseq = leg.cseq.max(seq);
        }
        self.relay_sdp(id, responder, mode, resp, source, false)
            .map(|sent| sent.map(|m| m.body_bytes()))
            .map_err(|r| r.reason)
    }

    /// The caller's view of the dialog, from the 2xx as it goes up to it:
    /// a BYE to the caller comes From its To and To its From.
    pub(super) fn media_confirmed(&mut self, id: u64, sent: &[u8]) {
        let Some(d) = self.relayed.get_mut(id) else {
            return;
        };
        let Ok(m) = Message::parse(Bytes::copy_from_slice(sent), Framing::Exact) else {
            return;
        };
        d.to_caller.from = Bytes::copy_from_slice(m.header(HeaderName::To).unwrap_or_default());
        d.to_caller.to = Bytes::copy_from_slice(m.header(HeaderName::From).unwrap_or_default());
    }

    /// A response no transaction knows, or whose context is gone (a 2xx
    /// retransmission): its SDP goes through the relay like the first one's
    /// did.
    pub(super) fn media_stray(&mut self, msg: &Message, source: Option<IpAddr>) -> StraySdp {
        if !media::has_sdp(msg) {
            return StraySdp::Keep;
        }
        let Some((d, asked_by)) = self.relayed.find(msg) else {
            // A 2xx resent into a call this proxy ended (the caller may not
            // have the first): on, but never with its own SDP.
            if self.relayed.was_ended(msg) {
                return StraySdp::Strip;
            }
            return StraySdp::Keep;
        };
        let (id, mode) = (d.id, d.mode);
        let responder = asked_by.other();
        if d.withdrawn_2xx
            .is_some_and(|w| w == (responder, cseq_number(msg).unwrap_or(0)))
        {
            // Its offer is off: on without it (the ACK may be lost).
            return StraySdp::Strip;
        }
        match self.relay_sdp(id, responder, mode, msg, source, true) {
            Ok(Some(sent)) => StraySdp::Replace(sent.body_bytes()),
            Ok(None) => StraySdp::Keep,
            // Not a resend of what the relay took (another fork's 2xx):
            // never made the dialog's media, never passed on as it came.
            Err(_) => StraySdp::Drop,
        }
    }

    /// The initial INVITE of relayed dialog `id` failed (or was cancelled).
    pub(super) fn release_media(&mut self, id: u64) {
        if self.relayed.remove(id).is_some() {
            self.media.release(id);
        }
    }

    /// The host found no media on relayed call `id` for too long: a BYE to
    /// each party, as if from the other, and the relay released.
    pub fn handle_media_timeout(&mut self, now: Instant, id: u64) {
        let Some((call_id, byes)) =
            self.end_relayed(now, id, "SIP;cause=408;text=\"media timeout\"", Ending::Now)
        else {
            return;
        };
        self.stats.media_timeouts += 1;
        self.events.push_back(Event::MediaTimeout { call_id, byes });
    }

    /// Ends relayed dialog `id` from here: a BYE to each party whose side of
    /// the dialog is known, as if from the other, with `reason` (RFC 3326),
    /// now or after the caller's ACK; the relay released. Its Call-ID and
    /// the BYEs it gets.
    fn end_relayed(
        &mut self,
        now: Instant,
        id: u64,
        reason: &str,
        when: Ending,
    ) -> Option<(String, usize)> {
        let (key, d) = self.relayed.end(id)?;
        let keep = self.cfg.timers.t1 * 64 + self.cfg.timers.t4;
        self.media.release(id);
        let byes = Byes {
            call_id: d.call_id.clone(),
            legs: d.ready_legs().cloned().collect(),
            reason: reason.to_string(),
        };
        let n = byes.legs.len();
        match when {
            Ending::Now => {
                self.send_byes(now, &byes);
                self.relayed.remember_ended(now, keep, key, None);
            }
            Ending::AfterAck => self.relayed.remember_ended(now, keep, key, Some(byes)),
        }
        Some((String::from_utf8_lossy(&d.call_id).into_owned(), n))
    }

    fn send_byes(&mut self, now: Instant, byes: &Byes) {
        for leg in &byes.legs {
            let bytes = media::bye(
                leg,
                &byes.call_id,
                self.cfg.server_name.as_deref(),
                &byes.reason,
            );
            let Ok(msg) = Message::parse(Bytes::from(bytes), Framing::Exact) else {
                continue;
            };
            let loop_hash = self.random();
            let forward = super::Forward {
                request: Arc::new(msg),
                plan: RoutePlan {
                    next_route: leg.routes.first().cloned(),
                    ..RoutePlan::default()
                },
                uri: leg.target.clone(),
                inbound: 0,
                record_route: false,
                loop_hash,
                top_via: Vec::new(),
                kind: ForwardKind::Local,
                cseq: None,
                auth: None,
            };
            self.start_forward(now, forward);
        }
    }

    /// `msg` with its SDP (from `from`) replaced by the relay's; None when it
    /// carries none. `late`: a response no transaction knows, taken only as
    /// a resend of what the relay already took.
    fn relay_sdp(
        &mut self,
        id: u64,
        from: Party,
        mode: MediaMode,
        msg: &Message,
        signalled_from: Option<IpAddr>,
        late: bool,
    ) -> Result<Option<Message>, MediaRefusal> {
        // A request's SDP is always new (a refresh may repeat its bytes),
        // and an INVITE's or UPDATE's an offer; a response's or an ACK's
        // may be a resend.
        let repeat = match msg.method() {
            _ if late => Repeat::Only,
            Some(Method::Invite | Method::Update) if msg.is_request() => Repeat::Offer,
            Some(m) if msg.is_request() && m != Method::Ack => Repeat::Never,
            _ => Repeat::Maybe,
        };
        if !media::has_sdp(msg) {
            return Ok(None);
        }
        let call = MediaCall {
            id,
            call_id: msg.call_id().unwrap_or_default(),
            from,
            mode,
            signalled_from,
            repeat,
        };
        let sdp = self.media.describe(&call, msg.body())?;
        let mut rw = Rewrite::new(msg);
        rw.set_body(Bytes::from(sdp));
        Message::parse(rw.finish(), Framing::Exact)
            .map(Some)
            .map_err(|e| {
                // Refused after all: an offer it made is not outstanding.
                if repeat == Repeat::Offer {
                    self.media.withdraw(id, from);
                }
                MediaRefusal {
                    status: 500,
                    reason: format!("Server Internal Error (relayed SDP unusable: {e:?})"),
                }
            })
    }

    /// Relayed dialog `id`'s re-INVITE or UPDATE `request`, whose answer
    /// was `responder`'s, failed: the offer it carried (if it carried SDP)
    /// is withdrawn (RFC 3264 §8: the session stays as it was).
    pub(super) fn media_refused(&mut self, id: u64, responder: Party, request: &Message) {
        if media::has_sdp(request) && self.relayed.get_mut(id).is_some() {
            self.media.withdraw(id, responder.other());
        }
    }
}

/// Why `MediaPolicy::Auto` relays an INVITE a router left to pass: the private
/// address its offer or its first target names.
fn auto_relay_reason(request: &Message, targets: &[Target]) -> Option<String> {
    if media::has_sdp(request) {
        if let Ok(d) = weir_media::sdp::inspect(request.body()) {
            if let Some(ip) = d.private.first() {
                return Some(format!("the offer names private address {ip}"));
            }
        }
    }
    let target = targets.first()?;
    match Uri::parse(&target.uri) {
        Ok(Uri::Sip(u)) => match u.host {
            Host::Ip(ip) if weir_media::sdp::is_private(ip) => {
                Some(format!("the target {} is a private address", target.uri))
            }
            _ => None,
        },
        _ => None,
    }
}

/// True when `target` is reached over TLS (`sips:` or `transport=tls`).
fn reached_over_tls(target: &Target) -> bool {
    let uri = target.uri.to_ascii_lowercase();
    uri.starts_with("sips:") || uri.contains(";transport=tls")
}

/// When the BYEs that end a relayed call go out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ending {
    Now,
    /// Once the caller's ACK of the 2xx just sent has passed.
    AfterAck,
}

/// What follows an ACK once it has been forwarded.
#[derive(Debug)]
pub(super) enum AfterAck {
    /// BYEs that waited for it.
    Byes(Byes),
    /// Its answer to the call's own 2xx was refused: the call ends.
    End {
        id: u64,
        call_id: String,
        why: String,
    },
    /// Its answer to a re-INVITE's 2xx was refused: that offer is off.
    Withdraw {
        id: u64,
        offerer: Party,
        call_id: String,
        why: String,
    },
}

/// What a stray response goes on with.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum StraySdp {
    /// As it came (no SDP, or not a relayed dialog's).
    Keep,
    /// The relay's SDP in place of its own.
    Replace(Bytes),
    /// Without its SDP.
    Strip,
    /// Not at all.
    Drop,
}

/// `msg` without its SDP; None if that cannot be parsed back.
fn without_sdp(msg: &Message) -> Option<Message> {
    let mut rw = Rewrite::new(msg);
    strip_sdp(&mut rw, msg);
    Message::parse(rw.finish(), Framing::Exact).ok()
}

/// Takes `msg`'s SDP out: no body, no Content-Type.
pub(super) fn strip_sdp(rw: &mut Rewrite<'_>, msg: &Message) {
    let mut lines: Vec<usize> = msg.list(HeaderName::ContentType).map(|(i, _)| i).collect();
    lines.dedup();
    for i in lines {
        rw.remove(i);
    }
    rw.set_body(Bytes::new());
}

fn call_id_text(msg: &Message) -> String {
    String::from_utf8_lossy(msg.call_id().unwrap_or_default()).into_owned()
}
