//! Criterion benchmarks of the SIP core.
//!
//! - `parse/carrier_invite`: index a realistic carrier INVITE with SDP;
//! - `pipeline/parse_decide_serialise`: parse, read what routing needs (Via,
//!   From/To tags, CSeq, Max-Forwards, Request-URI), ask the router, and
//!   serialise the forwarded copy (Via, Record-Route, Max-Forwards edits) —
//!   without the transaction state around it;
//! - `proxy/invite_in_to_forward_out`: one INVITE through the proxy core:
//!   parse, validate, route (Request-URI), 100 Trying, Via/Record-Route/
//!   Max-Forwards edits and serialisation of the forwarded copy;
//! - `proxy/full_call`: the 7 messages of a call that cross a record-routing
//!   proxy (INVITE, 180, 200, ACK, BYE, 200, plus the generated 100), with a few
//!   thousand calls' transactions alive, as under load.
//!
//! Only the proxy's own work is timed (`iter_custom`): building the far end's
//! responses happens outside the measurement. The allocator is mimalloc, as in
//! the `weir` binary.

#![allow(clippy::expect_used)]

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::hint::black_box;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use weir_sip::headers::HeaderName;
use weir_sip::proxy::{Fallback, FallbackRouter, Flow, Listener, Proxy, ProxyConfig, Transport};
use weir_sip::{Framing, Message, Rewrite};

const PROXY: &str = "127.0.0.1:5060";
const CALLER: &str = "127.0.0.1:5070";
const CALLEE: &str = "127.0.0.1:5080";

fn invite(n: usize) -> Bytes {
    Bytes::from(format!(
        "INVITE sip:+14155550123@127.0.0.1:5080;user=phone SIP/2.0\r\n\
Via: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK-carrier-{n};rport\r\n\
Max-Forwards: 69\r\n\
From: \"+14155550100\" <sip:+14155550100@54.172.60.0;user=phone>;tag=38817219_6772d868_{n}\r\n\
To: <sip:+14155550123@weir.example.com;user=phone>\r\n\
Call-ID: 6a7f8c1e0b2d4e5f9a8b7c6d5e4f3a2b-{n}@0.0.0.0\r\n\
CSeq: 101 INVITE\r\n\
Contact: <sip:+14155550100@54.172.60.0:5060;transport=udp>\r\n\
Allow: INVITE,ACK,CANCEL,OPTIONS,BYE,REFER,NOTIFY\r\n\
Supported: timer,replaces\r\n\
User-Agent: Twilio Gateway\r\n\
X-Twilio-AccountSid: AC00000000000000000000000000000000\r\n\
X-Twilio-CallSid: CA00000000000000000000000000000000\r\n\
P-Asserted-Identity: <sip:+14155550100@54.172.60.0>\r\n\
Content-Type: application/sdp\r\n\
Content-Length: 240\r\n\r\n\
v=0\r\n\
o=root 1399845466 1399845466 IN IP4 54.172.60.0\r\n\
s=Twilio Media Gateway\r\n\
c=IN IP4 54.172.60.10\r\n\
t=0 0\r\n\
m=audio 12400 RTP/AVP 0 8 101\r\n\
a=rtpmap:0 PCMU/8000\r\n\
a=rtpmap:8 PCMA/8000\r\n\
a=rtpmap:101 telephone-event/8000\r\n\
a=fmtp:101 0-16\r\n\
a=ptime:20\r\n\
a=sendrecv\r\n"
    ))
}

fn flow(from: &str) -> Flow {
    Flow {
        transport: Transport::Udp,
        local: PROXY.parse().expect("address"),
        remote: from.parse().expect("address"),
        conn: None,
    }
}

fn proxy() -> Proxy {
    let l: SocketAddr = PROXY.parse().expect("address");
    let cfg = ProxyConfig::new(vec![
        Listener::new(Transport::Udp, l),
        Listener::new(Transport::Tcp, l),
    ]);
    Proxy::new(cfg, Box::new(FallbackRouter(Fallback::RequestUri)), 3)
}

/// The response a far end sends to `req` (with every Via and Record-Route).
fn respond(req: &Message, code: u16, reason: &str) -> Bytes {
    let mut s = format!("SIP/2.0 {code} {reason}\r\n");
    for f in req.fields_all() {
        match f.name {
            HeaderName::Via
            | HeaderName::RecordRoute
            | HeaderName::From
            | HeaderName::CallId
            | HeaderName::CSeq => {
                s.push_str(&String::from_utf8_lossy(&req.as_bytes()[f.line.range()]));
            }
            HeaderName::To => s.push_str(&format!(
                "To: {};tag=callee\r\n",
                String::from_utf8_lossy(req.value(f))
            )),
            _ => {}
        }
    }
    s.push_str("Contact: <sip:callee@127.0.0.1:5080>\r\nContent-Length: 0\r\n\r\n");
    Bytes::from(s)
}

