//! Relayed media through the core: SDP both ways, the dialog's end, the
//! relay's refusals, the BYEs of a media timeout (a sans-IO relay from
//! `weir-media` stands in for the host's sockets).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use weir_media::ports::PortPool;
use weir_media::relay::{Session, Side};
use weir_media::sdp;

use super::*;

const RELAY: &str = "203.0.113.7";

#[derive(Default)]
struct State {
    pool: Option<PortPool>,
    sessions: HashMap<u64, Session>,
    released: Vec<u64>,
}

/// The media core's sessions without sockets, shared with the test.
#[derive(Clone)]
struct TestRelay(Arc<Mutex<State>>);

impl TestRelay {
    fn new(first: u16, last: u16) -> TestRelay {
        TestRelay(Arc::new(Mutex::new(State {
            pool: Some(PortPool::new(first, last).unwrap()),
            ..State::default()
        })))
    }

    fn in_use(&self) -> usize {
        self.0.lock().unwrap().pool.as_ref().unwrap().in_use()
    }
}

impl MediaRelay for TestRelay {
    fn describe(&mut self, call: &MediaCall<'_>, sdp: &[u8]) -> Result<Vec<u8>, MediaRefusal> {
        let mut st = self.0.lock().unwrap();
        let State { pool, sessions, .. } = &mut *st;
        let session = sessions
            .entry(call.id)
            .or_insert_with(|| Session::new(RELAY.parse().unwrap()));
        let side = match call.from {
            Party::Caller => Side::A,
            Party::Callee => Side::B,
        };
        session
            .describe(
                pool.as_mut().unwrap(),
                side,
                sdp,
                call.signalled_from,
                call.repeat,
            )
            .map_err(|e| {
                let (status, reason) = e.sip_status();
                MediaRefusal { status, reason }
            })
    }

    fn release(&mut self, id: u64) {
        let mut st = self.0.lock().unwrap();
        let State {
            pool,
            sessions,
            released,
        } = &mut *st;
        if let Some(mut s) = sessions.remove(&id) {
            s.release(pool.as_mut().unwrap());
        }
        released.push(id);
    }

    fn withdraw(&mut self, id: u64, from: Party) {
        let mut st = self.0.lock().unwrap();
        let State { pool, sessions, .. } = &mut *st;
        let side = match from {
            Party::Caller => Side::A,
            Party::Callee => Side::B,
        };
        if let Some(s) = sessions.get_mut(&id) {
            s.withdraw(pool.as_mut().unwrap(), side);
        }
    }
}

/// Forwards every initial request to Bob with `mode`.
struct MediaRouter(MediaMode);

impl Router for MediaRouter {
    fn route(&mut self, _: &Arc<Message>, _: &Flow, _: Option<&str>) -> Routed {
        Routed {
            media: self.0,
            ..Decision::Forward(vec![Target::new("sip:bob@127.0.0.1:5080")]).into()
        }
    }
}

fn sdp_at(ip: &str, port: u16) -> String {
    format!(
        "v=0\r\no=- 1 1 IN IP4 {ip}\r\ns=-\r\nc=IN IP4 {ip}\r\nt=0 0\r\n\
m=audio {port} RTP/AVP 0 101\r\na=rtpmap:101 telephone-event/8000\r\na=sendrecv\r\n"
    )
}

/// `msg` (ending in an empty line) with `body` as application/sdp.
fn with_body(msg: &str, body: &str) -> String {
    let head = msg.trim_end_matches("Content-Length: 0\r\n\r\n");
    format!(
        "{head}Content-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
}

fn invite_with(branch: &str, body: &str) -> String {
    let head = format!(
        "INVITE sip:bob@127.0.0.1:5080 SIP/2.0\r
Via: SIP/2.0/UDP 127.0.0.1:5070;branch={branch};rport\r
Max-Forwards: 70\r
From: <sip:alice@a.example>;tag=fa\r
To: <sip:bob@b.example>\r
Call-ID: media-{branch}\r
CSeq: 1 INVITE\r
Contact: <sip:alice@127.0.0.1:5070>\r
Content-Length: 0\r
\r
"
    );
    with_body(&head, body)
}

fn relayed_sim(mode: MediaMode, relay: &TestRelay, edit: impl FnOnce(&mut ProxyConfig)) -> Sim {
    let mut sim = Sim::with(edit, Box::new(MediaRouter(mode)));
    sim.proxy.set_media(Box::new(relay.clone()));
    sim
}

fn media_of(m: &Message) -> sdp::MediaLine {
    sdp::inspect(m.body()).unwrap().media[0].clone()
}

/// What `out` sends to `party`, in order.
fn sent_to<'a>(out: &'a [(SocketAddr, Transport, Message)], party: &str) -> Vec<&'a Message> {
    out.iter()
        .filter(|o| o.0 == addr(party))
        .map(|o| &o.2)
        .collect()
}

