//! Inputs that once broke us (tests/regressions/), each with the behaviour it must keep.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

use bytes::Bytes;
use weir_sip::fuzzing::{exercise_framer, exercise_message, exercise_proxy};
use weir_sip::proxy::{Fallback, FallbackRouter, Flow, Listener, Proxy, ProxyConfig, Transport};
use weir_sip::{Framing, Message};

fn read(name: &str) -> Vec<u8> {
    std::fs::read(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/regressions")
            .join(name),
    )
    .unwrap()
}

#[test]
fn every_regression_input_survives_parser_framer_and_proxy() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/regressions");
    let mut n = 0;
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        if e.file_name() == "README.md" {
            continue;
        }
        let data = std::fs::read(e.path()).unwrap();
        exercise_message(&data);
        exercise_framer(&data);
        exercise_proxy(&data);
        n += 1;
    }
    assert!(n >= 1);
}

#[test]
fn unsupported_version_in_via_still_gets_505() {
    let local = "127.0.0.1:5060".parse().unwrap();
    let mut p = Proxy::new(
        ProxyConfig::new(vec![Listener::new(Transport::Udp, local)]),
        Box::new(FallbackRouter(Fallback::RequestUri)),
        1,
    );
    let flow = Flow {
        transport: Transport::Udp,
        local,
        remote: "127.0.0.1:5070".parse().unwrap(),
        conn: None,
    };
    p.handle_input(
        std::time::Instant::now(),
        flow,
        Bytes::from(read("unsupported-version-in-via.sip")),
    );
    let t = p.poll_transmit().expect("an answer");
    let r = Message::parse(t.bytes, Framing::Exact).unwrap();
    assert_eq!(r.status(), Some(505));
    assert_eq!(
        t.remote,
        "127.0.0.1:5060".parse().unwrap(),
        "to the Via port at the source address"
    );
}

#[test]
fn empty_header_name_in_a_stream_does_not_panic() {
    let data = read("empty-header-name-in-stream.sip");
    assert_eq!(
        weir_sip::headers::HeaderName::classify(b""),
        weir_sip::headers::HeaderName::Other
    );
    exercise_framer(&data);
    let mut f = weir_sip::framing::StreamFramer::new(65_535);
    f.push(b"OPTIONS sip:a SIP/2.0\r\n: 5\r\nContent-Length: 0\r\n\r\n");
    assert!(matches!(
        f.poll(),
        Ok(Some(weir_sip::framing::StreamItem::Message(_)))
    ));
}
