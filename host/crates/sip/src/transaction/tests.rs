//! Virtual-clock tests of the four machines, one per RFC 3261 §17 behaviour.

use std::time::Duration;

use bytes::Bytes;
use weir_sim::Clock;

use super::*;
use crate::message::{Framing, Message};

const INVITE: &[u8] = b"INVITE sip:bob@b.example SIP/2.0\r\n\
Via: SIP/2.0/UDP p.example;branch=z9hG4bKp1\r\n\
From: <sip:alice@a.example>;tag=f1\r\n\
To: <sip:bob@b.example>\r\n\
Call-ID: c1\r\n\
CSeq: 1 INVITE\r\n\
Content-Length: 0\r\n\r\n";

fn msg(b: &'static [u8]) -> Message {
    Message::parse(Bytes::from_static(b), Framing::Exact).unwrap()
}

fn resp(code: u16) -> Message {
    let req = msg(INVITE);
    Message::parse(
        crate::build::response(&req, code, "X", None, Some("t1"), &[]),
        Framing::Exact,
    )
    .unwrap()
}

/// Runs the machine to `until`, firing every deadline on the way; returns the
/// virtual times at which it asked to send, and the events it produced.
fn run<T>(
    clock: &mut Clock,
    until: Duration,
    txn: &mut T,
    poll: impl Fn(&T) -> Option<Instant>,
    fire: impl Fn(&mut T, Instant) -> Step,
) -> (Vec<Duration>, Vec<(Duration, TuEvent)>) {
    let mut sends = vec![];
    let mut events = vec![];
    let end = clock.start() + until;
    while let Some(at) = poll(txn).filter(|&at| at <= end) {
        clock.set(at);
        let step = fire(txn, clock.now());
        if step.send.is_some() {
            sends.push(clock.elapsed());
        }
        if let Some(e) = step.event {
            events.push((clock.elapsed(), e));
        }
    }
    (sends, events)
}

/// Send times of a retransmission timer that starts at T1, doubles up to T2
/// (4 s) and stops at 64·T1 (32 s): Timers E and G with the default timers.
fn doubling_to_t2_until_64_t1() -> Vec<Duration> {
    let mut at = vec![0.5, 1.5, 3.5, 7.5];
    let mut t = 7.5;
    while t + 4.0 < 32.0 {
        t += 4.0;
        at.push(t);
    }
    secs(&at)
}

fn secs(v: &[f64]) -> Vec<Duration> {
    v.iter().map(|s| Duration::from_secs_f64(*s)).collect()
}

#[test]
fn s17_1_1_2_invite_into_total_loss_fires_timer_b_at_64_t1() {
    let mut clock = Clock::new();
    let t = Timers::default();
    let mut txn = ClientInvite::new(clock.now(), Bytes::from_static(INVITE), false, t);
    let (sends, events) = run(
        &mut clock,
        Duration::from_secs(100),
        &mut txn,
        ClientInvite::poll_timeout,
        ClientInvite::handle_timeout,
    );
    // Timer A doubles without a cap: 0.5, 1.5, 3.5, 7.5, 15.5, 31.5 s.
    assert_eq!(sends, secs(&[0.5, 1.5, 3.5, 7.5, 15.5, 31.5]));
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].0, Duration::from_secs(32));
    assert!(matches!(events[0].1, TuEvent::Timeout));
    assert!(txn.is_terminated());
}

#[test]
fn s17_1_1_2_reliable_invite_never_retransmits() {
    let mut clock = Clock::new();
    let t = Timers {
        t1: Duration::from_millis(100),
        ..Timers::default()
    };
    let mut txn = ClientInvite::new(clock.now(), Bytes::from_static(INVITE), true, t);
    let (sends, events) = run(
        &mut clock,
        Duration::from_secs(100),
        &mut txn,
        ClientInvite::poll_timeout,
        ClientInvite::handle_timeout,
    );
    assert!(sends.is_empty());
    assert_eq!(events[0].0, Duration::from_millis(6400));
}