/// Alice's INVITE (SDP at 198.51.100.1:4000) in call `media-{branch}`, as
/// it reaches Bob.
fn alice_calls_bob(sim: &mut Sim, branch: &str) -> Message {
    sim.udp(ALICE, &invite_with(branch, &sdp_at("198.51.100.1", 4000)));
    sim.sent_to(BOB)
}

/// Bob's 200 to the INVITE `fwd`, with `sdp` (none if empty).
fn ok_from_bob(fwd: &Message, sdp: &str) -> String {
    let ok = answer(
        fwd,
        200,
        "OK",
        "tb",
        "Contact: <sip:bob@127.0.0.1:5080>\r\n",
    );
    if sdp.is_empty() {
        ok
    } else {
        with_body(&ok, sdp)
    }
}

/// Alice's ACK of the 2xx in call `media-{branch}`.
fn ack_from_alice(branch: &str) -> String {
    format!(
        "ACK sip:bob@127.0.0.1:5080 SIP/2.0\r
Via: SIP/2.0/UDP 127.0.0.1:5070;branch={branch}a;rport\r
Route: <sip:127.0.0.1:5060;lr>\r
Max-Forwards: 70\r
From: <sip:alice@a.example>;tag=fa\r
To: <sip:bob@b.example>;tag=tb\r
Call-ID: media-{branch}\r
CSeq: 1 ACK\r
Content-Length: 0\r
\r
"
    )
}

#[test]
fn a_relayed_call_sees_the_relay_both_ways_and_its_bye_gives_the_ports_back() {
    let relay = TestRelay::new(30000, 30099);
    let mut sim = relayed_sim(MediaMode::Relay, &relay, |_| {});
    sim.udp(ALICE, &invite_with("z9hG4bK-m1", &sdp_at("10.0.0.5", 4000)));
    let fwd = sim.sent_to(BOB);
    let to_bob = media_of(&fwd);
    assert_eq!(to_bob.address.to_string(), RELAY);
    assert_eq!(to_bob.telephone_event, Some(101), "codecs pass untouched");
    assert_eq!(
        header(&fwd, "Record-Route").len(),
        1,
        "a relayed dialog is record-routed"
    );
    assert_eq!(relay.in_use(), 2);

    let ok = ok_from_bob(&fwd, &sdp_at("198.51.100.2", 5000));
    sim.udp(BOB, &ok);
    let to_alice = media_of(&sim.one(ALICE));
    assert_eq!(to_alice.address.to_string(), RELAY);
    assert_ne!(
        to_alice.port, to_bob.port,
        "each party has its own relay port"
    );
    // The 2xx resent at once (Bob missed the ACK), while the INVITE's client
    // transaction still takes it but its context is gone: the same SDP,
    // never Bob's own.
    sim.udp(BOB, &ok);
    assert_eq!(media_of(&sim.one(ALICE)), to_alice);
    // …and after its transaction ended: rewritten the same.
    sim.advance(Duration::from_secs(40));
    sim.out();
    sim.udp(BOB, &ok);
    assert_eq!(media_of(&sim.one(ALICE)), to_alice);

    // Bob moves (re-INVITE): Alice is offered the same relay port.
    let reinvite = with_body(
        "INVITE sip:alice@127.0.0.1:5070 SIP/2.0\r
Via: SIP/2.0/UDP 127.0.0.1:5080;branch=z9hG4bK-m1r;rport\r
Route: <sip:127.0.0.1:5060;lr>\r
Max-Forwards: 70\r
From: <sip:bob@b.example>;tag=tb\r
To: <sip:alice@a.example>;tag=fa\r
Call-ID: media-z9hG4bK-m1\r
CSeq: 7 INVITE\r
Content-Length: 0\r
\r
",
        &sdp_at("198.51.100.9", 6000),
    );
    sim.udp(BOB, &reinvite);
    let re = sim.sent_to(ALICE);
    assert_eq!(media_of(&re).port, to_alice.port);
    assert_eq!(relay.in_use(), 2, "no new ports for the same stream");

    sim.udp(
        ALICE,
        "BYE sip:bob@127.0.0.1:5080 SIP/2.0\r
Via: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK-m1b;rport\r
Route: <sip:127.0.0.1:5060;lr>\r
Max-Forwards: 70\r
From: <sip:alice@a.example>;tag=fa\r
To: <sip:bob@b.example>;tag=tb\r
Call-ID: media-z9hG4bK-m1\r
CSeq: 2 BYE\r
Content-Length: 0\r
\r
",
    );
    assert_eq!(sim.sent_to(BOB).method(), Some(Method::Bye));
    assert_eq!(relay.in_use(), 0);
    assert_eq!(sim.proxy.stats().relayed_dialogs, 0);
}