fn in_dialog(method: &str, n: usize, seq: u32) -> Bytes {
    Bytes::from(format!(
        "{method} sip:callee@127.0.0.1:5080 SIP/2.0\r\n\
Via: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK-{method}-{n};rport\r\n\
Route: <sip:127.0.0.1:5060;lr>\r\n\
Max-Forwards: 70\r\n\
From: \"+14155550100\" <sip:+14155550100@54.172.60.0;user=phone>;tag=38817219_6772d868_{n}\r\n\
To: <sip:+14155550123@weir.example.com;user=phone>;tag=callee\r\n\
Call-ID: 6a7f8c1e0b2d4e5f9a8b7c6d5e4f3a2b-{n}@0.0.0.0\r\n\
CSeq: {seq} {method}\r\n\
Content-Length: 0\r\n\r\n"
    ))
}

fn drain(p: &mut Proxy) -> Option<Bytes> {
    let mut fwd = None;
    while let Some(t) = p.poll_transmit() {
        if t.remote.port() == 5080 {
            fwd = Some(t.bytes);
        } else {
            black_box(t);
        }
    }
    fwd
}

fn benches(c: &mut Criterion) {
    let msg = invite(1);
    let mut g = c.benchmark_group("parse");
    g.throughput(Throughput::Bytes(msg.len() as u64));
    g.bench_function("carrier_invite", |b| {
        b.iter(|| Message::parse(black_box(msg.clone()), Framing::Datagram).expect("parses"))
    });
    g.finish();

    let mut g = c.benchmark_group("pipeline");
    g.throughput(Throughput::Elements(1));
    g.bench_function("parse_decide_serialise", |b| {
        let router = FallbackRouter(Fallback::RequestUri);
        b.iter(|| {
            let m = Message::parse(black_box(msg.clone()), Framing::Datagram).expect("parses");
            let via = m.top_via().expect("via").expect("valid via");
            let _ = (m.from(), m.to(), m.cseq(), via.branch(), via.rport());
            let mf = m.max_forwards().and_then(Result::ok).unwrap_or(70);
            let uri = m.request_uri().expect("uri");
            black_box(&uri);
            let decision = router.decide(&m);
            let mf_line = m
                .fields_all()
                .iter()
                .position(|f| f.name == HeaderName::MaxForwards)
                .expect("Max-Forwards");
            let mut rw = Rewrite::new(&m);
            rw.replace_value(mf_line, &(mf - 1).to_string());
            rw.prepend("Record-Route", "<sip:127.0.0.1:5060;lr>");
            rw.prepend(
                "Via",
                "SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bKw0123456789abcdef.0123456789ab",
            );
            black_box((decision, rw.finish()))
        })
    });
    g.finish();

    let mut g = c.benchmark_group("proxy");
    g.throughput(Throughput::Elements(1));
    const POOL: usize = 20_000;
    let invites: Vec<Bytes> = (0..POOL).map(invite).collect();
    g.bench_function("invite_in_to_forward_out", |b| {
        b.iter_custom(|iters| {
            let mut p = proxy();
            let mut now = Instant::now();
            let mut spent = Duration::ZERO;
            for i in 0..iters as usize {
                let m = invites[i % POOL].clone();
                let t = Instant::now();
                p.handle_input(now, flow(CALLER), m);
                let out = drain(&mut p);
                spent += t.elapsed();
                black_box(out);
                // Outside the measurement: time passes, old transactions end.
                now += Duration::from_millis(5);
                p.handle_timeout(now);
                while p.poll_transmit().is_some() {}
            }
            spent
        })
    });

    g.throughput(Throughput::Elements(7));
    let byes: Vec<Bytes> = (0..POOL).map(|n| in_dialog("BYE", n, 102)).collect();
    let acks: Vec<Bytes> = (0..POOL).map(|n| in_dialog("ACK", n, 101)).collect();
    g.bench_function("full_call", |b| {
        b.iter_custom(|iters| {
            let mut p = proxy();
            let mut now = Instant::now();
            let mut spent = Duration::ZERO;
            for i in 0..iters as usize {
                let k = i % POOL;
                let t = Instant::now();
                p.handle_input(now, flow(CALLER), invites[k].clone());
                let fwd = drain(&mut p).expect("INVITE forwarded");
                spent += t.elapsed();
                let fwd = Message::parse(fwd, Framing::Exact).expect("parses");
                let ringing = respond(&fwd, 180, "Ringing");
                let ok = respond(&fwd, 200, "OK");
                let t = Instant::now();
                p.handle_input(now, flow(CALLEE), ringing);
                drain(&mut p);
                p.handle_input(now, flow(CALLEE), ok);
                drain(&mut p);
                p.handle_input(now, flow(CALLER), acks[k].clone());
                drain(&mut p);
                p.handle_input(now, flow(CALLER), byes[k].clone());
                let bye = drain(&mut p).expect("BYE forwarded");
                spent += t.elapsed();
                let bye = Message::parse(bye, Framing::Exact).expect("parses");
                let bye_ok = respond(&bye, 200, "OK");
                let t = Instant::now();
                p.handle_input(now, flow(CALLEE), bye_ok);
                drain(&mut p);
                spent += t.elapsed();
                // ~5,000 calls' transactions stay alive (Timers L, M, J, K).
                now += Duration::from_millis(7);
                p.handle_timeout(now);
                while p.poll_transmit().is_some() {}
            }
            spent
        })
    });
    g.finish();
}

criterion_group!(benches_group, benches);
criterion_main!(benches_group);