#[test]
fn s17_1_1_2_provisional_stops_retransmissions_and_timer_b() {
    let mut clock = Clock::new();
    let mut txn = ClientInvite::new(
        clock.now(),
        Bytes::from_static(INVITE),
        false,
        Timers::default(),
    );
    clock.advance(Duration::from_millis(200));
    let step = txn.handle_response(clock.now(), resp(180));
    assert!(matches!(step.event, Some(TuEvent::Response(_))));
    assert_eq!(txn.state_name(), "Proceeding");
    assert_eq!(txn.poll_timeout(), None);
}

#[test]
fn s17_1_1_3_non_2xx_final_is_acked_and_the_ack_repeated() {
    let mut clock = Clock::new();
    let mut txn = ClientInvite::new(
        clock.now(),
        Bytes::from_static(INVITE),
        false,
        Timers::default(),
    );
    let step = txn.handle_response(clock.now(), resp(486));
    let ack = Message::parse(step.send.unwrap(), Framing::Exact).unwrap();
    assert_eq!(ack.method_bytes(), b"ACK");
    assert_eq!(ack.to().unwrap().unwrap().tag(), Some(&b"t1"[..]));
    assert!(matches!(step.event, Some(TuEvent::Response(_))));
    // A retransmitted final response is answered with the ACK again, not passed up.
    let again = txn.handle_response(clock.now(), resp(486));
    assert!(again.send.is_some() && again.event.is_none());
    // Timer D: 32 s on UDP.
    clock.advance(Duration::from_secs(31));
    txn.handle_timeout(clock.now());
    assert_eq!(txn.state_name(), "Completed");
    clock.advance(Duration::from_secs(1));
    txn.handle_timeout(clock.now());
    assert!(txn.is_terminated());
}

#[test]
fn rfc6026_client_accepted_passes_every_2xx_then_timer_m() {
    let mut clock = Clock::new();
    let mut txn = ClientInvite::new(
        clock.now(),
        Bytes::from_static(INVITE),
        false,
        Timers::default(),
    );
    assert!(txn.handle_response(clock.now(), resp(200)).event.is_some());
    assert_eq!(txn.state_name(), "Accepted");
    assert!(txn.handle_response(clock.now(), resp(200)).event.is_some());
    assert!(txn.handle_response(clock.now(), resp(486)).event.is_none());
    clock.advance(Duration::from_secs(32));
    txn.handle_timeout(clock.now());
    assert!(txn.is_terminated());
}

#[test]
fn s17_1_2_2_non_invite_backs_off_to_t2_then_timer_f() {
    let mut clock = Clock::new();
    let mut txn = ClientNonInvite::new(
        clock.now(),
        Bytes::from_static(INVITE),
        false,
        Timers::default(),
    );
    let (sends, events) = run(
        &mut clock,
        Duration::from_secs(100),
        &mut txn,
        ClientNonInvite::poll_timeout,
        ClientNonInvite::handle_timeout,
    );
    // Timer E: 0.5, 1, 2, 4, 4, … until Timer F at 32 s.
    assert_eq!(sends, doubling_to_t2_until_64_t1());
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].0, Duration::from_secs(32));
}

#[test]
fn s17_1_2_2_non_invite_proceeding_retransmits_every_t2_and_completes_with_timer_k() {
    let mut clock = Clock::new();
    let mut txn = ClientNonInvite::new(
        clock.now(),
        Bytes::from_static(INVITE),
        false,
        Timers::default(),
    );
    clock.advance(Duration::from_millis(100));
    txn.handle_response(clock.now(), resp(100));
    assert_eq!(txn.state_name(), "Proceeding");
    let (sends, _) = run(
        &mut clock,
        Duration::from_secs(12),
        &mut txn,
        ClientNonInvite::poll_timeout,
        ClientNonInvite::handle_timeout,
    );
    assert_eq!(sends[0], Duration::from_millis(500));
    for pair in sends[1..].windows(2) {
        assert_eq!(pair[1] - pair[0], Duration::from_secs(4));
    }
    let step = txn.handle_response(clock.now(), resp(200));
    assert!(step.event.is_some());
    assert_eq!(txn.state_name(), "Completed");
    assert_eq!(
        txn.poll_timeout(),
        Some(clock.now() + Duration::from_secs(5))
    );
}