#[test]
fn a_failed_or_refused_relayed_invite_holds_nothing() {
    let relay = TestRelay::new(30000, 30003);
    let mut sim = relayed_sim(MediaMode::Relay, &relay, |_| {});
    let fwd = alice_calls_bob(&mut sim, "z9hG4bK-m2");
    assert_eq!(relay.in_use(), 2);
    sim.udp(BOB, &answer(&fwd, 486, "Busy Here", "tb", ""));
    assert_eq!(sim.last_to(ALICE).status(), Some(486));
    assert_eq!(relay.in_use(), 0, "a failed call gives its ports back");

    // SDP the relay cannot read: 488 naming why; nothing forwarded.
    sim.udp(ALICE, &invite_with("z9hG4bK-m3", "v=0\r\nm=audio x\r\n"));
    let refused = sim.last_to(ALICE);
    assert_eq!(refused.status(), Some(488));
    assert!(
        String::from_utf8_lossy(refused.reason()).starts_with("Not Acceptable Here ("),
        "{:?}",
        String::from_utf8_lossy(refused.reason())
    );
    // The range holds one call: the second concurrent one gets 503 at once.
    sim.udp(
        ALICE,
        &invite_with("z9hG4bK-m4", &sdp_at("198.51.100.1", 4000)),
    );
    sim.sent_to(BOB);
    sim.udp(
        ALICE,
        &invite_with("z9hG4bK-m5", &sdp_at("198.51.100.1", 4002)),
    );
    let full = sim.last_to(ALICE);
    assert_eq!(full.status(), Some(503));
    assert_eq!(full.reason(), b"Service Unavailable (no relay ports left)");
    assert_eq!(relay.in_use(), 2);
    assert_eq!(sim.proxy.stats().relayed_dialogs, 1);
}

#[test]
fn a_media_timeout_sends_a_bye_to_each_party_as_if_from_the_other() {
    let relay = TestRelay::new(30000, 30099);
    let mut sim = relayed_sim(MediaMode::Relay, &relay, |_| {});
    let fwd = alice_calls_bob(&mut sim, "z9hG4bK-m6");
    sim.udp(BOB, &ok_from_bob(&fwd, &sdp_at("198.51.100.2", 5000)));
    sim.one(ALICE);
    let now = sim.clock.now();
    sim.proxy.handle_media_timeout(now, 1);
    let out = sim.out();
    let byes: Vec<&Message> = out.iter().map(|o| &o.2).collect();
    assert_eq!(out.len(), 2, "{byes:?}");
    let to_alice = &out.iter().find(|o| o.0 == addr(ALICE)).unwrap().2;
    let to_bob = &out.iter().find(|o| o.0 == addr(BOB)).unwrap().2;
    assert_eq!(to_alice.request_uri_bytes(), b"sip:alice@127.0.0.1:5070");
    assert_eq!(header(to_alice, "From"), ["<sip:bob@b.example>;tag=tb"]);
    assert_eq!(header(to_alice, "To"), ["<sip:alice@a.example>;tag=fa"]);
    assert_eq!(header(to_bob, "From"), ["<sip:alice@a.example>;tag=fa"]);
    assert_eq!(header(to_bob, "To"), ["<sip:bob@b.example>;tag=tb"]);
    assert_eq!(header(to_bob, "CSeq"), ["2 BYE"], "above the INVITE's 1");
    assert_eq!(header(to_bob, "Call-ID"), ["media-z9hG4bK-m6"]);
    assert!(header(to_bob, "Reason")[0].contains("media timeout"));
    assert_eq!(relay.in_use(), 0);
    let events: Vec<Event> = std::iter::from_fn(|| sim.proxy.poll_event()).collect();
    assert!(
        events.contains(&Event::MediaTimeout {
            call_id: "media-z9hG4bK-m6".into(),
            byes: 2
        }),
        "{events:?}"
    );
    // Their 200s are absorbed; nothing is left behind.
    sim.udp(BOB, &answer(to_bob, 200, "OK", "tb", ""));
    sim.udp(ALICE, &answer(to_alice, 200, "OK", "fa", ""));
    assert!(sim.out().is_empty());
    sim.assert_idle();
}

