//! Carrier trunking end to end: an agent (SIPp) calls out through weir to a
//! carrier stand-in (Kamailio, tests/kamailio/carrier.cfg) that challenges
//! every INVITE with 407; weir answers with the `[credentials.carrier]` that
//! carrier-trunk's target names, and the far end (SIPp) and the agent each see
//! consistent CSeq numbers, whichever side hangs up. Inbound: calls from the
//! carrier's range route by number; other sources are refused.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use weir_e2e::{free_port, http, plugin_wasm, Kamailio};

mod common;

use common::{check, setup, setup_with, tail, uac, uas, uas_filled};

#[test]
fn outbound_calls_answer_the_carriers_digest_challenge() {
    let carrier_port = free_port();
    let far_port = free_port();
    let mut s = setup(
        &[("carrier-trunk.wasm", plugin_wasm("carrier_trunk"))],
        &["carrier-trunk"],
        &format!(
            "[plugins.carrier-trunk]\ncapabilities = [\"registry\", \"acl\", \"log\", \"metrics\"]\n\
             [plugins.carrier-trunk.config]\n\
             carrier_ranges = [\"192.0.2.0/24\"]\n\
             agent_ranges = [\"127.0.0.0/8\"]\n\
             termination_uri = \"sip:127.0.0.1:{carrier_port}\"\n\
             credential = \"carrier\"\n\
             caller_id = \"+14155550199\"\n\
             assert_identity = true\n\
             [credentials.carrier]\nusername = \"weir-out\"\npassword = \"tr0mb0ne\"\n"
        ),
    );
    let carrier = Kamailio::start(
        "carrier.cfg",
        &[
            ("@PORT@", &carrier_port.to_string()),
            ("@UAS_PORT@", &far_port.to_string()),
            ("@USER@", "weir-out"),
            ("@PASSWORD@", "tr0mb0ne"),
        ],
        format!("127.0.0.1:{carrier_port}").parse().unwrap(),
    );
    for (hangup, calls) in [("caller", 10), ("callee", 10)] {
        let fill = [("@HANGUP@", hangup)];
        let far = uas_filled(
            &s,
            "trunk-uas.xml",
            &fill,
            far_port,
            calls,
            &[],
            Duration::from_secs(30),
        );
        std::thread::sleep(Duration::from_millis(300));
        let agent = uac(
            &s,
            "trunk-uac.xml",
            &fill,
            "+14155550100",
            calls,
            10,
            Duration::from_secs(30),
        );
        let a = agent.wait(Duration::from_secs(40));
        if a.successful != u64::from(calls) {
            eprintln!("--- carrier ---\n{}", tail(&carrier.log_text()));
        }
        check(
            &mut s,
            &format!("agent, {hangup} hangs up"),
            &a,
            calls.into(),
        );
        let f = far.wait(Duration::from_secs(10));
        check(
            &mut s,
            &format!("far end, {hangup} hangs up"),
            &f,
            calls.into(),
        );
    }
    // Every INVITE was challenged once and answered once.
    let log = carrier.log_text();
    assert_eq!(
        log.matches("challenging INVITE").count(),
        20,
        "{}",
        tail(&log)
    );
    assert_eq!(
        log.matches("authenticated weir-out").count(),
        20,
        "{}",
        tail(&log)
    );
}

/// An INVITE from `from` (a source address on loopback) to weir; the statuses
/// of the responses up to the first final one.
fn statuses_from(from: &str, proxy: u16, user: &str) -> Vec<u16> {
    let sock = std::net::UdpSocket::bind(format!("{from}:0")).unwrap();
    let me = sock.local_addr().unwrap();
    let invite = format!(
        "INVITE sip:{user}@127.0.0.1:{proxy} SIP/2.0\r\n\
         Via: SIP/2.0/UDP {me};branch=z9hG4bK-acl{port};rport\r\n\
         Max-Forwards: 70\r\nFrom: <sip:carrier@{me}>;tag=c1\r\n\
         To: <sip:{user}@127.0.0.1>\r\nCall-ID: acl-{port}@test\r\nCSeq: 1 INVITE\r\n\
         Contact: <sip:carrier@{me}>\r\nContent-Length: 0\r\n\r\n",
        port = me.port()
    );
    sock.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    sock.send_to(invite.as_bytes(), ("127.0.0.1", proxy))
        .unwrap();
    let mut buf = [0u8; 4096];
    let mut seen = Vec::new();
    while let Ok((n, _)) = sock.recv_from(&mut buf) {
        let status: u16 = String::from_utf8_lossy(&buf[..n])
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        seen.push(status);
        if status >= 200 {
            break;
        }
    }
    seen
}

#[test]
fn inbound_calls_route_by_number_from_the_carrier_only() {
    let far_port = free_port();
    let mut s = setup_with(
        &[
            ("carrier-trunk.wasm", plugin_wasm("carrier_trunk")),
            ("agent-router.wasm", plugin_wasm("agent_router")),
        ],
        &["carrier-trunk", "agent-router"],
        "accept_from = [\"carrier\", \"agents\"]\n",
        "[plugins.carrier-trunk]\ncapabilities = [\"registry\", \"acl\", \"log\", \"metrics\"]\n\
         [plugins.carrier-trunk.config]\ncarrier_ranges = [\"127.0.0.1/32\"]\n\
         agent_ranges = []\n\
         [plugins.agent-router]\ncapabilities = [\"registry\", \"log\", \"metrics\"]\n\
         [acl]\ncarrier = [\"127.0.0.1\"]\nagents = [\"127.0.0.3\"]\n",
    );
    let (code, body) = http(
        s.admin,
        "PUT",
        "/v1/registry/num:+14155550100",
        &format!("{{\"value\": \"sip:agent@127.0.0.1:{far_port}\"}}"),
    );
    assert_eq!(code, 200, "{body}");
    // From the carrier's range: the national number is normalised to E.164 by
    // carrier-trunk and routed by agent-router to the agent (a SIPp UAS).
    let agent = uas(
        &s,
        "call-uas.xml",
        far_port,
        5,
        &[],
        Duration::from_secs(30),
    );
    std::thread::sleep(Duration::from_millis(300));
    let carrier = uac(
        &s,
        "call-uac.xml",
        &[],
        "4155550100",
        5,
        5,
        Duration::from_secs(30),
    );
    check(
        &mut s,
        "inbound from the carrier",
        &carrier.wait(Duration::from_secs(40)),
        5,
    );
    check(&mut s, "the agent", &agent.wait(Duration::from_secs(10)), 5);
    // From anywhere else the global filter refuses at once, statelessly, before
    // any plugin runs; a source the filter lets in but carrier-trunk does not
    // know gets 100 Trying (a transaction) and then carrier-trunk's 403.
    assert_eq!(statuses_from("127.0.0.2", s.proxy, "4155550100"), [403]);
    assert_eq!(
        statuses_from("127.0.0.3", s.proxy, "4155550100"),
        [100, 403]
    );
    let log = s.weir.log_text();
    assert!(!log.contains("panicked"), "{}", tail(&log));
}
