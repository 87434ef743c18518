//! The external corpora through the parser and the sans-IO proxy core: the
//! outcome each corpus README names, byte preservation of what is forwarded,
//! no panic, and no state left behind. (The running binary gets the same
//! messages over real sockets in a network namespace: tests/corpus_netns.rs.)

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use weir_sim::corpus::{self, Expect};
use weir_sim::Clock;
use weir_sip::headers::HeaderName;
use weir_sip::proxy::{
    Event, Fallback, FallbackRouter, Flow, Listener, Proxy, ProxyConfig, Transmit, Transport,
};
use weir_sip::{Framing, Message};

const SENDER: &str = "127.0.0.1:40000";
/// Where every DNS name in the corpora "resolves".
const NEXT_HOP: &str = "127.0.0.2";

struct Harness {
    clock: Clock,
    proxy: Proxy,
}

#[derive(Debug, Default)]
struct Outcome {
    forwarded: Vec<Transmit>,
    replies: Vec<Message>,
    other: usize,
}

impl Outcome {
    fn verdict(&self) -> Expect {
        if !self.forwarded.is_empty() {
            Expect::Forward
        } else if let Some(r) = self.replies.iter().find(|r| r.status() != Some(100)) {
            Expect::Reply(r.status().unwrap_or(0))
        } else {
            Expect::Drop
        }
    }
}

impl Harness {
    fn new() -> Harness {
        let mut listeners = vec![];
        for t in [Transport::Udp, Transport::Tcp] {
            listeners.push(Listener::new(t, "127.0.0.1:5999".parse().unwrap()));
            listeners.push(Listener::new(t, "[::1]:5999".parse().unwrap()));
        }
        let cfg = ProxyConfig::new(listeners);
        Harness {
            clock: Clock::new(),
            proxy: Proxy::new(cfg, Box::new(FallbackRouter(Fallback::RequestUri)), 7),
        }
    }

    /// Sends one message and collects what the proxy does, answering DNS and
    /// answering every forwarded request (486 to INVITE, 200 otherwise) so no
    /// transaction is left open.
    fn send(&mut self, transport: Transport, bytes: Vec<u8>) -> Outcome {
        let flow = Flow {
            transport,
            local: "127.0.0.1:5999".parse().unwrap(),
            remote: SENDER.parse().unwrap(),
            conn: (transport == Transport::Tcp).then_some(1),
        };
        self.proxy
            .handle_input(self.clock.now(), flow, Bytes::from(bytes));
        let mut outcome = Outcome::default();
        for _ in 0..4 {
            while let Some(Event::Resolve { id, port, .. }) = self.proxy.poll_event() {
                let addr: SocketAddr = format!("{NEXT_HOP}:{port}").parse().unwrap();
                self.proxy
                    .handle_resolved(self.clock.now(), id, Ok(vec![addr]));
            }
            let mut answers = vec![];
            while let Some(t) = self.proxy.poll_transmit() {
                let m = Message::parse(t.bytes.clone(), Framing::Exact).unwrap_or_else(|e| {
                    panic!(
                        "the proxy sent bytes that do not parse ({e}): {:?}",
                        t.bytes
                    )
                });
                if m.is_request() {
                    if m.method_bytes() == b"ACK" {
                        outcome.other += 1;
                        continue;
                    }
                    let code = if m.method_bytes() == b"INVITE" {
                        486
                    } else {
                        200
                    };
                    answers.push((
                        t.remote,
                        weir_sip::build::response(&m, code, "Test", None, Some("far"), &[]),
                    ));
                    outcome.forwarded.push(t);
                } else {
                    outcome.replies.push(m);
                }
            }
            for (from, resp) in answers {
                let flow = Flow {
                    transport: Transport::Udp,
                    local: "127.0.0.1:5999".parse().unwrap(),
                    remote: from,
                    conn: None,
                };
                self.proxy.handle_input(self.clock.now(), flow, resp);
            }
        }
        outcome
    }

    /// Lets every timer run out (Timers J, H, D…), so the next message is a new
    /// transaction even when a corpus file reuses another's branch and Call-ID.
    fn settle(&mut self) {
        let end = self.clock.now() + Duration::from_secs(400);
        while let Some(at) = self.proxy.poll_timeout().filter(|&a| a <= end) {
            self.clock.set(at);
            self.proxy.handle_timeout(self.clock.now());
            while self.proxy.poll_transmit().is_some() {}
        }
        let s = self.proxy.stats();
        assert_eq!(s.live(), (0, 0, 0), "state left behind: {s:?}");
    }
}