#[test]
fn auto_mode_relays_a_private_offer_and_passes_a_public_one() {
    let relay = TestRelay::new(30000, 30099);
    let mut sim = relayed_sim(MediaMode::Pass, &relay, |c| {
        c.media_policy = MediaPolicy::Auto
    });
    let public = sdp_at("198.51.100.1", 4000);
    sim.udp(ALICE, &invite_with("z9hG4bK-m7", &public));
    assert_eq!(sim.sent_to(BOB).body(), public.as_bytes(), "untouched");
    assert_eq!(relay.in_use(), 0);
    sim.udp(
        ALICE,
        &invite_with("z9hG4bK-m8", &sdp_at("192.168.1.20", 4000)),
    );
    assert_eq!(media_of(&sim.sent_to(BOB)).address.to_string(), RELAY);
    let events: Vec<Event> = std::iter::from_fn(|| sim.proxy.poll_event()).collect();
    assert!(
        events.contains(&Event::MediaAutoRelay {
            call_id: "media-z9hG4bK-m8".into(),
            why: "the offer names private address 192.168.1.20".into()
        }),
        "{events:?}"
    );
}

#[test]
fn srtp_termination_needs_tls_signalling_unless_configured_otherwise() {
    let relay = TestRelay::new(30000, 30099);
    let mut sim = relayed_sim(MediaMode::RelaySrtpCaller, &relay, |_| {});
    // Alice is on UDP: her SDES keys would have crossed the network in clear.
    sim.udp(
        ALICE,
        &invite_with("z9hG4bK-m9", &sdp_at("198.51.100.1", 4000)),
    );
    let refused = sim.last_to(ALICE);
    assert_eq!(refused.status(), Some(488));
    assert_eq!(
        refused.reason(),
        b"Not Acceptable Here (SRTP keys need TLS signalling)"
    );
    assert_eq!(relay.in_use(), 0);
    let mut sim = relayed_sim(MediaMode::RelaySrtpCallee, &relay, |_| {});
    sim.udp(
        ALICE,
        &invite_with("z9hG4bK-m10", &sdp_at("198.51.100.1", 4000)),
    );
    assert_eq!(
        sim.last_to(ALICE).status(),
        Some(500),
        "bob is no TLS target"
    );
    // Allowed: the relay is asked (this test relay terminates nothing).
    let mut sim = relayed_sim(MediaMode::RelaySrtpCaller, &relay, |c| {
        c.media_srtp_over_plain_sip = true;
    });
    sim.udp(
        ALICE,
        &invite_with("z9hG4bK-m11", &sdp_at("198.51.100.1", 4000)),
    );
    assert_eq!(media_of(&sim.sent_to(BOB)).address.to_string(), RELAY);
}

