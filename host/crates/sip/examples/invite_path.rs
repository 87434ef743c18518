//! Profiling aid: pushes N distinct INVITEs through the sans-IO proxy core and
//! prints the time per INVITE. For a repeatable count, run it under
//! `valgrind --tool=callgrind --toggle-collect='*handle_input*'` and divide the
//! collected instructions by N.
#![allow(clippy::unwrap_used)]
use bytes::Bytes;
use std::time::{Duration, Instant};
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
use weir_sip::proxy::*;
fn main() {
    let l = "127.0.0.1:5060".parse().unwrap();
    let cfg = ProxyConfig::new(vec![
        Listener::new(Transport::Udp, l),
        Listener::new(Transport::Tcp, l),
    ]);
    let mut p = Proxy::new(cfg, Box::new(FallbackRouter(Fallback::RequestUri)), 3);
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(200_000);
    let make = |i: usize| {
        Bytes::from(format!("INVITE sip:+14155550123@127.0.0.1:5080;user=phone SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK-c-{i};rport\r\nMax-Forwards: 69\r\nFrom: \"+14155550100\" <sip:+14155550100@54.172.60.0;user=phone>;tag=38817219_{i}\r\nTo: <sip:+14155550123@weir.example.com;user=phone>\r\nCall-ID: 6a7f8c1e0b2d4e5f9a8b7c6d5e4f3a2b-{i}@0.0.0.0\r\nCSeq: 101 INVITE\r\nContact: <sip:+14155550100@54.172.60.0:5060;transport=udp>\r\nAllow: INVITE,ACK,CANCEL,OPTIONS,BYE,REFER,NOTIFY\r\nSupported: timer,replaces\r\nUser-Agent: Twilio Gateway\r\nX-Twilio-CallSid: CA00000000000000000000000000000000\r\nContent-Type: application/sdp\r\nContent-Length: 10\r\n\r\nv=0\r\ns=-\r\n"))
    };
    let flow = Flow {
        transport: Transport::Udp,
        local: l,
        remote: "127.0.0.1:5070".parse().unwrap(),
        conn: None,
    };
    let mut now = Instant::now();
    let mut spent = Duration::ZERO;
    for i in 0..n {
        let m = make(i);
        let t = Instant::now();
        p.handle_input(now, flow, m);
        while let Some(x) = p.poll_transmit() {
            std::hint::black_box(x);
        }
        spent += t.elapsed();
        if i % 1000 == 999 {
            now += Duration::from_secs(40);
            p.handle_timeout(now);
            while p.poll_transmit().is_some() {}
        }
    }
    eprintln!("{:?} per INVITE", spent / n as u32);
}
