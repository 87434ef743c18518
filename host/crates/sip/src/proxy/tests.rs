//! Simulation tests of the proxy core, one group per RFC 3261 §16 step, on a
//! virtual clock. Peers are plain byte strings; nothing touches a socket.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use weir_sim::Clock;

use super::*;
use crate::headers::HeaderName;
use crate::message::{Framing, Message, Method};

const PROXY: &str = "127.0.0.1:5060";
const ALICE: &str = "127.0.0.1:5070";
const BOB: &str = "127.0.0.1:5080";
const CAROL: &str = "127.0.0.1:5090";

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

struct Sim {
    clock: Clock,
    proxy: Proxy,
}

/// Routes every initial request to a fixed list of targets.
struct Fixed(Vec<Target>);

impl Router for Fixed {
    fn route(&mut self, _: &Arc<Message>, _: &Flow, _: Option<&str>) -> Routed {
        Decision::Forward(self.0.clone()).into()
    }
}

impl Sim {
    fn new() -> Sim {
        Self::with(|_| {}, Box::new(FallbackRouter(Fallback::RequestUri)))
    }

    fn with(edit: impl FnOnce(&mut ProxyConfig), router: Box<dyn Router>) -> Sim {
        let mut cfg = ProxyConfig::new(vec![
            Listener::new(Transport::Udp, addr(PROXY)),
            Listener::new(Transport::Tcp, addr(PROXY)),
        ]);
        edit(&mut cfg);
        Sim {
            clock: Clock::new(),
            proxy: Proxy::new(cfg, router, 42),
        }
    }

    fn udp(&mut self, from: &str, msg: &str) {
        let flow = Flow {
            transport: Transport::Udp,
            local: addr(PROXY),
            remote: addr(from),
            conn: None,
        };
        self.proxy.handle_input(
            self.clock.now(),
            flow,
            Bytes::from(msg.replace("\r\n", "\n").replace('\n', "\r\n")),
        );
    }

    fn udp_raw(&mut self, from: &str, msg: Bytes) {
        let flow = Flow {
            transport: Transport::Udp,
            local: addr(PROXY),
            remote: addr(from),
            conn: None,
        };
        self.proxy.handle_input(self.clock.now(), flow, msg);
    }

    fn out(&mut self) -> Vec<(SocketAddr, Transport, Message)> {
        let mut v = vec![];
        while let Some(t) = self.proxy.poll_transmit() {
            v.push((
                t.remote,
                t.transport,
                Message::parse(t.bytes, Framing::Exact).unwrap(),
            ));
        }
        v
    }

    /// The only message sent, to `to`.
    fn one(&mut self, to: &str) -> Message {
        let out = self.out();
        assert_eq!(
            out.len(),
            1,
            "expected one message, got {:?}",
            out.iter().map(|o| o.2.clone()).collect::<Vec<_>>()
        );
        assert_eq!(out[0].0, addr(to));
        out.into_iter().next().unwrap().2
    }

    /// The message sent to `to` among everything sent since the last look.
    fn sent_to(&mut self, to: &str) -> Message {
        let out = self.out();
        match out.iter().find(|o| o.0 == addr(to)) {
            Some(o) => o.2.clone(),
            None => panic!("nothing sent to {to}: {out:?}"),
        }
    }

    /// The last message sent to `to` since the last look (a final response after a 100).
    fn last_to(&mut self, to: &str) -> Message {
        let out = self.out();
        match out.iter().rev().find(|o| o.0 == addr(to)) {
            Some(o) => o.2.clone(),
            None => panic!("nothing sent to {to}: {out:?}"),
        }
    }

    fn advance(&mut self, d: Duration) {
        let end = self.clock.now() + d;
        while let Some(at) = self.proxy.poll_timeout().filter(|&at| at <= end) {
            self.clock.set(at);
            self.proxy.handle_timeout(self.clock.now());
        }
        self.clock.set(end);
    }

    fn assert_idle(&mut self) {
        self.advance(Duration::from_secs(300));
        let s = self.proxy.stats();
        assert_eq!(s.live(), (0, 0, 0), "state left over: {s:?}");
    }
}

fn invite(ruri: &str, branch: &str) -> String {
    format!(
        "INVITE {ruri} SIP/2.0
Via: SIP/2.0/UDP 127.0.0.1:5070;branch={branch};rport
Max-Forwards: 70
From: <sip:alice@a.example>;tag=fa
To: <sip:bob@b.example>
Call-ID: call-{branch}
CSeq: 1 INVITE
Contact: <sip:alice@127.0.0.1:5070>
X-Unknown:   kept   as is
Content-Type: application/sdp
Content-Length: 5

v=0
"
    )
}

/// A response to `req` as a UAS at the far end writes it (all Vias copied);
/// `to_tag` is added to a To without one (an in-dialog request's stays).
fn answer(req: &Message, code: u16, reason: &str, to_tag: &str, extra: &str) -> String {
    let mut s = format!("SIP/2.0 {code} {reason}\r\n");
    for f in req.fields_all() {
        if matches!(
            f.name,
            HeaderName::Via
                | HeaderName::From
                | HeaderName::CallId
                | HeaderName::CSeq
                | HeaderName::RecordRoute
        ) {
            s.push_str(&String::from_utf8_lossy(&req.as_bytes()[f.line.range()]));
        }
        if f.name == HeaderName::To {
            let to = String::from_utf8_lossy(req.value(f));
            let tagged = req
                .to()
                .and_then(Result::ok)
                .is_some_and(|t| t.tag().is_some());
            if tagged {
                s.push_str(&format!("To: {to}\r\n"));
            } else {
                s.push_str(&format!("To: {to};tag={to_tag}\r\n"));
            }
        }
    }
    s.push_str(extra);
    s.push_str("Content-Length: 0\r\n\r\n");
    s
}

fn header(m: &Message, name: &str) -> Vec<String> {
    m.fields_named(name)
        .map(|f| String::from_utf8_lossy(m.value(f)).into_owned())
        .collect()
}

fn branch_of(m: &Message) -> String {
    String::from_utf8_lossy(m.top_via().unwrap().unwrap().branch().unwrap()).into_owned()
}

/// INVITE from Alice through the proxy to Bob; returns the INVITE Bob got.
fn invite_to_bob(sim: &mut Sim, branch: &str) -> Message {
    sim.udp(ALICE, &invite("sip:bob@127.0.0.1:5080", branch));
    let out = sim.out();
    assert_eq!(out.len(), 2, "100 Trying and the forward");
    assert_eq!(out[0].0, addr(ALICE));
    assert_eq!(out[0].2.status(), Some(100));
    assert_eq!(out[1].0, addr(BOB));
    out[1].2.clone()
}

#[test]
fn s16_6_forwarded_request_copy() {
    let mut sim = Sim::new();
    let fwd = invite_to_bob(&mut sim, "z9hG4bK-a1");
    // Step 3: Max-Forwards decremented. Step 4: Record-Route. Step 8: our Via on top
    // with a magic-cookie branch, the client's Via stamped with received/rport.
    assert_eq!(header(&fwd, "Max-Forwards"), ["69"]);
    assert_eq!(header(&fwd, "Record-Route"), ["<sip:127.0.0.1:5060;lr>"]);
    let vias: Vec<_> = fwd
        .list(HeaderName::Via)
        .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
        .collect();
    assert!(
        vias[0].starts_with("SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bK"),
        "{vias:?}"
    );
    assert_eq!(
        vias[1],
        "SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK-a1;received=127.0.0.1;rport=5070"
    );
    // Unknown headers and the body pass byte for byte.
    assert!(String::from_utf8_lossy(fwd.as_bytes()).contains("\r\nX-Unknown:   kept   as is\r\n"));
    assert_eq!(fwd.body(), b"v=0\r\n");
    assert_eq!(fwd.request_uri_bytes(), b"sip:bob@127.0.0.1:5080");
}