#[test]
fn s17_2_1_server_invite_retransmits_final_with_timer_g_until_timer_h() {
    let mut clock = Clock::new();
    let mut txn = ServerInvite::new(false, Timers::default());
    let trying = Bytes::from_static(b"100");
    assert!(txn
        .send_response(clock.now(), 100, trying.clone())
        .is_some());
    assert_eq!(txn.handle_retransmission().send, Some(trying));
    assert!(txn
        .send_response(clock.now(), 486, Bytes::from_static(b"486"))
        .is_some());
    let (sends, events) = run(
        &mut clock,
        Duration::from_secs(100),
        &mut txn,
        ServerInvite::poll_timeout,
        ServerInvite::handle_timeout,
    );
    assert_eq!(sends, doubling_to_t2_until_64_t1());
    assert!(matches!(events[..], [(d, TuEvent::AckTimeout)] if d == Duration::from_secs(32)));
}

#[test]
fn s17_2_1_ack_confirms_and_timer_i_terminates() {
    let mut clock = Clock::new();
    let mut txn = ServerInvite::new(false, Timers::default());
    txn.send_response(clock.now(), 404, Bytes::from_static(b"404"));
    assert_eq!(
        txn.handle_retransmission().send,
        Some(Bytes::from_static(b"404"))
    );
    assert!(txn.handle_ack(clock.now()));
    assert_eq!(txn.state_name(), "Confirmed");
    assert!(txn.handle_retransmission().send.is_none());
    clock.advance(Duration::from_secs(5));
    txn.handle_timeout(clock.now());
    assert!(txn.is_terminated());
}

#[test]
fn rfc6026_server_accepted_absorbs_invites_and_forwards_2xx() {
    let mut clock = Clock::new();
    let mut txn = ServerInvite::new(false, Timers::default());
    assert!(txn
        .send_response(clock.now(), 200, Bytes::from_static(b"200"))
        .is_some());
    assert_eq!(txn.state_name(), "Accepted");
    assert!(txn.handle_retransmission().send.is_none());
    assert!(txn
        .send_response(clock.now(), 200, Bytes::from_static(b"200"))
        .is_some());
    assert!(txn
        .send_response(clock.now(), 486, Bytes::from_static(b"486"))
        .is_none());
    assert!(!txn.handle_ack(clock.now()));
    clock.advance(Duration::from_secs(32));
    txn.handle_timeout(clock.now());
    assert!(txn.is_terminated());
}

#[test]
fn s17_2_2_server_non_invite() {
    let mut clock = Clock::new();
    let mut txn = ServerNonInvite::new(false, Timers::default());
    assert!(
        txn.handle_retransmission().send.is_none(),
        "Trying absorbs retransmissions"
    );
    txn.send_response(clock.now(), 180, Bytes::from_static(b"180"));
    assert_eq!(
        txn.handle_retransmission().send,
        Some(Bytes::from_static(b"180"))
    );
    txn.send_response(clock.now(), 200, Bytes::from_static(b"200"));
    assert_eq!(
        txn.handle_retransmission().send,
        Some(Bytes::from_static(b"200"))
    );
    assert!(txn
        .send_response(clock.now(), 500, Bytes::from_static(b"500"))
        .is_none());
    clock.advance(Duration::from_secs(32));
    txn.handle_timeout(clock.now());
    assert!(txn.is_terminated());
    let mut tcp = ServerNonInvite::new(true, Timers::default());
    tcp.send_response(clock.now(), 200, Bytes::from_static(b"200"));
    tcp.handle_timeout(clock.now());
    assert!(
        tcp.is_terminated(),
        "Timer J is zero on reliable transports"
    );
}