#[test]
fn an_answer_the_relay_refuses_never_goes_on_with_its_sdp_and_ends_the_call() {
    let relay = TestRelay::new(30000, 30099);
    let mut sim = relayed_sim(MediaMode::Relay, &relay, |_| {});
    let fwd = alice_calls_bob(&mut sim, "z9hG4bK-m12");
    // Bob's SDP names his own address, but the relay cannot read it (a
    // port beyond 65535).
    let unreadable = "v=0\r\no=- 1 1 IN IP4 198.51.100.2\r\ns=-\r\nc=IN IP4 198.51.100.2\r\n\
t=0 0\r\nm=audio 70000 RTP/AVP 0\r\n";
    let leaks = |m: &Message| String::from_utf8_lossy(m.as_bytes()).contains("198.51.100.2");

    // In a 183: Alice gets the 183 without SDP; the call goes on.
    sim.udp(
        BOB,
        &with_body(&answer(&fwd, 183, "Session Progress", "tb", ""), unreadable),
    );
    let early = sim.one(ALICE);
    assert_eq!(early.status(), Some(183));
    assert!(early.body().is_empty() && early.header(HeaderName::ContentType).is_none());
    assert!(!leaks(&early), "{early:?}");
    assert_eq!(relay.in_use(), 2);

    // In the 200: Alice gets it without SDP. The call, which could only be
    // "connected, no audio", ends with a BYE to each party once Alice has
    // ACKed (RFC 3261 §15: none to a party before its 2xx is ACKed).
    let ok = ok_from_bob(&fwd, unreadable);
    sim.udp(BOB, &ok);
    let up = sim.one(ALICE);
    assert_eq!(up.status(), Some(200));
    assert!(up.body().is_empty() && up.header(HeaderName::ContentType).is_none());
    assert!(!leaks(&up), "{up:?}");
    assert_eq!(relay.in_use(), 0, "the relay is released at once");
    assert_eq!(sim.proxy.stats().relayed_dialogs, 0);
    // Bob resends his 200 (no ACK yet): Alice may not have the first, so it
    // goes on, never with his SDP.
    sim.udp(BOB, &ok);
    let again = sim.one(ALICE);
    assert_eq!(again.status(), Some(200));
    assert!(again.body().is_empty() && !leaks(&again));

    sim.udp(ALICE, &ack_from_alice("z9hG4bK-m12"));
    let out = sim.out();
    let to_bob = sent_to(&out, BOB);
    let methods: Vec<Option<Method>> = to_bob.iter().map(|m| m.method()).collect();
    assert_eq!(
        methods,
        [Some(Method::Ack), Some(Method::Bye)],
        "the ACK first: {out:?}"
    );
    let bye_to_alice = &out
        .iter()
        .find(|o| o.0 == addr(ALICE))
        .unwrap_or_else(|| panic!("{out:?}"))
        .2;
    assert_eq!(bye_to_alice.method(), Some(Method::Bye));
    assert_eq!(header(bye_to_alice, "From"), ["<sip:bob@b.example>;tag=tb"]);
    for bye in [bye_to_alice, to_bob[1]] {
        let reason = &header(bye, "Reason")[0];
        assert!(
            reason.starts_with("SIP;cause=488;text=\"Not Acceptable Here ("),
            "{reason}"
        );
    }
    let events: Vec<Event> = std::iter::from_fn(|| sim.proxy.poll_event()).collect();
    assert_eq!(
        events
            .iter()
            .filter(|e| matches!(e, Event::MediaFailed { byes: 2, .. }))
            .count(),
        1,
        "{events:?}"
    );
    // An ACK resent releases nothing more; a 200 resent after the
    // transaction ended still goes on without SDP.
    sim.udp(ALICE, &ack_from_alice("z9hG4bK-m12"));
    assert!(sim.out().iter().all(|o| o.2.method() != Some(Method::Bye)));
    sim.advance(Duration::from_secs(40));
    sim.out();
    sim.udp(BOB, &ok);
    assert!(sim.out().iter().all(|o| !leaks(&o.2)));
}

#[test]
fn a_refused_answer_in_a_reliable_provisional_ends_the_call_at_its_2xx() {
    let relay = TestRelay::new(30000, 30099);
    let mut sim = relayed_sim(MediaMode::Relay, &relay, |_| {});
    let fwd = alice_calls_bob(&mut sim, "z9hG4bK-m14");
    // RFC 3262: the answer in a reliable 183 is the answer; the 2xx
    // carries none.
    let reliable = with_body(
        &answer(
            &fwd,
            183,
            "Session Progress",
            "tb",
            "Require: 100rel\r\nRSeq: 1\r\nContact: <sip:bob@127.0.0.1:5080>\r\n",
        ),
        "v=0\r\nc=IN IP4 198.51.100.2\r\nm=audio 70000 RTP/AVP 0\r\n",
    );
    sim.udp(BOB, &reliable);
    assert!(sim.one(ALICE).body().is_empty());
    assert_eq!(relay.in_use(), 2, "the call goes on until its 2xx");
    sim.udp(BOB, &ok_from_bob(&fwd, ""));
    assert_eq!(sim.one(ALICE).status(), Some(200));
    assert_eq!(relay.in_use(), 0, "ended, not left silent");
    let events: Vec<Event> = std::iter::from_fn(|| sim.proxy.poll_event()).collect();
    assert!(
        events
            .iter()
            .any(|e| matches!(e, Event::MediaFailed { byes: 2, .. })),
        "{events:?}"
    );
}