#[test]
fn s16_7_call_flow_with_provisional_answer_ack_and_bye() {
    let mut sim = Sim::new();
    let fwd = invite_to_bob(&mut sim, "z9hG4bK-a2");
    // 100 from Bob is not forwarded (§16.7 step 5); 180 and 200 are, without our Via.
    sim.udp(BOB, &answer(&fwd, 100, "Trying", "", ""));
    assert!(sim.out().is_empty());
    sim.udp(BOB, &answer(&fwd, 180, "Ringing", "tb", ""));
    let ringing = sim.one(ALICE);
    assert_eq!(ringing.status(), Some(180));
    assert_eq!(ringing.list(HeaderName::Via).count(), 1);
    sim.udp(
        BOB,
        &answer(
            &fwd,
            200,
            "OK",
            "tb",
            "Contact: <sip:bob@127.0.0.1:5080>\r\n",
        ),
    );
    let ok = sim.one(ALICE);
    assert_eq!(ok.status(), Some(200));
    assert_eq!(header(&ok, "Record-Route"), ["<sip:127.0.0.1:5060;lr>"]);
    // A retransmitted 2xx is forwarded again (RFC 6026).
    sim.udp(
        BOB,
        &answer(
            &fwd,
            200,
            "OK",
            "tb",
            "Contact: <sip:bob@127.0.0.1:5080>\r\n",
        ),
    );
    assert_eq!(sim.one(ALICE).status(), Some(200));
    // ACK for the 2xx follows the route set end to end.
    let in_dialog = |method: &str, branch: &str, seq: u32| {
        format!(
            "{method} sip:bob@127.0.0.1:5080 SIP/2.0
Via: SIP/2.0/UDP 127.0.0.1:5070;branch={branch};rport
Route: <sip:127.0.0.1:5060;lr>
Max-Forwards: 70
From: <sip:alice@a.example>;tag=fa
To: <sip:bob@b.example>;tag=tb
Call-ID: call-z9hG4bK-a2
CSeq: {seq} {method}
Content-Length: 0

"
        )
    };
    sim.udp(ALICE, &in_dialog("ACK", "z9hG4bK-ack2", 1));
    let ack = sim.one(BOB);
    assert_eq!(ack.method(), Some(Method::Ack));
    assert_eq!(
        ack.count(HeaderName::Route),
        0,
        "our Route value is consumed"
    );
    assert_eq!(ack.list(HeaderName::Via).count(), 2);
    sim.udp(ALICE, &in_dialog("BYE", "z9hG4bK-bye2", 2));
    let bye = sim.one(BOB);
    assert_eq!(bye.method(), Some(Method::Bye));
    assert_eq!(
        bye.count(HeaderName::RecordRoute),
        0,
        "no Record-Route on in-dialog requests"
    );
    sim.udp(BOB, &answer(&bye, 200, "OK", "tb", ""));
    assert_eq!(sim.one(ALICE).status(), Some(200));
    sim.assert_idle();
}

#[test]
fn s16_3_validation_answers() {
    let mut sim = Sim::new();
    let base = invite("sip:bob@127.0.0.1:5080", "z9hG4bK-v1");
    let cases: &[(&str, &str, u16, &str)] = &[
        ("Max-Forwards: 70", "Max-Forwards: 0", 483, "Too Many Hops"),
        (
            "Max-Forwards: 70",
            "Max-Forwards: 70\nProxy-Require: foo, bar",
            420,
            "Bad Extension",
        ),
        (
            "INVITE sip:bob@127.0.0.1:5080",
            "INVITE xmpp:bob@b.example",
            416,
            "Unsupported URI Scheme",
        ),
        (
            "CSeq: 1 INVITE",
            "CSeq: 1 BYE",
            400,
            "CSeq method does not match the request method",
        ),
        (
            "CSeq: 1 INVITE",
            "CSeq: 99999999999 INVITE",
            400,
            "Bad CSeq",
        ),
        (
            "Call-ID: call-z9hG4bK-v1\n",
            "",
            400,
            "Missing Call-ID header",
        ),
        (
            "Contact: <sip:alice@127.0.0.1:5070>",
            "Contact: <sip:alice@127.0.0.1:5070>;;",
            400,
            "Bad Contact header",
        ),
        (
            "branch=z9hG4bK-v1",
            "branch=z9hG4bK",
            400,
            "Empty Via branch",
        ),
    ];
    for (i, (from, to, status, reason)) in cases.iter().enumerate() {
        let msg = base
            .replace(from, to)
            .replace("call-z9hG4bK-v1", &format!("call-v{i}"));
        sim.udp(ALICE, &msg);
        let r = sim.one(ALICE);
        assert_eq!(r.status(), Some(*status), "case {i}: {to}");
        assert_eq!(r.reason(), reason.as_bytes(), "case {i}");
        if *status == 420 {
            assert_eq!(header(&r, "Unsupported"), ["foo, bar"]);
        }
    }
    // No Via at all: nothing to answer to; dropped and counted.
    let before = sim.proxy.stats().dropped_malformed;
    sim.udp(
        ALICE,
        &base.replace(
            "Via: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK-v1;rport\n",
            "",
        ),
    );
    assert!(sim.out().is_empty());
    assert_eq!(sim.proxy.stats().dropped_malformed, before + 1);
    sim.assert_idle();
}

#[test]
fn s16_3_loop_detection_and_spirals() {
    let mut sim = Sim::new();
    let fwd = invite_to_bob(&mut sim, "z9hG4bK-l1");
    // The same request comes back unchanged (a loop): 482.
    let looped = String::from_utf8_lossy(fwd.as_bytes()).into_owned();
    sim.udp_raw(BOB, Bytes::from(looped.clone()));
    let out = sim.out();
    let r = out.iter().find(|o| o.2.status().is_some()).unwrap();
    assert_eq!(r.2.status(), Some(482));
    assert_eq!(sim.proxy.stats().loops_detected, 1);
    // Back with another Request-URI (a spiral): forwarded.
    let spiral = looped.replacen(
        "INVITE sip:bob@127.0.0.1:5080",
        "INVITE sip:carol@127.0.0.1:5090",
        1,
    );
    sim.udp_raw(BOB, Bytes::from(spiral));
    let out = sim.out();
    assert!(
        out.iter()
            .any(|o| o.0 == addr(CAROL) && o.2.method() == Some(Method::Invite)),
        "{out:?}"
    );
}

#[test]
fn s16_10_cancel_before_the_answer() {
    let mut sim = Sim::new();
    let fwd = invite_to_bob(&mut sim, "z9hG4bK-c1");
    sim.udp(BOB, &answer(&fwd, 180, "Ringing", "tb", ""));
    assert_eq!(sim.one(ALICE).status(), Some(180));
    let cancel = invite("sip:bob@127.0.0.1:5080", "z9hG4bK-c1")
        .replace("INVITE sip:", "CANCEL sip:")
        .replace("CSeq: 1 INVITE", "CSeq: 1 CANCEL");
    sim.udp(ALICE, &cancel);
    let out = sim.out();
    assert_eq!(out.len(), 2);
    assert_eq!((out[0].0, out[0].2.status()), (addr(ALICE), Some(200)));
    let down = &out[1];
    assert_eq!(down.0, addr(BOB));
    assert_eq!(down.2.method(), Some(Method::Cancel));
    assert_eq!(
        branch_of(&down.2),
        branch_of(&fwd),
        "CANCEL carries the INVITE's branch"
    );
    sim.udp(BOB, &answer(&down.2, 200, "OK", "tb", ""));
    assert!(sim.out().is_empty(), "the 200 to CANCEL stops here");
    sim.udp(BOB, &answer(&fwd, 487, "Request Terminated", "tb", ""));
    let out = sim.out();
    assert_eq!(out.len(), 2);
    let ack = out.iter().find(|o| o.0 == addr(BOB)).unwrap();
    assert_eq!(
        ack.2.method(),
        Some(Method::Ack),
        "the proxy ACKs the 487 downstream"
    );
    let up = out.iter().find(|o| o.0 == addr(ALICE)).unwrap();
    assert_eq!(up.2.status(), Some(487));
    // Alice's ACK for the 487 is absorbed by the server transaction.
    let ack_up = invite("sip:bob@127.0.0.1:5080", "z9hG4bK-c1")
        .replace("INVITE sip:", "ACK sip:")
        .replace("CSeq: 1 INVITE", "CSeq: 1 ACK")
        .replace("To: <sip:bob@b.example>", "To: <sip:bob@b.example>;tag=tb");
    sim.udp(ALICE, &ack_up);
    assert!(sim.out().is_empty());
    sim.assert_idle();
}

