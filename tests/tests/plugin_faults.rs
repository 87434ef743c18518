//! Faulty plugins under load: a plugin that panics, loops or eats memory on 1 %
//! of requests costs those requests a clean 500 within the deadline + 5 ms; every
//! other call completes and memory stays bounded. Its own test binary, so that
//! no other load test shares the two cores while it measures.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::UdpSocket;
use std::time::{Duration, Instant};

use common::{check, setup, uac, uas};
use weir_e2e::{free_port, plugin_wasm, rss_kib};

/// Sends one INVITE for `user` and returns the final status and how long it took.
fn timed_invite(proxy: u16, user: &str, n: u32) -> (u16, Duration) {
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let me = sock.local_addr().unwrap();
    let msg = format!(
        "INVITE sip:{user}@127.0.0.1:{proxy} SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch=z9hG4bK-t{n}-{}\r\n\
Max-Forwards: 70\r\nFrom: <sip:t@{me}>;tag=t{n}\r\nTo: <sip:{user}@127.0.0.1:{proxy}>\r\n\
Call-ID: timed-{n}-{}@test\r\nCSeq: 1 INVITE\r\nContact: <sip:t@{me}>\r\nContent-Length: 0\r\n\r\n",
        me.port(),
        me.port()
    );
    let started = Instant::now();
    sock.send_to(msg.as_bytes(), ("127.0.0.1", proxy)).unwrap();
    let mut buf = [0u8; 4096];
    loop {
        let (len, _) = sock.recv_from(&mut buf).expect("an answer within 2 s");
        let text = String::from_utf8_lossy(&buf[..len]);
        let status: u16 = text
            .split(' ')
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        if status >= 200 {
            return (status, started.elapsed());
        }
    }
}

#[test]
fn faulty_plugins_cost_only_their_own_requests() {
    for fault in ["panic", "loop", "memory"] {
        let uas_port = free_port();
        let mut s = setup(
            &[("test-plugin.wasm", plugin_wasm("test_plugin"))],
            &["test-plugin"],
            &format!(
                "[plugins.test-plugin]\non_error = \"reject\"\ncapabilities = [\"registry\"]\n\
                 [plugins.test-plugin.config]\ntarget = \"sip:callee@127.0.0.1:{uas_port}\"\nfault = \"{fault}\"\n"
            ),
        );
        let rss_before = rss_kib(s.weir.pid()).unwrap();
        // 99 calls a second that work (SIPp) and 1 that hits the fault (sent
        // and timed here): 1 %. Each faulty request is answered by policy (500)
        // within the deadline (10 ms) + 5 ms.
        let good = 990;
        let limit = Duration::from_secs(40);
        let server = uas(&s, "call-uas.xml", uas_port, good, &[], limit);
        std::thread::sleep(Duration::from_millis(300));
        let client = uac(&s, "call-uac.xml", &[], "callee", good, 99, limit);
        let mut samples: Vec<Duration> = Vec::new();
        for n in 0..10 {
            std::thread::sleep(Duration::from_millis(900));
            let (status, took) = timed_invite(s.proxy, "fault-timed", n);
            assert_eq!(status, 500, "{fault}");
            samples.push(took);
        }
        eprintln!("{fault}: faulty requests answered in {samples:?}");
        let slowest = samples.iter().max().copied().unwrap_or_default();
        assert!(
            slowest <= Duration::from_millis(15),
            "{fault}: the slowest faulty request took {slowest:?} (all: {samples:?})"
        );
        let c = client.wait(limit);
        check(
            &mut s,
            &format!("good calls beside {fault}"),
            &c,
            u64::from(good),
        );
        let u = server.wait(Duration::from_secs(10));
        check(
            &mut s,
            &format!("the UAS beside {fault}"),
            &u,
            u64::from(good),
        );
        let rss_after = rss_kib(s.weir.pid()).unwrap();
        assert!(
            rss_after < rss_before + 64 * 1024,
            "{fault}: memory grew from {rss_before} KiB to {rss_after} KiB"
        );
        let log = s.weir.log_text();
        assert!(
            log.contains("plugin failed") && log.contains("test-plugin"),
            "{fault}: the log names the plugin"
        );
        assert!(s.weir.alive());
    }
}