#[test]
fn an_answer_in_an_ack_the_relay_refuses_goes_on_without_it_and_ends_the_call() {
    let relay = TestRelay::new(30000, 30099);
    let mut sim = relayed_sim(MediaMode::Relay, &relay, |_| {});
    // A late offer: the INVITE carries no SDP, Bob offers in his 200.
    let invite = invite_with("z9hG4bK-m13", "").replace("Content-Type: application/sdp\r\n", "");
    sim.udp(ALICE, &invite);
    let fwd = sim.sent_to(BOB);
    assert!(fwd.body().is_empty());
    sim.udp(BOB, &ok_from_bob(&fwd, &sdp_at("198.51.100.2", 5000)));
    assert_eq!(media_of(&sim.one(ALICE)).address.to_string(), RELAY);
    // Alice answers in her ACK with SDP the relay cannot read.
    let ack = with_body(
        &ack_from_alice("z9hG4bK-m13"),
        "v=0\r\no=- 1 1 IN IP4 10.0.0.5\r\ns=-\r\nc=IN IP4 10.0.0.5\r\nt=0 0\r\nm=audio 70000 RTP/AVP 0\r\n",
    );
    sim.udp(ALICE, &ack);
    let out = sim.out();
    let to_bob = sent_to(&out, BOB);
    let ack_out = to_bob
        .iter()
        .find(|m| m.method() == Some(Method::Ack))
        .unwrap_or_else(|| panic!("{out:?}"));
    assert!(ack_out.body().is_empty(), "{ack_out:?}");
    assert!(!String::from_utf8_lossy(ack_out.as_bytes()).contains("10.0.0.5"));
    let methods: Vec<Option<Method>> = to_bob.iter().map(|m| m.method()).collect();
    assert_eq!(
        methods,
        [Some(Method::Ack), Some(Method::Bye)],
        "the ACK first"
    );
    assert!(out
        .iter()
        .any(|o| o.0 == addr(ALICE) && o.2.method() == Some(Method::Bye)));
    assert_eq!(relay.in_use(), 0);
}

/// A 2xx to the in-dialog request `req` from `contact`, with `sdp`.
fn ok_in_dialog(req: &Message, contact: &str, sdp: &str) -> String {
    let ok = answer(req, 200, "OK", "", "").replace(
        "Content-Length: 0\r\n\r\n",
        &format!("Contact: <sip:{contact}>\r\nContent-Length: 0\r\n\r\n"),
    );
    with_body(&ok, sdp)
}

/// A re-INVITE in call `media-{call}` from `who` ("alice" or "bob") with
/// `sdp`.
fn reinvite(call: &str, who: &str, branch: &str, cseq: u32, sdp: &str) -> String {
    in_dialog("INVITE", call, who, branch, cseq, sdp)
}

/// A `method` request in call `media-{call}` from `who` ("alice" or "bob"),
/// with `sdp` (none if empty).
fn in_dialog(method: &str, call: &str, who: &str, branch: &str, cseq: u32, sdp: &str) -> String {
    let (from, to, ruri, port, from_tag, to_tag) = match who {
        "alice" => (
            "alice@a.example",
            "bob@b.example",
            "bob@127.0.0.1:5080",
            5070,
            "fa",
            "tb",
        ),
        _ => (
            "bob@b.example",
            "alice@a.example",
            "alice@127.0.0.1:5070",
            5080,
            "tb",
            "fa",
        ),
    };
    let request = format!(
        "{method} sip:{ruri} SIP/2.0\r
Via: SIP/2.0/UDP 127.0.0.1:{port};branch={branch};rport\r
Route: <sip:127.0.0.1:5060;lr>\r
Max-Forwards: 70\r
From: <sip:{from}>;tag={from_tag}\r
To: <sip:{to}>;tag={to_tag}\r
Call-ID: media-{call}\r
CSeq: {cseq} {method}\r
Content-Length: 0\r
\r
"
    );
    if sdp.is_empty() {
        request
    } else {
        with_body(&request, sdp)
    }
}