#[test]
fn s16_10_cancel_before_any_provisional_waits_for_one() {
    let mut sim = Sim::new();
    let fwd = invite_to_bob(&mut sim, "z9hG4bK-c2");
    let cancel = invite("sip:bob@127.0.0.1:5080", "z9hG4bK-c2")
        .replace("INVITE sip:", "CANCEL sip:")
        .replace("CSeq: 1 INVITE", "CSeq: 1 CANCEL");
    sim.udp(ALICE, &cancel);
    assert_eq!(sim.one(ALICE).status(), Some(200));
    sim.udp(BOB, &answer(&fwd, 180, "Ringing", "tb", ""));
    let out = sim.out();
    assert!(out
        .iter()
        .any(|o| o.0 == addr(BOB) && o.2.method() == Some(Method::Cancel)));
    assert!(out
        .iter()
        .any(|o| o.0 == addr(ALICE) && o.2.status() == Some(180)));
}

#[test]
fn s17_timer_b_total_loss_yields_408_and_cleans_up() {
    let mut sim = Sim::with(
        |c| c.timers.t1 = Duration::from_millis(100),
        Box::new(FallbackRouter(Fallback::RequestUri)),
    );
    invite_to_bob(&mut sim, "z9hG4bK-t1");
    sim.advance(Duration::from_millis(6399));
    let retrans = sim.out();
    assert_eq!(retrans.len(), 6, "Timer A retransmissions");
    assert!(retrans.iter().all(|o| o.0 == addr(BOB)));
    sim.advance(Duration::from_millis(1));
    let r = sim.one(ALICE);
    assert_eq!(r.status(), Some(408));
    sim.assert_idle();
}

#[test]
fn s16_7_sequential_failover_and_503_becomes_500() {
    let targets = vec![
        Target::new("sip:bob@127.0.0.1:5080"),
        Target::new("sip:carol@127.0.0.1:5090"),
    ];
    let mut sim = Sim::with(|_| {}, Box::new(Fixed(targets)));
    sim.udp(ALICE, &invite("sip:agent@127.0.0.1:5060", "z9hG4bK-f1"));
    let out = sim.out();
    let to_bob = out.iter().find(|o| o.0 == addr(BOB)).unwrap().2.clone();
    assert_eq!(to_bob.request_uri_bytes(), b"sip:bob@127.0.0.1:5080");
    sim.udp(BOB, &answer(&to_bob, 503, "Service Unavailable", "tb", ""));
    let out = sim.out();
    let to_carol = out
        .iter()
        .find(|o| o.0 == addr(CAROL))
        .expect("failover to the second target");
    assert_eq!(to_carol.2.request_uri_bytes(), b"sip:carol@127.0.0.1:5090");
    assert_ne!(
        branch_of(&to_carol.2),
        branch_of(&to_bob),
        "a new branch per target"
    );
    sim.udp(
        CAROL,
        &answer(&to_carol.2, 503, "Service Unavailable", "tc", ""),
    );
    let up = sim.sent_to(ALICE);
    assert_eq!(
        up.status(),
        Some(500),
        "§16.7: 503 is never forwarded as such"
    );
    assert_eq!(sim.proxy.stats().failovers, 1);
    sim.assert_idle();
}

#[test]
fn s16_7_best_response_prefers_lower_class_and_auth() {
    let targets = vec![
        Target::new("sip:bob@127.0.0.1:5080"),
        Target::new("sip:carol@127.0.0.1:5090"),
    ];
    let mut sim = Sim::with(|_| {}, Box::new(Fixed(targets)));
    sim.udp(ALICE, &invite("sip:agent@127.0.0.1:5060", "z9hG4bK-f2"));
    let to_bob = sim.sent_to(BOB);
    sim.udp(BOB, &answer(&to_bob, 486, "Busy Here", "tb", ""));
    let to_carol = sim.sent_to(CAROL);
    sim.udp(CAROL, &answer(&to_carol, 500, "Oops", "tc", ""));
    let up = sim.sent_to(ALICE);
    assert_eq!(up.status(), Some(486));
}

#[test]
fn s16_8_target_timeout_cancels_a_ringing_branch_and_fails_over() {
    let mut first = Target::new("sip:bob@127.0.0.1:5080");
    first.timeout = Some(Duration::from_secs(2));
    let targets = vec![first, Target::new("sip:carol@127.0.0.1:5090")];
    let mut sim = Sim::with(|_| {}, Box::new(Fixed(targets)));
    sim.udp(ALICE, &invite("sip:agent@127.0.0.1:5060", "z9hG4bK-f3"));
    let to_bob = sim.sent_to(BOB);
    sim.udp(BOB, &answer(&to_bob, 180, "Ringing", "tb", ""));
    sim.out();
    sim.advance(Duration::from_millis(1999));
    assert!(sim.out().is_empty());
    sim.advance(Duration::from_millis(1));
    let out = sim.out();
    assert!(
        out.iter()
            .any(|o| o.0 == addr(BOB) && o.2.method() == Some(Method::Cancel)),
        "{out:?}"
    );
    let to_carol = out.iter().find(|o| o.0 == addr(CAROL)).unwrap().2.clone();
    sim.udp(CAROL, &answer(&to_carol, 200, "OK", "tc", ""));
    let up = sim.sent_to(ALICE);
    assert_eq!(up.status(), Some(200));
}

#[test]
fn s16_6_timer_c_cancels_after_ringing_too_long() {
    let mut sim = Sim::with(
        |c| c.ring_timeout = Duration::from_secs(10),
        Box::new(FallbackRouter(Fallback::RequestUri)),
    );
    let fwd = invite_to_bob(&mut sim, "z9hG4bK-tc");
    sim.udp(BOB, &answer(&fwd, 180, "Ringing", "tb", ""));
    sim.out();
    sim.advance(Duration::from_secs(9));
    sim.udp(BOB, &answer(&fwd, 183, "Session Progress", "tb", ""));
    sim.out();
    sim.advance(Duration::from_secs(9));
    assert!(sim.out().is_empty(), "a provisional resets Timer C");
    sim.advance(Duration::from_secs(1));
    let out = sim.out();
    assert!(out
        .iter()
        .any(|o| o.0 == addr(BOB) && o.2.method() == Some(Method::Cancel)));
    assert!(out
        .iter()
        .any(|o| o.0 == addr(ALICE) && o.2.status() == Some(408)));
    sim.assert_idle();
}

#[test]
fn s16_4_strict_router_before_us() {
    let mut sim = Sim::new();
    // A strict router put our Record-Route URI in the Request-URI and the real
    // Request-URI at the end of the Route set.
    let msg = "BYE sip:127.0.0.1:5060;lr SIP/2.0
Via: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK-s1
Route: <sip:bob@127.0.0.1:5080>
Max-Forwards: 70
From: <sip:alice@a.example>;tag=fa
To: <sip:bob@b.example>;tag=tb
Call-ID: strict1
CSeq: 2 BYE
Content-Length: 0

";
    sim.udp(ALICE, msg);
    let fwd = sim.one(BOB);
    assert_eq!(fwd.request_uri_bytes(), b"sip:bob@127.0.0.1:5080");
    assert_eq!(fwd.count(HeaderName::Route), 0);
}

#[test]
fn s16_6_step_6_next_hop_strict_router() {
    let mut sim = Sim::new();
    let msg = "BYE sip:bob@b.example SIP/2.0
Via: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK-s2
Route: <sip:127.0.0.1:5060;lr>, <sip:127.0.0.1:5090>
Max-Forwards: 70
From: <sip:alice@a.example>;tag=fa
To: <sip:bob@b.example>;tag=tb
Call-ID: strict2
CSeq: 2 BYE
Content-Length: 0

";
    sim.udp(ALICE, msg);
    let fwd = sim.one(CAROL);
    assert_eq!(fwd.request_uri_bytes(), b"sip:127.0.0.1:5090");
    assert_eq!(header(&fwd, "Route"), ["<sip:bob@b.example>"]);
}