/// Every header line of `orig` except those a proxy must change (Via, Max-Forwards,
/// Content-Length, and Route when the next hop is a strict router) appears byte for
/// byte, in order, in `fwd`; the body is identical.
fn assert_preserved(name: &str, orig: &Message, fwd: &Message) {
    let lines = |m: &Message| -> Vec<Vec<u8>> {
        m.fields_all()
            .iter()
            .filter(|f| {
                !matches!(
                    f.name,
                    HeaderName::Via
                        | HeaderName::MaxForwards
                        | HeaderName::ContentLength
                        | HeaderName::Route
                )
            })
            .map(|f| m.as_bytes()[f.line.range()].to_vec())
            .collect()
    };
    let want = lines(orig);
    let got = lines(fwd);
    let mut it = got.iter();
    for line in &want {
        assert!(
            it.any(|g| g == line),
            "{name}: line {:?} is not forwarded unchanged",
            String::from_utf8_lossy(line)
        );
    }
    assert_eq!(orig.body(), fwd.body(), "{name}: body changed");
    if orig.count(HeaderName::Route) == 0 {
        assert_eq!(
            orig.request_uri_bytes(),
            fwd.request_uri_bytes(),
            "{name}: Request-URI changed"
        );
    }
}

#[test]
fn rfc4475_torture_messages() {
    let Some(dir) = corpus::folder("rfc4475") else {
        return;
    };
    let files = corpus::files(&dir);
    assert_eq!(files.len(), 50);
    let mut h = Harness::new();
    for (name, bytes) in &files {
        let expect = corpus::rfc4475(name).unwrap_or_else(|| panic!("no expectation for {name}"));
        let out = h.send(Transport::Udp, bytes.clone());
        assert_eq!(out.verdict(), expect, "{name}");
        if expect == Expect::Forward {
            let orig = Message::parse(Bytes::from(bytes.clone()), Framing::Datagram).unwrap();
            let fwd = Message::parse(out.forwarded[0].bytes.clone(), Framing::Exact).unwrap();
            assert_eq!(fwd.method_bytes(), orig.method_bytes(), "{name}");
            assert_preserved(name, &orig, &fwd);
        }
        if let Expect::Reply(code) = expect {
            let r = out
                .replies
                .iter()
                .find(|r| r.status() == Some(code))
                .unwrap();
            assert!(
                !r.reason().is_empty(),
                "{name}: the reason says what is wrong"
            );
        }
        h.settle();
    }
    // Specific duties from the README.
    let get = |n: &str| files.iter().find(|(f, _)| f == n).unwrap().1.clone();
    let out = h.send(
        Transport::Udp,
        get("wsinv.dat").replace_bytes("wsinv.", "wsinv2."),
    );
    let fwd = Message::parse(out.forwarded[0].bytes.clone(), Framing::Exact).unwrap();
    assert_eq!(
        fwd.max_forwards(),
        Some(Ok(67)),
        "Max-Forwards 0068 is 68, forwarded as 67"
    );
    let out = h.send(
        Transport::Udp,
        get("longreq.dat").replace_bytes("longreq.", "longreq2."),
    );
    assert_eq!(
        out.forwarded[0].transport,
        Transport::Tcp,
        "over 1300 bytes goes over TCP"
    );
    let out = h.send(
        Transport::Udp,
        get("inv2543.dat").replace_bytes("inv2543.", "inv2543b."),
    );
    let fwd = Message::parse(out.forwarded[0].bytes.clone(), Framing::Exact).unwrap();
    assert_eq!(
        fwd.max_forwards(),
        Some(Ok(70)),
        "a missing Max-Forwards is added as 70"
    );
    assert!(fwd.content_length().is_some());
    let out = h.send(
        Transport::Udp,
        get("bext01.dat").replace_bytes("bext01.", "bext01b."),
    );
    let r = &out.replies[0];
    let unsupported: Vec<_> = r
        .fields_named("Unsupported")
        .map(|f| r.value(f).to_vec())
        .collect();
    assert_eq!(
        unsupported,
        vec![b"noProxiesSupportThis, norDoAnyProxiesSupportThis".to_vec()]
    );
    let out = h.send(
        Transport::Udp,
        get("dblreq.dat").replace_bytes("dblreq.", "dblreq2."),
    );
    assert_eq!(
        out.forwarded.len(),
        1,
        "the INVITE after the REGISTER is noise"
    );
    // Over TCP, dblreq is two messages.
    let mut framer = weir_sip::framing::StreamFramer::new(65_535);
    framer.push(&get("dblreq.dat"));
    let mut n = 0;
    while let Ok(Some(item)) = framer.poll() {
        // The INVITE's Content-Length (150) is 5 bytes short of its body, so
        // "C\r\n\r\n" is left over as a third item, which does not parse.
        if let weir_sip::framing::StreamItem::Message(m) = item {
            n += usize::from(Message::parse(m, Framing::Exact).is_ok());
        }
    }
    assert_eq!(n, 2);
    h.settle();
}

trait ReplaceBytes {
    fn replace_bytes(&self, from: &str, to: &str) -> Vec<u8>;
}