#[test]
fn re_invites_refused_in_glare_leave_the_relayed_media_as_it_was() {
    let relay = TestRelay::new(30000, 30099);
    let mut sim = relayed_sim(MediaMode::Relay, &relay, |_| {});
    let call = "z9hG4bK-m9";
    let fwd = alice_calls_bob(&mut sim, call);
    let to_bob = media_of(&fwd);
    sim.udp(BOB, &ok_from_bob(&fwd, &sdp_at("198.51.100.2", 5000)));
    let to_alice = media_of(&sim.one(ALICE));
    sim.udp(ALICE, &ack_from_alice(call));
    sim.out();
    assert_eq!(relay.in_use(), 2);
    let alice = SocketAddr::from(([198, 51, 100, 1], 4000));
    let bob = SocketAddr::from(([198, 51, 100, 2], 5000));
    let route = |relay: &TestRelay, port: u16, from: SocketAddr| {
        let mut st = relay.0.lock().unwrap();
        let s = st.sessions.values_mut().next().unwrap();
        s.route(port, from).map(|r| r.to)
    };
    assert_eq!(route(&relay, to_alice.port, alice), Some(bob));

    // Both re-INVITE at once: Bob moves and adds video, Alice holds.
    let video = "m=video 6002 RTP/AVP 96\r\na=rtpmap:96 VP8/90000\r\n";
    let moved = format!("{}{video}", sdp_at("198.51.100.9", 6000));
    sim.udp(BOB, &reinvite(call, "bob", "z9hG4bK-m9b", 7, &moved));
    let bobs = sim.sent_to(ALICE);
    assert_eq!(relay.in_use(), 4, "video's ports");
    let held = sdp_at("198.51.100.1", 4000).replace("sendrecv", "sendonly");
    sim.udp(ALICE, &reinvite(call, "alice", "z9hG4bK-m9a", 2, &held));
    let alices = sim.sent_to(BOB);
    assert_eq!(media_of(&alices).port, to_bob.port);
    // Each party refuses the other's: 491.
    sim.udp(ALICE, &answer(&bobs, 491, "Request Pending", "", ""));
    assert_eq!(sim.last_to(BOB).status(), Some(491));
    sim.udp(BOB, &answer(&alices, 491, "Request Pending", "", ""));
    assert_eq!(sim.last_to(ALICE).status(), Some(491));
    assert_eq!(relay.in_use(), 2, "the refused offer's ports are back");
    // Media goes where both last agreed: to Bob's old address.
    assert_eq!(route(&relay, to_alice.port, alice), Some(bob));

    // A re-INVITE answered with 2xx still moves it.
    sim.udp(
        BOB,
        &reinvite(call, "bob", "z9hG4bK-m9c", 8, &sdp_at("198.51.100.9", 6000)),
    );
    let again = sim.sent_to(ALICE);
    let ok = ok_in_dialog(
        &again,
        "alice@127.0.0.1:5070",
        &sdp_at("198.51.100.1", 4000),
    );
    sim.udp(ALICE, &ok);
    assert_eq!(sim.last_to(BOB).status(), Some(200));
    assert_eq!(
        route(&relay, to_alice.port, alice),
        Some(SocketAddr::from(([198, 51, 100, 9], 6000)))
    );
}