#[test]
fn s16_6_double_record_route_when_the_transport_changes() {
    let mut sim = Sim::new();
    sim.udp(
        ALICE,
        &invite("sip:bob@127.0.0.1:5080;transport=tcp", "z9hG4bK-d1"),
    );
    let out = sim.out();
    let (to, transport, fwd) = out.iter().find(|o| o.2.is_request()).unwrap().clone();
    assert_eq!((to, transport), (addr(BOB), Transport::Tcp));
    assert_eq!(
        header(&fwd, "Record-Route"),
        [
            "<sip:127.0.0.1:5060;transport=tcp;lr>",
            "<sip:127.0.0.1:5060;lr>"
        ]
    );
    assert!(fwd.top_via().unwrap().unwrap().transport_is("TCP"));
}

#[test]
fn s18_1_1_large_requests_go_over_tcp() {
    let mut sim = Sim::new();
    let big = invite("sip:bob@127.0.0.1:5080", "z9hG4bK-big").replace(
        "X-Unknown:   kept   as is",
        &format!("X-Pad: {}", "p".repeat(1400)),
    );
    sim.udp(ALICE, &big);
    let out = sim.out();
    let fwd = out.iter().find(|o| o.2.is_request()).unwrap();
    assert_eq!(fwd.1, Transport::Tcp);
    assert_eq!(fwd.0, addr(BOB));
}

#[test]
fn s16_7_retransmissions_are_absorbed() {
    let mut sim = Sim::new();
    let req = invite("sip:bob@127.0.0.1:5080", "z9hG4bK-r1");
    invite_to_bob(&mut sim, "z9hG4bK-r1");
    sim.udp(ALICE, &req);
    let out = sim.out();
    assert_eq!(out.len(), 1, "only the 100 Trying is repeated");
    assert_eq!(out[0].2.status(), Some(100));
    assert_eq!(sim.proxy.stats().retransmissions_absorbed, 1);
}

#[test]
fn s16_11_stray_responses() {
    let mut sim = Sim::new();
    // Our Via on top, no transaction: forwarded by the next Via.
    let stray = "SIP/2.0 200 OK
Via: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bKwgone
Via: SIP/2.0/UDP 10.9.9.9:5070;branch=z9hG4bK-x;received=127.0.0.1;rport=5070
From: <sip:alice@a.example>;tag=fa
To: <sip:bob@b.example>;tag=tb
Call-ID: stray
CSeq: 1 INVITE
Content-Length: 0

";
    sim.udp(BOB, stray);
    let r = sim.one(ALICE);
    assert_eq!(r.list(HeaderName::Via).count(), 1);
    // Someone else's Via on top: dropped (§18.1.2), never reflected to 255.255.255.255.
    sim.udp(
        BOB,
        &stray.replace(
            "127.0.0.1:5060;branch=z9hG4bKwgone",
            "192.0.2.1;branch=z9hG4bKx",
        ),
    );
    assert!(sim.out().is_empty());
}

#[test]
fn options_to_the_proxy_itself_and_the_reject_fallback() {
    let mut sim = Sim::with(
        |c| c.fallback = Fallback::Reject,
        Box::new(FallbackRouter(Fallback::Reject)),
    );
    let options = "OPTIONS sip:127.0.0.1:5060 SIP/2.0
Via: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK-o1
Max-Forwards: 70
From: <sip:ping@a.example>;tag=p
To: <sip:127.0.0.1:5060>
Call-ID: ping1
CSeq: 1 OPTIONS
Content-Length: 0

";
    sim.udp(ALICE, options);
    let r = sim.one(ALICE);
    assert_eq!(r.status(), Some(200));
    assert!(!header(&r, "Allow").is_empty());
    assert!(r.to().unwrap().unwrap().tag().is_some());
    sim.udp(ALICE, &invite("sip:bob@127.0.0.1:5080", "z9hG4bK-rj"));
    let out = sim.out();
    let rej = out.iter().find(|o| o.2.status() != Some(100)).unwrap();
    assert_eq!(rej.2.status(), Some(404));
    assert!(String::from_utf8_lossy(rej.2.reason()).contains("fallback"));
}

#[test]
fn request_uri_naming_the_proxy_is_not_sent_to_itself() {
    let mut sim = Sim::new();
    sim.udp(ALICE, &invite("sip:agent@127.0.0.1:5060", "z9hG4bK-self"));
    let out = sim.out();
    assert!(out.iter().all(|o| o.0 == addr(ALICE)));
    assert_eq!(out.last().unwrap().2.status(), Some(404));
}

#[test]
fn dns_names_are_resolved_by_the_host() {
    let mut sim = Sim::new();
    sim.udp(ALICE, &invite("sip:bob@b.example", "z9hG4bK-dns"));
    assert_eq!(sim.out().len(), 1, "100 Trying only, waiting for DNS");
    let Some(Event::Resolve {
        id,
        host,
        port,
        transport,
    }) = sim.proxy.poll_event()
    else {
        panic!("expected a DNS question");
    };
    assert_eq!(
        (host.as_str(), port, transport),
        ("b.example", 5060, Transport::Udp)
    );
    sim.proxy
        .handle_resolved(sim.clock.now(), id, Ok(vec![addr(BOB)]));
    assert_eq!(sim.one(BOB).method(), Some(Method::Invite));

    sim.udp(ALICE, &invite("sip:bob@nowhere.example", "z9hG4bK-dns2"));
    sim.out();
    let Some(Event::Resolve { id, .. }) = sim.proxy.poll_event() else {
        panic!("expected a DNS question");
    };
    sim.proxy
        .handle_resolved(sim.clock.now(), id, Err("NXDOMAIN".into()));
    let r = sim.one(ALICE);
    assert_eq!(r.status(), Some(500));
    assert!(String::from_utf8_lossy(r.reason()).contains("nowhere.example"));
}

#[test]
fn transport_errors_fail_over() {
    let targets = vec![
        Target::new("sip:bob@127.0.0.1:5080;transport=tcp"),
        Target::new("sip:carol@127.0.0.1:5090"),
    ];
    let mut sim = Sim::with(|_| {}, Box::new(Fixed(targets)));
    sim.udp(ALICE, &invite("sip:agent@127.0.0.1:5060", "z9hG4bK-te"));
    let mut tag = None;
    while let Some(t) = sim.proxy.poll_transmit() {
        if t.remote == addr(BOB) {
            tag = t.on_error;
        }
    }
    sim.proxy.handle_send_error(sim.clock.now(), tag.unwrap());
    let out = sim.out();
    assert!(out.iter().any(|o| o.0 == addr(CAROL)));
}

#[test]
fn missing_max_forwards_is_added_as_70() {
    let mut sim = Sim::new();
    sim.udp(
        ALICE,
        &invite("sip:bob@127.0.0.1:5080", "z9hG4bK-mf").replace("Max-Forwards: 70\n", ""),
    );
    let fwd = sim.sent_to(BOB);
    assert_eq!(header(&fwd, "Max-Forwards"), ["70"]);
}

#[test]
fn rfc5118_s4_9_ipv4_mapped_next_hops_are_reached_over_ipv4() {
    let mut sim = Sim::new();
    sim.udp(
        ALICE,
        &invite("sip:bob@[::ffff:127.0.0.1]:5080", "z9hG4bK-map"),
    );
    let out = sim.out();
    let fwd = out.iter().find(|o| o.2.is_request()).unwrap();
    assert_eq!(fwd.0, addr(BOB));
    assert_eq!(
        fwd.2.request_uri_bytes(),
        b"sip:bob@[::ffff:127.0.0.1]:5080",
        "the URI itself is not rewritten"
    );
}

#[test]
fn oversized_requests_get_513_and_oversized_responses_are_dropped() {
    let mut sim = Sim::with(
        |c| c.max_message = 2000,
        Box::new(FallbackRouter(Fallback::RequestUri)),
    );
    let big = invite("sip:bob@127.0.0.1:5080", "z9hG4bK-513").replace(
        "X-Unknown:   kept   as is",
        &format!("X-Pad: {}", "p".repeat(2500)),
    );
    sim.udp(ALICE, &big);
    let r = sim.one(ALICE);
    assert_eq!(r.status(), Some(513));
    assert_eq!(r.reason(), b"Message Too Large");
    let stray = format!(
        "SIP/2.0 200 OK\nVia: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bKwx\nVia: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK-y\nFrom: <sip:a@a>;tag=1\nTo: <sip:b@b>;tag=2\nCall-ID: big\nCSeq: 1 INVITE\nX-Pad: {}\nContent-Length: 0\n\n",
        "p".repeat(2500)
    );
    let before = sim.proxy.stats().dropped_malformed;
    sim.udp(BOB, &stray);
    assert!(sim.out().is_empty());
    assert_eq!(sim.proxy.stats().dropped_malformed, before + 1);
    sim.assert_idle();
}

