//! Entry points for the fuzz targets (`fuzz/`) and the bounded mutation test.
//! Each takes arbitrary bytes and panics only if the code under test misbehaves.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::framing::{StreamFramer, StreamItem};
use crate::headers::{CSeq, HeaderName, NameAddr, Via};
use crate::message::{Framing, Message, Rewrite};
use crate::proxy::{Fallback, FallbackRouter, Flow, Listener, Proxy, ProxyConfig, Transport};
use crate::uri::Uri;

/// Parses `data` both ways, reads every typed view, and checks that an
/// untouched rewrite gives back the message bytes.
pub fn exercise_message(data: &[u8]) {
    for framing in [Framing::Datagram, Framing::Exact] {
        let Ok(m) = Message::parse(Bytes::copy_from_slice(data), framing) else {
            continue;
        };
        let _ = m.request_uri().map(|u| {
            if let Uri::Sip(s) = u {
                let _ = s.equivalent(&s);
                let _ = s.user_decoded();
            }
        });
        for (_, v) in m.list(HeaderName::Via) {
            if let Ok(via) = Via::parse(v) {
                let _ = (via.branch(), via.received(), via.rport(), via.maddr());
            }
        }
        for name in [
            HeaderName::From,
            HeaderName::To,
            HeaderName::Contact,
            HeaderName::Route,
            HeaderName::RecordRoute,
        ] {
            for (_, v) in m.list(name) {
                if let Ok(na) = NameAddr::parse(v) {
                    let _ = (na.tag(), na.params.iter().count());
                }
            }
        }
        if let Some(v) = m.header(HeaderName::CSeq) {
            let _ = CSeq::parse(v);
        }
        let _ = (m.max_forwards(), m.call_id(), m.body());
        let out = Rewrite::new(&m).finish();
        // Re-serialising without edits keeps every header line; only a missing
        // or wrong Content-Length is made right.
        let again = Message::parse(out, Framing::Exact);
        assert!(
            again.is_ok(),
            "an untouched rewrite of a parsed message must parse: {data:?}"
        );
    }
}

/// Feeds `data` to a stream framer in chunks whose sizes come from the data.
pub fn exercise_framer(data: &[u8]) {
    let mut f = StreamFramer::new(4096);
    let mut i = 0;
    let mut taken = 0;
    while i < data.len() {
        let step = 1 + usize::from(data[i]) % 97;
        let end = (i + step).min(data.len());
        f.push(&data[i..end]);
        i = end;
        loop {
            match f.poll() {
                Ok(Some(StreamItem::Message(m))) => {
                    assert!(m.len() <= 4096);
                    taken += m.len();
                    let _ = Message::parse(m, Framing::Exact);
                }
                Ok(Some(StreamItem::Ping)) => taken += 4,
                Ok(None) => break,
                Err(_) => return,
            }
        }
    }
    assert!(taken <= data.len());
}

/// Splits `data` on `\0\0\0` into datagrams for a fresh proxy, lets every timer
/// run out, and checks that all output parses and no state is left.
pub fn exercise_proxy(data: &[u8]) {
    let local = SocketAddr::from(([127, 0, 0, 1], 5060));
    let cfg = ProxyConfig::new(vec![
        Listener::new(Transport::Udp, local),
        Listener::new(Transport::Tcp, local),
    ]);
    let mut proxy = Proxy::new(cfg, Box::new(FallbackRouter(Fallback::RequestUri)), 1);
    let mut now = Instant::now();
    for (n, chunk) in data
        .split(|&b| b == 0)
        .filter(|c| !c.is_empty())
        .enumerate()
    {
        let flow = Flow {
            transport: Transport::Udp,
            local,
            remote: SocketAddr::from(([127, 0, 0, 1], 5070 + (n % 3) as u16)),
            conn: None,
        };
        proxy.handle_input(now, flow, Bytes::copy_from_slice(chunk));
        drain(&mut proxy, now);
        now += Duration::from_millis(10);
    }
    let end = now + Duration::from_secs(400);
    while let Some(at) = proxy.poll_timeout().filter(|&a| a <= end) {
        proxy.handle_timeout(at);
        drain(&mut proxy, at);
    }
    let s = proxy.stats();
    assert_eq!(s.live(), (0, 0, 0), "state left behind by {data:?}");
}

fn drain(proxy: &mut Proxy, now: Instant) {
    while let Some(crate::proxy::Event::Resolve { id, .. }) = proxy.poll_event() {
        proxy.handle_resolved(now, id, Err("no DNS while fuzzing".into()));
    }
    while let Some(t) = proxy.poll_transmit() {
        assert!(
            Message::parse(t.bytes.clone(), Framing::Exact).is_ok(),
            "the proxy sent bytes that do not parse: {:?}",
            t.bytes
        );
    }
}