#[test]
fn a_failed_request_without_sdp_leaves_a_pending_offer_be() {
    let relay = TestRelay::new(30000, 30099);
    let mut sim = relayed_sim(MediaMode::Relay, &relay, |_| {});
    let call = "z9hG4bK-m10";
    let fwd = alice_calls_bob(&mut sim, call);
    sim.udp(BOB, &ok_from_bob(&fwd, &sdp_at("198.51.100.2", 5000)));
    sim.out();
    sim.udp(ALICE, &ack_from_alice(call));
    sim.out();
    // Alice adds video; Bob's phone asks its user.
    let video = "m=video 4002 RTP/AVP 96\r\na=rtpmap:96 VP8/90000\r\n";
    let offer = format!("{}{video}", sdp_at("198.51.100.1", 4000));
    sim.udp(ALICE, &reinvite(call, "alice", "z9hG4bK-m10a", 2, &offer));
    let to_bob = sim.sent_to(BOB);
    assert_eq!(relay.in_use(), 4);
    // Meanwhile Alice's own session-timer UPDATE, without SDP, is refused.
    sim.udp(
        ALICE,
        &in_dialog("UPDATE", call, "alice", "z9hG4bK-m10u", 3, ""),
    );
    let update = sim.sent_to(BOB);
    assert_eq!(update.method(), Some(Method::Update));
    sim.udp(BOB, &answer(&update, 501, "Not Implemented", "", ""));
    assert_eq!(sim.last_to(ALICE).status(), Some(501));
    assert_eq!(relay.in_use(), 4, "Alice's offer still stands");
    // Bob accepts the video: his 200 is the answer, its SDP the relay's.
    let answer = format!(
        "{}m=video 5002 RTP/AVP 96\r\na=rtpmap:96 VP8/90000\r\n",
        sdp_at("198.51.100.2", 5000)
    );
    let ok = ok_in_dialog(&to_bob, "bob@127.0.0.1:5080", &answer);
    sim.udp(BOB, &ok);
    let to_alice = sim.last_to(ALICE);
    assert_eq!(to_alice.status(), Some(200));
    let d = sdp::inspect(to_alice.body()).unwrap();
    assert_eq!(d.media.len(), 2);
    assert!(d
        .media
        .iter()
        .all(|m| m.address.to_string() == RELAY && m.port >= 30000));
    assert_eq!(
        relay.in_use(),
        4,
        "taken as the answer: nothing new allocated"
    );
}

#[test]
fn a_refused_answer_in_a_re_invites_ack_withdraws_its_offer_and_keeps_the_call() {
    let relay = TestRelay::new(30000, 30099);
    let mut sim = relayed_sim(MediaMode::Relay, &relay, |_| {});
    let call = "z9hG4bK-m11";
    let fwd = alice_calls_bob(&mut sim, call);
    sim.udp(BOB, &ok_from_bob(&fwd, &sdp_at("198.51.100.2", 5000)));
    let to_alice = media_of(&sim.one(ALICE));
    sim.udp(ALICE, &ack_from_alice(call));
    sim.out();
    // Bob re-INVITEs without SDP; Alice offers (moving) in her 200.
    sim.udp(BOB, &reinvite(call, "bob", "z9hG4bK-m11r", 7, ""));
    let reinv = sim.sent_to(ALICE);
    let ok = ok_in_dialog(
        &reinv,
        "alice@127.0.0.1:5070",
        &sdp_at("198.51.100.9", 4008),
    );
    sim.udp(ALICE, &ok);
    assert_eq!(sim.last_to(BOB).status(), Some(200));
    // Bob answers in his ACK with SDP the relay cannot read.
    let ack = in_dialog(
        "ACK",
        call,
        "bob",
        "z9hG4bK-m11k",
        7,
        "v=0\r\no=- 1 1 IN IP4 10.0.0.5\r\ns=-\r\nc=IN IP4 10.0.0.5\r\nt=0 0\r\nm=audio 70000 RTP/AVP 0\r\n",
    );
    sim.udp(BOB, &ack);
    let out = sim.out();
    let to_alice_now = sent_to(&out, ALICE);
    assert_eq!(to_alice_now.len(), 1, "the ACK only, no BYE: {out:?}");
    assert_eq!(to_alice_now[0].method(), Some(Method::Ack));
    assert!(to_alice_now[0].body().is_empty());
    assert!(sent_to(&out, BOB).is_empty(), "no BYE to Bob");
    assert_eq!(relay.in_use(), 2, "the call keeps its relay");
    // That ACK lost, Alice resends her 200: on to Bob (who ACKs again),
    // without the offer that is off.
    sim.advance(Duration::from_secs(1));
    sim.out();
    sim.udp(ALICE, &ok);
    let resent = sim.last_to(BOB);
    assert_eq!(resent.status(), Some(200));
    assert!(resent.body().is_empty(), "{resent:?}");
    // Alice's offer is off: her media still goes to Bob's address.
    let mut st = relay.0.lock().unwrap();
    let s = st.sessions.values_mut().next().unwrap();
    let alice = SocketAddr::from(([198, 51, 100, 1], 4000));
    assert_eq!(
        s.route(to_alice.port, alice).map(|r| r.to),
        Some(SocketAddr::from(([198, 51, 100, 2], 5000)))
    );
}