#[test]
fn aliases_are_this_proxy() {
    let options = |ruri: &str, n: u32| {
        format!(
            "OPTIONS {ruri} SIP/2.0
Via: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK-alias{n}
Max-Forwards: 70
From: <sip:ping@a.example>;tag=p
To: <{ruri}>
Call-ID: alias-{n}
CSeq: 1 OPTIONS
Content-Length: 0

"
        )
    };
    let mut sim = Sim::with(
        |c| {
            c.aliases = vec![
                ("weir.example.com".into(), None),
                ("edge.example.com".into(), Some(5070)),
            ]
        },
        Box::new(FallbackRouter(Fallback::RequestUri)),
    );
    sim.udp(ALICE, &options("sip:weir.example.com", 1));
    assert_eq!(
        sim.one(ALICE).status(),
        Some(200),
        "an alias without a port matches any port"
    );
    sim.udp(ALICE, &options("sip:edge.example.com:5070", 2));
    assert_eq!(sim.one(ALICE).status(), Some(200));
    // The same name on another port is somebody else: resolved and forwarded.
    sim.udp(ALICE, &options("sip:edge.example.com", 3));
    assert!(sim.out().is_empty());
    assert!(
        matches!(sim.proxy.poll_event(), Some(Event::Resolve { ref host, .. }) if host == "edge.example.com")
    );
}

/// A router that edits the request, pins a token, and answers failures.
struct Deciding {
    failures: Vec<(u16, String, usize, bool)>,
    on_second: FailureAction,
}

impl Router for Deciding {
    fn route(&mut self, request: &Arc<Message>, _: &Flow, _: Option<&str>) -> Routed {
        // The plugin host hands the proxy an edited copy of the request.
        let text = String::from_utf8_lossy(request.as_bytes())
            .replace("\r\nCSeq:", "\r\nX-Agent: a7\r\nCSeq:");
        Routed {
            decision: Decision::Forward(vec![Target::new("sip:bob@127.0.0.1:5080")]),
            edited: Some(Message::parse(Bytes::from(text), Framing::Datagram).unwrap()),
            record_route: Some(false),
            reply_headers: Vec::new(),
            pin: Some(Pin(Arc::new(7u32))),
            media: MediaMode::Pass,
        }
    }

    fn on_failure(&mut self, pin: Option<&Pin>, _: &Message, f: &Failure<'_>) -> FailureAction {
        let pinned = pin.and_then(|p| p.0.downcast_ref::<u32>()) == Some(&7);
        assert!(pinned, "on_failure gets the pin route returned");
        assert_eq!(f.remaining, 0);
        let expected = if self.failures.is_empty() {
            (486, "sip:bob@127.0.0.1:5080")
        } else {
            (503, "sip:carol@127.0.0.1:5090")
        };
        assert_eq!((f.status, f.target), expected);
        self.failures
            .push((f.status, f.target.to_string(), f.remaining, pinned));
        if self.failures.len() == 1 {
            FailureAction::Retarget(vec![Target::new("sip:carol@127.0.0.1:5090")])
        } else {
            self.on_second.clone()
        }
    }
}

#[test]
fn routers_edit_the_request_and_decide_failover_with_their_pin() {
    let router = Deciding {
        failures: Vec::new(),
        on_second: FailureAction::Reply {
            status: 480,
            reason: "Agent Busy".into(),
            headers: vec!["Retry-After: 30".into()],
        },
    };
    let mut sim = Sim::with(|_| {}, Box::new(router));
    sim.udp(ALICE, &invite("sip:agent@127.0.0.1:5060", "z9hG4bK-r1"));
    let to_bob = sim.sent_to(BOB);
    let text = String::from_utf8_lossy(to_bob.as_bytes()).into_owned();
    assert!(
        text.contains("\r\nX-Agent: a7\r\n"),
        "the edited request goes out: {text}"
    );
    assert!(
        !text.contains("Record-Route"),
        "the router turned Record-Route off"
    );
    sim.udp(BOB, &answer(&to_bob, 486, "Busy Here", "tb", ""));
    let to_carol = sim.sent_to(CAROL);
    assert!(String::from_utf8_lossy(to_carol.as_bytes()).contains("X-Agent: a7"));
    sim.udp(
        CAROL,
        &answer(&to_carol, 503, "Service Unavailable", "tc", ""),
    );
    let up = sim.sent_to(ALICE);
    assert_eq!(up.status(), Some(480));
    assert_eq!(up.reason(), b"Agent Busy");
    assert!(String::from_utf8_lossy(up.as_bytes()).contains("\r\nRetry-After: 30\r\n"));
    // The response echoes the caller's own request, not the edited one.
    assert!(!String::from_utf8_lossy(up.as_bytes()).contains("X-Agent"));
    sim.assert_idle();
}

#[test]
fn requests_from_sources_outside_accept_from_get_403() {
    let mut sim = Sim::with(
        |cfg| cfg.accept_from = Some(vec!["127.0.0.1/32".parse().unwrap()]),
        Box::new(FallbackRouter(Fallback::RequestUri)),
    );
    sim.udp(
        "127.0.0.2:5070",
        &invite("sip:bob@127.0.0.1:5080", "z9hG4bK-acl1"),
    );
    let refused = sim.one("127.0.0.2:5070");
    assert_eq!(refused.status(), Some(403));
    assert_eq!(refused.reason(), b"Source Not Allowed");
    assert_eq!(sim.proxy.stats().refused_sources, 1);
    // An IPv4-mapped IPv6 source is the IPv4 address.
    sim.udp(
        "[::ffff:127.0.0.1]:5070",
        &invite("sip:bob@127.0.0.1:5080", "z9hG4bK-acl2"),
    );
    assert!(sim.out().iter().any(|o| o.0 == addr(BOB)));
    // Responses are not filtered: they come from hops the proxy chose.
    let fwd = invite_to_bob(&mut sim, "z9hG4bK-acl3");
    sim.udp(BOB, &answer(&fwd, 486, "Busy Here", "tb", ""));
    assert_eq!(sim.sent_to(ALICE).status(), Some(486));
    assert_eq!(sim.proxy.stats().refused_sources, 1);
}

fn in_dialog_request(
    method: &str,
    ruri: &str,
    from: (&str, &str),
    to: (&str, &str),
    branch: &str,
    call_id: &str,
    seq: u32,
) -> String {
    let via = if from.0 == "alice" { ALICE } else { BOB };
    format!(
        "{method} {ruri} SIP/2.0
Via: SIP/2.0/UDP {via};branch={branch};rport
Route: <sip:127.0.0.1:5060;lr>
Max-Forwards: 70
From: <sip:{}@x.example>;tag={}
To: <sip:{}@x.example>;tag={}
Call-ID: {call_id}
CSeq: {seq} {method}
Content-Length: 0

",
        from.0, from.1, to.0, to.1
    )
}

fn cseq_of(m: &Message) -> u32 {
    m.cseq().unwrap().unwrap().seq
}

fn trunk_sim() -> Sim {
    let target = Target {
        uri: "sip:+14155550100@127.0.0.1:5080".into(),
        timeout: None,
        credential: Some("trunk".into()),
    };
    Sim::with(
        |cfg| {
            cfg.credentials.insert(
                "trunk".into(),
                ClientCredential {
                    username: "AC123".into(),
                    password: "s3cret".into(),
                },
            );
        },
        Box::new(Fixed(vec![target])),
    )
}

