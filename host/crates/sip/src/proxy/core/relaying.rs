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
    self, Leg, MediaCall, MediaMode, MediaPolicy, MediaRefusal, Party, RelayedDialog,
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

    /// An ACK of a relayed dialog carrying SDP (the answer to an offer in a
    /// 2xx): relayed like the rest. One whose answer the relay refuses goes
    /// on without it (an ACK has no answer to refuse it with, and its own SDP
    /// names what the relay stands in for), and the call, whose media could
    /// never flow, is ended.
    pub(super) fn media_ack(&mut self, now: Instant, msg: Message, source: IpAddr) -> Message {
        let Some((d, from)) = self.relayed.find(&msg) else {
            return msg;
        };
        let (id, mode) = (d.id, d.mode);
        match self.relay_sdp(id, from, mode, &msg, Some(source), false) {
            Ok(Some(sent)) => sent,
            Ok(None) => msg,
            Err(r) => {
                let mut rw = Rewrite::new(&msg);
                strip_sdp(&mut rw, &msg);
                let stripped = Message::parse(rw.finish(), Framing::Exact).unwrap_or(msg);
                self.media_failed(now, id, &stripped, r.reason, true);
                stripped
            }
        }
    }

    /// A description of relayed dialog `id` that the relay refused went on
    /// without its SDP in `msg`; `ends`: it was an answer completing an
    /// offer (in a 2xx or an ACK), so the call could only be "connected, no
    /// audio" and is ended with a BYE to each party.
    pub(super) fn media_failed(
        &mut self,
        now: Instant,
        id: u64,
        msg: &Message,
        why: String,
        ends: bool,
    ) {
        let byes = if ends {
            let reason = format!(
                "SIP;cause=488;text=\"{}\"",
                why.replace(['"', '\\', '\r', '\n'], "'")
            );
            self.end_relayed(now, id, &reason).map_or(0, |(_, n)| n)
        } else {
            0
        };
        self.events.push_back(Event::MediaFailed {
            call_id: call_id_text(msg),
            why,
            byes,
        });
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
    /// did. Ok(None): not a relayed dialog's, or no SDP; Err: the relay
    /// refused it (the response must not go on with its own SDP).
    pub(super) fn media_stray(
        &mut self,
        msg: &Message,
        source: Option<IpAddr>,
    ) -> Result<Option<Bytes>, ()> {
        let Some((d, asked_by)) = self.relayed.find(msg) else {
            // A 2xx resent into a call this proxy ended: its own SDP never
            // goes on.
            if self.relayed.was_ended(msg) && media::has_sdp(msg) {
                return Err(());
            }
            return Ok(None);
        };
        let (id, mode) = (d.id, d.mode);
        match self.relay_sdp(id, asked_by.other(), mode, msg, source, true) {
            Ok(sent) => Ok(sent.map(|m| m.body_bytes())),
            Err(_) => Err(()),
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
            self.end_relayed(now, id, "SIP;cause=408;text=\"media timeout\"")
        else {
            return;
        };
        self.stats.media_timeouts += 1;
        self.events.push_back(Event::MediaTimeout { call_id, byes });
    }

    /// Ends relayed dialog `id` from here: a BYE to each party whose side of
    /// the dialog is known, as if from the other, with `reason` (RFC 3326),
    /// and the relay released. Its Call-ID and the BYEs sent.
    fn end_relayed(&mut self, now: Instant, id: u64, reason: &str) -> Option<(String, usize)> {
        let d = self.relayed.end(id)?;
        self.media.release(id);
        let mut byes = 0;
        for leg in d.ready_legs() {
            let bytes = media::bye(leg, &d.call_id, self.cfg.server_name.as_deref(), reason);
            let Ok(msg) = Message::parse(Bytes::from(bytes), Framing::Exact) else {
                continue;
            };
            byes += 1;
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
        Some((String::from_utf8_lossy(&d.call_id).into_owned(), byes))
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
        // A request's SDP is always new (a refresh may repeat its bytes); a
        // response's or an ACK's may be a resend.
        let repeat = if late {
            Repeat::Only
        } else if msg.is_request() && msg.method() != Some(Method::Ack) {
            Repeat::Never
        } else {
            Repeat::Maybe
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
            .map_err(|e| MediaRefusal {
                status: 500,
                reason: format!("Server Internal Error (relayed SDP unusable: {e:?})"),
            })
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