impl ReplaceBytes for Vec<u8> {
    /// Gives a message a new Call-ID and branch so it is a new transaction.
    fn replace_bytes(&self, from: &str, to: &str) -> Vec<u8> {
        let s = String::from_utf8_lossy(self).replace(from, to);
        let s = s.replace("branch=z9hG4bK", "branch=z9hG4bKagain");
        // Keep Content-Length right when the body did not change.
        s.into_bytes()
    }
}

#[test]
fn rfc5118_ipv6_messages() {
    let Some(dir) = corpus::folder("rfc5118") else {
        return;
    };
    // The archive bytes end lines with bare LF: a strict parser rejects all 12.
    for (name, bytes) in corpus::files(&dir) {
        assert!(
            Message::parse(Bytes::from(bytes), Framing::Datagram).is_err(),
            "{name} (LF) must not parse"
        );
    }
    let wire = corpus::files(&dir.join("wire"));
    assert_eq!(wire.len(), 12);
    let mut h = Harness::new();
    for (name, bytes) in &wire {
        let expect = corpus::rfc5118(name).unwrap_or_else(|| panic!("no expectation for {name}"));
        let out = h.send(Transport::Udp, bytes.clone());
        assert_eq!(out.verdict(), expect, "{name}");
        if expect == Expect::Forward {
            let orig = Message::parse(Bytes::from(bytes.clone()), Framing::Datagram).unwrap();
            let fwd = Message::parse(out.forwarded[0].bytes.clone(), Framing::Exact).unwrap();
            assert_preserved(name, &orig, &fwd);
            let t = &out.forwarded[0];
            match name.as_str() {
                "port-ambiguous" => {
                    assert_eq!(t.remote, "[2001:db8::10:5070]:5060".parse().unwrap())
                }
                "port-unambiguous" => assert_eq!(t.remote, "[2001:db8::10]:5070".parse().unwrap()),
                "ipv6-bug-abnf-3-colons" => assert_eq!(
                    t.remote.ip(),
                    "2001:db8::c000:201".parse::<std::net::IpAddr>().unwrap()
                ),
                _ => {}
            }
        }
        h.settle();
    }
}

#[test]
fn kamailio_and_pjsip_seeds_get_sane_answers() {
    let mut h = Harness::new();
    let mut seen = 0;
    for folder in [
        "kamailio-test-sip",
        "pjsip-fuzz-seeds/fuzz-sip",
        "pjsip-fuzz-seeds/fuzz-sip-dialog",
        "profuzzbench-kamailio-seed",
    ] {
        let Some(dir) = corpus::folder(folder) else {
            continue;
        };
        for (name, bytes) in corpus::files(&dir) {
            seen += 1;
            // Raw, as the bytes are (a fuzzer's view), then converted to wire form.
            for b in [bytes.clone(), corpus::to_wire(&bytes)] {
                let out = h.send(Transport::Udp, b.clone());
                for r in &out.replies {
                    let code = r.status().unwrap();
                    assert!((100..700).contains(&code), "{folder}/{name}");
                }
                for f in &out.forwarded {
                    let m = Message::parse(f.bytes.clone(), Framing::Exact).unwrap();
                    let via = m.top_via().unwrap().unwrap();
                    assert!(
                        via.branch().unwrap().starts_with(b"z9hG4bK"),
                        "{folder}/{name}"
                    );
                }
                // The same bytes as a TCP stream: the framer must not choke either.
                let mut framer = weir_sip::framing::StreamFramer::new(65_535);
                framer.push(&b);
                while let Ok(Some(_)) = framer.poll() {}
            }
        }
    }
    if seen > 0 {
        h.settle();
    }
}

#[test]
fn protos_c07_sip_cases_leave_no_state() {
    let Some(cases) = corpus::protos_cases("test@127.0.0.2:5080", "127.0.0.1", 40000) else {
        return;
    };
    assert_eq!(cases.len(), 4527);
    let mut h = Harness::new();
    let mut verdicts = std::collections::BTreeMap::new();
    let started = std::time::Instant::now();
    for case in &cases {
        let transport = if case.invite.len() > 65_000 {
            Transport::Tcp
        } else {
            Transport::Udp
        };
        let out = h.send(transport, case.invite.clone());
        *verdicts.entry(format!("{:?}", out.verdict())).or_insert(0) += 1;
        h.send(transport, case.teardown.clone());
    }
    eprintln!(
        "PROTOS c07-sip: {} cases in {:?}: {verdicts:?}",
        cases.len(),
        started.elapsed()
    );
    // Liveness: the valid case still goes through after all the others.
    let mut valid = String::from_utf8_lossy(&cases[0].invite).into_owned();
    valid = valid
        .replace("z9hG4bK000000", "z9hG4bKlive")
        .replace("Call-ID: 0@", "Call-ID: live@");
    assert_eq!(
        h.send(Transport::Udp, valid.into_bytes()).verdict(),
        Expect::Forward
    );
    h.settle();
}