#[test]
fn s22_3_a_next_hop_challenge_is_answered_and_cseq_stays_consistent() {
    use crate::digest::{ha1, Algorithm, Credentials, Server};
    let mut sim = trunk_sim();
    let mut carrier = Server::new(
        "sip.carrier.example",
        [3; 32],
        sim.clock.now(),
        Duration::from_secs(300),
    );
    sim.udp(
        ALICE,
        &invite("sip:+14155550100@127.0.0.1:5060", "z9hG4bK-t1"),
    );
    let first = sim.sent_to(BOB);
    assert_eq!(cseq_of(&first), 1);
    assert!(header(&first, "Proxy-Authorization").is_empty());
    let challenge = carrier.challenge(sim.clock.now(), 7, Algorithm::Md5, false);
    let extra = format!("Proxy-Authenticate: {}\r\n", challenge.to_value());
    sim.udp(
        BOB,
        &answer(&first, 407, "Proxy Authentication Required", "t407", &extra),
    );
    // The 407 is acknowledged hop by hop and the INVITE goes again, answered,
    // as a new transaction: new branch, CSeq + 1. Alice hears nothing of it.
    let out = sim.out();
    assert!(out.iter().all(|o| o.0 == addr(BOB)), "{out:?}");
    assert!(out
        .iter()
        .any(|o| o.2.method() == Some(Method::Ack) && cseq_of(&o.2) == 1));
    let retry = out
        .iter()
        .find(|o| o.2.method() == Some(Method::Invite))
        .map(|o| o.2.clone())
        .expect("the INVITE again");
    assert_ne!(branch_of(&retry), branch_of(&first));
    assert_eq!(cseq_of(&retry), 2);
    assert_eq!(retry.body(), first.body());
    // Early in-dialog requests (PRACK, UPDATE) are shifted already.
    assert_eq!(sim.proxy.stats().shifted_dialogs, 1);
    let auth = header(&retry, "Proxy-Authorization");
    assert_eq!(auth.len(), 1);
    let creds = Credentials::parse(auth[0].as_bytes()).unwrap();
    assert_eq!(creds.username, "AC123");
    assert_eq!(creds.uri, "sip:+14155550100@127.0.0.1:5080");
    let h = ha1(Algorithm::Md5, "AC123", "sip.carrier.example", "s3cret");
    assert_eq!(
        carrier.verify(sim.clock.now(), &creds, b"INVITE", Some(&h)),
        Ok(())
    );
    assert_eq!(sim.proxy.stats().challenges_answered, 1);

    // Responses go up with Alice's number.
    sim.udp(BOB, &answer(&retry, 180, "Ringing", "tb", ""));
    let ringing = sim.one(ALICE);
    assert_eq!((ringing.status(), cseq_of(&ringing)), (Some(180), 1));
    let ok = answer(
        &retry,
        200,
        "OK",
        "tb",
        "Contact: <sip:bob@127.0.0.1:5080>\r\n",
    );
    sim.udp(BOB, &ok);
    let up = sim.one(ALICE);
    assert_eq!((up.status(), cseq_of(&up)), (Some(200), 1));
    assert_eq!(header(&up, "CSeq"), ["1 INVITE"]);
    // So does a retransmitted 2xx, which no transaction holds any more.
    sim.udp(BOB, &ok);
    assert_eq!(cseq_of(&sim.one(ALICE)), 1);
    assert_eq!(sim.proxy.stats().shifted_dialogs, 1);

    let call = "call-z9hG4bK-t1";
    let alice = ("alice", "fa");
    let bob = ("bob", "tb");
    // Alice's ACK and later requests go down shifted…
    sim.udp(
        ALICE,
        &in_dialog_request(
            "ACK",
            "sip:bob@127.0.0.1:5080",
            alice,
            bob,
            "z9hG4bK-t1a",
            call,
            1,
        ),
    );
    let ack = sim.one(BOB);
    assert_eq!((ack.method(), cseq_of(&ack)), (Some(Method::Ack), 2));
    // …Bob's requests are his own numbering and pass untouched.
    sim.udp(
        BOB,
        &in_dialog_request(
            "INFO",
            "sip:alice@127.0.0.1:5070",
            bob,
            alice,
            "z9hG4bK-t1i",
            call,
            7,
        ),
    );
    let info = sim.one(ALICE);
    assert_eq!(cseq_of(&info), 7);
    sim.udp(ALICE, &answer(&info, 200, "OK", "fa", ""));
    assert_eq!(cseq_of(&sim.one(BOB)), 7);
    sim.udp(
        ALICE,
        &in_dialog_request(
            "BYE",
            "sip:bob@127.0.0.1:5080",
            alice,
            bob,
            "z9hG4bK-t1b",
            call,
            2,
        ),
    );
    let bye = sim.one(BOB);
    assert_eq!(cseq_of(&bye), 3);
    sim.udp(BOB, &answer(&bye, 200, "OK", "tb", ""));
    let bye_ok = sim.one(ALICE);
    assert_eq!((bye_ok.status(), cseq_of(&bye_ok)), (Some(200), 2));
    // The BYE ended the dialog's shift.
    assert_eq!(sim.proxy.stats().shifted_dialogs, 0);
    sim.assert_idle();
}

#[test]
fn s22_3_a_challenge_is_answered_once_and_only_with_a_known_credential() {
    use crate::digest::{Algorithm, Server};
    let carrier = Server::new(
        "c",
        [3; 32],
        weir_sim::Clock::new().now(),
        Duration::from_secs(300),
    );
    let www = format!(
        "WWW-Authenticate: {}\r\n",
        carrier
            .challenge(weir_sim::Clock::new().now(), 1, Algorithm::Sha256, false)
            .to_value()
    );
    // Wrong password: the second challenge goes up to the caller, with its CSeq.
    let mut sim = trunk_sim();
    sim.udp(ALICE, &invite("sip:x@127.0.0.1:5060", "z9hG4bK-t2"));
    let first = sim.sent_to(BOB);
    sim.udp(BOB, &answer(&first, 401, "Unauthorized", "t1", &www));
    let retry = sim
        .out()
        .into_iter()
        .find(|o| o.0 == addr(BOB) && o.2.method() == Some(Method::Invite))
        .expect("the INVITE again")
        .2;
    let auth = header(&retry, "Authorization");
    assert!(auth[0].contains("algorithm=SHA-256"), "{auth:?}");
    sim.udp(BOB, &answer(&retry, 401, "Unauthorized", "t2", &www));
    let up = sim.sent_to(ALICE);
    assert_eq!((up.status(), cseq_of(&up)), (Some(401), 1));
    assert_eq!(sim.proxy.stats().challenges_answered, 1);
    // The call failed: no shift is left for its dialog.
    assert_eq!(sim.proxy.stats().shifted_dialogs, 0);
    sim.assert_idle();

    // A target without a credential, or naming one that is not configured:
    // the challenge is the caller's to answer.
    for credential in [None, Some("other".to_string())] {
        let target = Target {
            uri: "sip:x@127.0.0.1:5080".into(),
            timeout: None,
            credential,
        };
        let mut sim = Sim::with(|_| {}, Box::new(Fixed(vec![target])));
        sim.udp(ALICE, &invite("sip:x@127.0.0.1:5060", "z9hG4bK-t3"));
        let first = sim.sent_to(BOB);
        sim.udp(BOB, &answer(&first, 401, "Unauthorized", "t1", &www));
        let up = sim.sent_to(ALICE);
        assert_eq!(up.status(), Some(401));
        assert_eq!(sim.proxy.stats().challenges_answered, 0);
        sim.assert_idle();
    }
}

/// Challenges every initial request in `weir.test` until it is authenticated,
/// then forwards to Bob; records the identities it was asked with.
struct Gate {
    seen: Arc<std::sync::Mutex<Vec<Option<String>>>>,
    refuse: Option<&'static str>,
}

impl Router for Gate {
    fn route(&mut self, request: &Arc<Message>, _: &Flow, identity: Option<&str>) -> Routed {
        self.seen.lock().unwrap().push(identity.map(str::to_string));
        // Credentials this proxy checked are gone before the router sees them again.
        if identity.is_some() {
            assert_eq!(request.fields_named("Proxy-Authorization").count(), 0);
        }
        match identity {
            Some(user) if Some(user) != self.refuse => {
                Decision::Forward(vec![Target::new("sip:bob@127.0.0.1:5080")]).into()
            }
            _ => Decision::Challenge {
                realm: "weir.test".into(),
            }
            .into(),
        }
    }
}

