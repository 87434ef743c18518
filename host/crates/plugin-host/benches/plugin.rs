//! One `on-request` on a warm instance that reads ten headers, and the same
//! through the chain (snapshot, instance look-up, decision checks, pin).
//! Needs `scripts/build-plugins.sh` first.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use arc_swap::ArcSwap;
use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use weir_plugin_host::{
    Capabilities, Chain, ChainEntry, Limits, MemoryRegistry, OnError, PluginSet, RequestRep,
    Runtime, Services,
};
use weir_sip::message::{Framing, Message};
use weir_sip::proxy::{Fallback, FallbackRouter, Flow, Router, Transport};

const INVITE: &str = "INVITE sip:+14155550100@weir.example.com SIP/2.0\r\n\
Via: SIP/2.0/UDP 54.172.60.1:5060;branch=z9hG4bK-524287-1---abc123;rport\r\n\
Max-Forwards: 70\r\n\
From: \"Carrier\" <sip:+14155550199@carrier.example.com>;tag=8f3a1c\r\n\
To: <sip:+14155550100@weir.example.com>\r\n\
Call-ID: 9f2c6b0a-3e4d-4c1b-8a7f-1d2e3f4a5b6c@54.172.60.1\r\n\
CSeq: 101 INVITE\r\n\
Contact: <sip:+14155550199@54.172.60.1:5060>\r\n\
X-Twilio-CallSid: CA0123456789abcdef0123456789abcdef\r\n\
User-Agent: Twilio Gateway\r\n\
Allow: INVITE, ACK, CANCEL, BYE, OPTIONS\r\n\
Content-Type: application/sdp\r\n\
Content-Length: 0\r\n\r\n";

fn plugin() -> Vec<u8> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../../target/wasm32-wasip2/plugin/test_plugin.wasm");
    std::fs::read(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e}; run scripts/build-plugins.sh first",
            path.display()
        )
    })
}

fn benches(c: &mut Criterion) {
    let services = Arc::new(Services::new(Arc::new(MemoryRegistry::new())));
    let rt = Runtime::new(Limits::default(), services.clone()).unwrap();
    let config = r#"{"bench": true, "target": "sip:agent@10.0.0.7:5080"}"#;
    let mut caps = Capabilities::default();
    caps.grant("registry");
    let v = rt.load("bench", &plugin(), config, caps).unwrap();
    let msg =
        Arc::new(Message::parse(Bytes::from_static(INVITE.as_bytes()), Framing::Datagram).unwrap());
    let flow = Flow {
        transport: Transport::Udp,
        local: "127.0.0.1:5060".parse::<SocketAddr>().unwrap(),
        remote: "54.172.60.1:5060".parse().unwrap(),
        conn: None,
    };
    let mut g = c.benchmark_group("plugin");
    g.throughput(Throughput::Elements(1));
    let none = r#"{"bench": true, "reads": 0, "target": "sip:agent@10.0.0.7:5080"}"#;
    let v0 = rt.load("bench0", &plugin(), none, caps).unwrap();
    let mut warm0 = v0.instance().unwrap();
    g.bench_function("on_request_no_reads_warm", |b| {
        b.iter(|| {
            let (rep, verdict) = warm0.decide(RequestRep::new(msg.clone(), flow, None));
            black_box((rep, verdict.unwrap()))
        })
    });
    if std::env::var_os("WEIR_BENCH_READS").is_some() {
        for n in [1, 2, 3, 4, 5, 6, 7] {
            let cfg =
                format!(r#"{{"bench": true, "reads": {n}, "target": "sip:agent@10.0.0.7:5080"}}"#);
            let vn = rt
                .load(&format!("bench{n}"), &plugin(), &cfg, caps)
                .unwrap();
            let mut w = vn.instance().unwrap();
            g.bench_function(format!("on_request_{n}_reads_warm"), |b| {
                b.iter(|| {
                    let (rep, verdict) = w.decide(RequestRep::new(msg.clone(), flow, None));
                    black_box((rep, verdict.unwrap()))
                })
            });
        }
    }
    let mut warm = v.instance().unwrap();
    g.bench_function("on_request_10_headers_warm", |b| {
        b.iter(|| {
            let (rep, verdict) = warm.decide(RequestRep::new(msg.clone(), flow, None));
            black_box((rep, verdict.unwrap()))
        })
    });
    let set = Arc::new(ArcSwap::from_pointee(PluginSet {
        generation: 1,
        entries: vec![ChainEntry {
            name: "bench".into(),
            version: Some(v.clone()),
            on_error: OnError::Reject,
        }],
    }));
    let mut chain = Chain::new(set, services, FallbackRouter(Fallback::Reject));
    g.bench_function("chain_route_10_headers", |b| {
        b.iter(|| black_box(chain.route(&msg, &flow, None)))
    });
    g.finish();
}

criterion_group!(plugin_benches, benches);
criterion_main!(plugin_benches);