fn gate_sim(refuse: Option<&'static str>) -> (Sim, Arc<std::sync::Mutex<Vec<Option<String>>>>) {
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let sim = Sim::with(
        |cfg| {
            cfg.digest.secret = [9; 32];
            cfg.digest.algorithms = vec![
                crate::digest::Algorithm::Sha256,
                crate::digest::Algorithm::Md5,
            ];
            cfg.digest.ban_after = 3;
            for user in ["alice", "mallory"] {
                cfg.digest.users.insert(
                    ("weir.test".into(), user.into()),
                    StoredUser::from_password("weir.test", user, "secret"),
                );
            }
        },
        Box::new(Gate {
            seen: seen.clone(),
            refuse,
        }),
    );
    (sim, seen)
}

fn with_header(msg: &str, line: &str) -> String {
    msg.replacen("Content-Type:", &format!("{line}\r\nContent-Type:"), 1)
}

fn proxy_challenge(resp: &Message) -> crate::digest::Challenge {
    let f = resp.fields_named("Proxy-Authenticate").next().unwrap();
    crate::digest::Challenge::parse(resp.value(f)).unwrap()
}

#[test]
fn s22_1_a_challenge_decision_is_answered_with_407_then_routed_with_the_identity() {
    let (mut sim, seen) = gate_sim(None);
    let ruri = "sip:bob@127.0.0.1:5080";
    sim.udp(ALICE, &invite(ruri, "z9hG4bK-auth1"));
    let out = sim.out();
    let statuses: Vec<_> = out.iter().map(|o| o.2.status()).collect();
    assert_eq!(statuses, [Some(100), Some(407)]);
    let c = proxy_challenge(&out[1].2);
    assert_eq!(c.algorithm, crate::digest::Algorithm::Sha256);
    assert!(c.qop_auth);
    assert_eq!(out[1].2.fields_named("Proxy-Authenticate").count(), 2);
    assert_eq!(sim.proxy.stats().challenges_sent, 1);
    // The ACK for the 407 is the transaction's.
    sim.udp(
        ALICE,
        &format!(
            "ACK {ruri} SIP/2.0\nVia: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK-auth1;rport\nMax-Forwards: 70\nFrom: <sip:alice@a.example>;tag=fa\nTo: <sip:bob@b.example>;tag={}\nCall-ID: call-z9hG4bK-auth1\nCSeq: 1 ACK\nContent-Length: 0\n\n",
            String::from_utf8_lossy(
                out[1].2.to().unwrap().unwrap().tag().unwrap_or_default()
            )
        ),
    );
    assert!(sim.out().is_empty());
    // The answer: verified, consumed, forwarded.
    let creds = c.answer("alice", "secret", b"INVITE", ruri, "c0ffee", 1);
    let retry = with_header(
        &invite(ruri, "z9hG4bK-auth2").replace("CSeq: 1", "CSeq: 2"),
        &format!("Proxy-Authorization: {}", creds.to_value()),
    );
    sim.udp(ALICE, &retry);
    let fwd = sim.sent_to(BOB);
    assert_eq!(fwd.method(), Some(Method::Invite));
    assert_eq!(fwd.fields_named("Proxy-Authorization").count(), 0);
    assert_eq!(header(&fwd, "X-Unknown"), ["kept   as is"]);
    assert_eq!(
        *seen.lock().unwrap(),
        [None, None, Some("alice".to_string())]
    );
    let s = sim.proxy.stats();
    assert_eq!((s.callers_verified, s.caller_auth_failures), (1, 0));
    sim.udp(BOB, &answer(&fwd, 486, "Busy Here", "tb", ""));
    assert_eq!(sim.sent_to(ALICE).status(), Some(486));
}

#[test]
fn s22_1_wrong_answers_are_rechallenged_then_the_source_is_banned() {
    let (mut sim, _) = gate_sim(None);
    let ruri = "sip:bob@127.0.0.1:5080";
    sim.udp(ALICE, &invite(ruri, "z9hG4bK-ban0"));
    let c = proxy_challenge(&sim.out()[1].2);
    let mut statuses = Vec::new();
    for i in 1..=3u32 {
        let creds = c.answer("alice", &format!("guess{i}"), b"INVITE", ruri, "c0ffee", i);
        sim.udp(
            ALICE,
            &with_header(
                &invite(ruri, &format!("z9hG4bK-ban{i}")),
                &format!("Proxy-Authorization: {}", creds.to_value()),
            ),
        );
        statuses.push(sim.last_to(ALICE).status());
    }
    assert_eq!(statuses, [Some(407), Some(407), Some(403)]);
    let Some(Event::SourceBanned { ip, failures, for_ }) = sim.proxy.poll_event() else {
        panic!("the ban is an event");
    };
    assert_eq!(
        (ip, failures, for_),
        (addr(ALICE).ip(), 3, Duration::from_secs(900))
    );
    // Banned: even the right password is not looked at now, nor are other requests.
    let creds = c.answer("alice", "secret", b"INVITE", ruri, "c0ffee", 9);
    sim.udp(
        ALICE,
        &with_header(
            &invite(ruri, "z9hG4bK-ban9"),
            &format!("Proxy-Authorization: {}", creds.to_value()),
        ),
    );
    assert!(sim.out().is_empty(), "a banned source is not answered");
    let s = sim.proxy.stats();
    assert_eq!((s.caller_auth_failures, s.refused_banned), (3, 1));
    // Another source is not affected.
    sim.udp("127.0.0.9:5070", &invite(ruri, "z9hG4bK-ban10"));
    assert_eq!(sim.last_to("127.0.0.9:5070").status(), Some(407));
    sim.advance(Duration::from_secs(901));
    sim.udp(ALICE, &invite(ruri, "z9hG4bK-ban11"));
    assert_eq!(sim.last_to(ALICE).status(), Some(407));
}

#[test]
fn s22_1_an_identity_the_router_still_challenges_gets_403_and_bad_credentials_400() {
    let (mut sim, _) = gate_sim(Some("mallory"));
    let ruri = "sip:bob@127.0.0.1:5080";
    sim.udp(ALICE, &invite(ruri, "z9hG4bK-id0"));
    let c = proxy_challenge(&sim.out()[1].2);
    let creds = c.answer("mallory", "secret", b"INVITE", ruri, "c0ffee", 1);
    sim.udp(
        ALICE,
        &with_header(
            &invite(ruri, "z9hG4bK-id1"),
            &format!("Proxy-Authorization: {}", creds.to_value()),
        ),
    );
    let r = sim.last_to(ALICE);
    assert_eq!((r.status(), r.reason()), (Some(403), &b"Forbidden"[..]));
    sim.udp(
        ALICE,
        &with_header(
            &invite(ruri, "z9hG4bK-id2"),
            "Proxy-Authorization: Digest realm=\"weir.test\", nonce=",
        ),
    );
    let r = sim.last_to(ALICE);
    assert_eq!(r.status(), Some(400));
    assert!(String::from_utf8_lossy(r.reason()).contains("malformed Proxy-Authorization"));
}

/// Rewrites the From of every initial request to a verified number, as
/// carrier-trunk does for outbound calls.
struct CallerId;

const REWRITTEN_FROM: &str = "\"Acme\" <sip:+14155550199@x.example>;tag=fa";

impl Router for CallerId {
    fn route(&mut self, request: &Arc<Message>, _: &Flow, _: Option<&str>) -> Routed {
        let text = String::from_utf8_lossy(request.as_bytes()).replace(
            "From: <sip:alice@a.example>;tag=fa",
            &format!("From: {REWRITTEN_FROM}"),
        );
        Routed {
            edited: Some(Message::parse(Bytes::from(text), Framing::Datagram).unwrap()),
            ..Decision::Forward(vec![Target::new("sip:bob@127.0.0.1:5080")]).into()
        }
    }
}

fn from_of(m: &Message) -> String {
    header(m, "From").concat()
}

fn to_of(m: &Message) -> String {
    header(m, "To").concat()
}

#[test]
fn a_caller_id_rewrite_holds_for_the_whole_dialog_both_ways() {
    let mut sim = Sim::with(|_| {}, Box::new(CallerId));
    let call_id = "call-z9hG4bK-cid1";
    sim.udp(ALICE, &invite("sip:bob@127.0.0.1:5060", "z9hG4bK-cid1"));
    let fwd = sim.sent_to(BOB);
    assert_eq!(from_of(&fwd), REWRITTEN_FROM);
    // Responses carry the caller's own From back.
    sim.udp(BOB, &answer(&fwd, 180, "Ringing", "tb", ""));
    let ringing = sim.last_to(ALICE);
    assert_eq!(from_of(&ringing), "<sip:alice@a.example>;tag=fa");
    sim.udp(
        BOB,
        &answer(
            &fwd,
            200,
            "OK",
            "tb",
            "Contact: <sip:bob@127.0.0.1:5080>\r\n",
        ),
    );
    let ok = sim.last_to(ALICE);
    assert_eq!(from_of(&ok), "<sip:alice@a.example>;tag=fa");
    assert_eq!(sim.proxy.stats().rewritten_dialogs, 1);
    // A 2xx retransmission no transaction knows any more: the same.
    sim.advance(Duration::from_secs(1));
    sim.udp(BOB, &answer(&fwd, 200, "OK", "tb", ""));
    assert_eq!(from_of(&sim.last_to(ALICE)), "<sip:alice@a.example>;tag=fa");
    // The caller's requests go down with the callee's view of the caller…
    let from_alice = |method: &str, branch: &str, seq: u32| {
        in_dialog_request(
            method,
            "sip:bob@127.0.0.1:5080",
            ("alice", "fa"),
            ("bob", "tb"),
            branch,
            call_id,
            seq,
        )
        .replace(
            "From: <sip:alice@x.example>;tag=fa",
            "From: <sip:alice@a.example>;tag=fa",
        )
    };
    sim.udp(ALICE, &from_alice("ACK", "z9hG4bK-cid2", 1));
    assert_eq!(from_of(&sim.sent_to(BOB)), REWRITTEN_FROM);
    // …the callee's come up with the caller's own, and their responses back down.
    let info = in_dialog_request(
        "INFO",
        "sip:alice@127.0.0.1:5070",
        ("bob", "tb"),
        ("alice", "fa"),
        "z9hG4bK-cid3",
        call_id,
        7,
    )
    .replace(
        "To: <sip:alice@x.example>;tag=fa",
        &format!("To: {}", REWRITTEN_FROM.replace("\"Acme\" ", "")),
    );
    sim.udp(BOB, &info);
    let up = sim.sent_to(ALICE);
    assert_eq!(to_of(&up), "<sip:alice@a.example>;tag=fa");
    sim.udp(ALICE, &answer(&up, 200, "OK", "fa", ""));
    let down = sim.last_to(BOB);
    assert_eq!(to_of(&down), "<sip:+14155550199@x.example>;tag=fa");
    // BYE from the caller: rewritten, its 200 restored, and the dialog forgotten.
    sim.udp(ALICE, &from_alice("BYE", "z9hG4bK-cid4", 2));
    let bye = sim.sent_to(BOB);
    assert_eq!(from_of(&bye), REWRITTEN_FROM);
    sim.udp(BOB, &answer(&bye, 200, "OK", "tb", ""));
    assert_eq!(from_of(&sim.last_to(ALICE)), "<sip:alice@a.example>;tag=fa");
    assert_eq!(sim.proxy.stats().rewritten_dialogs, 0);
}

#[test]
fn a_failed_call_leaves_no_rewritten_dialog_behind() {
    let mut sim = Sim::with(|_| {}, Box::new(CallerId));
    sim.udp(ALICE, &invite("sip:bob@127.0.0.1:5060", "z9hG4bK-cid9"));
    let fwd = sim.sent_to(BOB);
    assert_eq!(sim.proxy.stats().rewritten_dialogs, 1);
    sim.udp(BOB, &answer(&fwd, 486, "Busy Here", "tb", ""));
    let busy = sim.last_to(ALICE);
    assert_eq!(busy.status(), Some(486));
    assert_eq!(from_of(&busy), "<sip:alice@a.example>;tag=fa");
    assert_eq!(sim.proxy.stats().rewritten_dialogs, 0);
    sim.assert_idle();
}

#[test]
fn s10_2_upstream_registration_is_answered_refreshed_and_retried() {
    const REGISTRAR: &str = "127.0.0.1:5099";
    let mut sim = Sim::with(
        |cfg| {
            cfg.credentials.insert(
                "carrier".into(),
                ClientCredential {
                    username: "weir".into(),
                    password: "pw".into(),
                },
            );
            cfg.registrations.push(RegistrationConfig {
                name: "carrier".into(),
                registrar: format!("sip:{REGISTRAR}"),
                aor: "sip:+14155550100@carrier.example".into(),
                contact: None,
                credential: cfg.credentials.get("carrier").cloned(),
                expires: Duration::from_secs(600),
            });
        },
        Box::new(FallbackRouter(Fallback::RequestUri)),
    );
    assert!(sim.out().is_empty(), "nothing before start");
    sim.proxy.start_registrations(sim.clock.now());
    sim.advance(Duration::ZERO);
    let first = sim.one(REGISTRAR);
    assert_eq!(first.method(), Some(Method::Register));
    // Our Via and Max-Forwards, our Contact at the UDP listener.
    assert!(branch_of(&first).starts_with("z9hG4bKw"), "{first:?}");
    assert_eq!(header(&first, "Max-Forwards"), ["70"]);
    assert_eq!(
        header(&first, "Contact"),
        ["<sip:+14155550100@127.0.0.1:5060>"]
    );
    // Retransmitted over UDP like any non-INVITE (Timer E).
    sim.advance(Duration::from_millis(500));
    assert_eq!(branch_of(&sim.one(REGISTRAR)), branch_of(&first));

    sim.udp(
        REGISTRAR,
        &answer(
            &first,
            401,
            "Unauthorized",
            "r1",
            "WWW-Authenticate: Digest realm=\"carrier.example\", nonce=\"n1\", qop=\"auth\"\r\n",
        ),
    );
    let second = sim.one(REGISTRAR);
    assert_ne!(branch_of(&second), branch_of(&first), "a new transaction");
    assert_eq!(header(&second, "CSeq"), ["2 REGISTER"]);
    assert!(header(&second, "Authorization")[0].contains("username=\"weir\""));
    sim.udp(
        REGISTRAR,
        &answer(&second, 200, "OK", "r2", "Expires: 120\r\n"),
    );
    assert!(sim.out().is_empty());
    let Some(Event::Registration {
        name,
        registered: true,
        detail,
    }) = sim.proxy.poll_event()
    else {
        panic!("no news of the registration");
    };
    assert_eq!(
        (name.as_str(), detail.as_str()),
        ("carrier", "200 OK, for 120 s")
    );
    let st = &sim.proxy.registrations(sim.clock.now())[0];
    assert_eq!((st.state, st.expires_in), ("registered", Some(120)));

    // Refreshed 12 s before the 120 s run out.
    sim.advance(Duration::from_secs(107));
    assert!(sim.out().is_empty());
    sim.advance(Duration::from_secs(1));
    let refresh = sim.one(REGISTRAR);
    assert_eq!(header(&refresh, "CSeq"), ["3 REGISTER"]);
    assert_eq!(header(&refresh, "Call-ID"), header(&first, "Call-ID"));
    // The binding holds while its refresh is under way.
    assert_eq!(
        sim.proxy.registrations(sim.clock.now())[0].state,
        "registered"
    );
    // No answer at all: Timer F (64·T1) ends it; retried 30 s later.
    sim.advance(Duration::from_secs(32));
    sim.out();
    let Some(Event::Registration {
        registered: false,
        detail,
        ..
    }) = sim.proxy.poll_event()
    else {
        panic!("no news of the failure");
    };
    assert_eq!(detail, "no answer (timeout)");
    // By then (140 s) the 120 s binding has run out.
    let st = &sim.proxy.registrations(sim.clock.now())[0];
    assert_eq!((st.state, st.failures), ("failed", 1));
    sim.advance(Duration::from_secs(29));
    assert!(sim.out().is_empty());
    sim.advance(Duration::from_secs(1));
    assert_eq!(header(&sim.one(REGISTRAR), "CSeq"), ["4 REGISTER"]);
}

mod media;
