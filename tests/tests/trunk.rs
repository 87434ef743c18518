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

use common::{check, setup, setup_with, uac, uac_to, uas, uas_filled};
use weir_e2e::tail;

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

/// Polls weir's `/v1/upstream-registrations` until `name` is in `state`.
fn upstream_state(
    s: &common::Setup,
    name: &str,
    state: &str,
    limit: Duration,
) -> serde_json::Value {
    let deadline = std::time::Instant::now() + limit;
    loop {
        let (_, body) = http(s.admin, "GET", "/v1/upstream-registrations", "");
        let all: serde_json::Value = serde_json::from_str(&body).unwrap();
        let entry = all["registrations"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["name"] == name)
            .cloned();
        match entry {
            Some(e) if e["state"] == state => return e,
            Some(e) if std::time::Instant::now() > deadline => return e,
            None if std::time::Instant::now() > deadline => panic!("{name} is not listed: {body}"),
            _ => {}
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn weir_registers_with_the_carrier_refreshes_and_receives_calls_for_the_number() {
    let registrar_port = free_port();
    let agent_port = free_port();
    // Asks for 5 s; the carrier wants at least 10 (423), then challenges (401).
    let mut s = setup(
        &[("agent-router.wasm", plugin_wasm("agent_router"))],
        &["agent-router"],
        &format!(
            "[plugins.agent-router]\ncapabilities = [\"registry\", \"log\", \"metrics\"]\n\
             [credentials.carrier]\nusername = \"weir-reg\"\npassword = \"s3cret-reg\"\n\
             [credentials.stale]\nusername = \"weir-reg\"\npassword = \"not-it\"\n\
             [[registrations]]\nname = \"carrier\"\nregistrar = \"sip:127.0.0.1:{registrar_port}\"\n\
             aor = \"sip:+14155550100@127.0.0.1\"\ncredential = \"carrier\"\nexpires = \"5s\"\n\
             [[registrations]]\nname = \"wrong-password\"\nregistrar = \"sip:127.0.0.1:{registrar_port}\"\n\
             aor = \"sip:+14155550111@127.0.0.1\"\ncredential = \"stale\"\n"
        ),
    );
    let carrier = Kamailio::start(
        "registrar.cfg",
        &[
            ("@PORT@", &registrar_port.to_string()),
            ("@USER@", "weir-reg"),
            ("@PASSWORD@", "s3cret-reg"),
            ("@MIN_EXPIRES@", "10"),
        ],
        format!("127.0.0.1:{registrar_port}").parse().unwrap(),
    );
    let entry = upstream_state(&s, "carrier", "registered", Duration::from_secs(10));
    assert_eq!(
        entry["state"],
        "registered",
        "{entry}\n{}",
        tail(&carrier.log_text())
    );
    assert_eq!(entry["last_answer"], "200 OK", "{entry}");
    // Granted 10 s (after the 423); some of it has passed.
    let left = entry["expires_in"].as_u64().unwrap();
    assert!(
        (1..=10).contains(&left),
        "{entry}\n{}",
        tail(&carrier.log_text())
    );
    let wrong = upstream_state(&s, "wrong-password", "failed", Duration::from_secs(5));
    assert_eq!(wrong["state"], "failed", "{wrong}");
    assert!(
        wrong["last_answer"]
            .as_str()
            .unwrap()
            .starts_with("401 Unauthorized"),
        "{wrong}"
    );

    // A call from the "PSTN" to the number reaches the carrier, which sends it
    // to weir's registered contact; agent-router takes it to the agent.
    let (code, body) = http(
        s.admin,
        "PUT",
        "/v1/registry/num:+14155550100",
        &format!("{{\"value\": \"sip:agent@127.0.0.1:{agent_port}\"}}"),
    );
    assert_eq!(code, 200, "{body}");
    let agent = uas(
        &s,
        "call-uas.xml",
        agent_port,
        3,
        &[],
        Duration::from_secs(30),
    );
    std::thread::sleep(Duration::from_millis(300));
    let pstn = uac_to(
        &s,
        &format!("127.0.0.1:{registrar_port}"),
        "call-uac.xml",
        &[],
        "+14155550100",
        3,
        3,
        Duration::from_secs(30),
    );
    check(
        &mut s,
        "the PSTN caller",
        &pstn.wait(Duration::from_secs(40)),
        3,
    );
    check(&mut s, "the agent", &agent.wait(Duration::from_secs(10)), 3);

    // Refreshed before the 10 s run out, on the same Call-ID with rising CSeq:
    // by now (> 10 s after the first) at least two REGISTERs were accepted.
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    let accepted = loop {
        let log = carrier.log_text();
        let accepted: Vec<String> = log
            .lines()
            .filter(|l| l.contains(": registered sip:+14155550100@"))
            .map(str::to_string)
            .collect();
        if accepted.len() >= 2 || std::time::Instant::now() > deadline {
            break accepted;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(
        accepted.len() >= 2,
        "no refresh:\n{}",
        tail(&carrier.log_text())
    );
    let field = |line: &str, name: &str| -> String {
        line.split(&format!("{name} "))
            .nth(1)
            .and_then(|r| r.split(' ').next())
            .unwrap_or_default()
            .to_string()
    };
    let call_id = field(&accepted[0], "Call-ID");
    let mut last_cseq = 0;
    for line in &accepted {
        assert!(line.contains("Expires 10"), "{line}");
        assert_eq!(field(line, "Call-ID"), call_id, "{line}");
        let cseq: u32 = field(line, "CSeq").parse().unwrap();
        assert!(cseq > last_cseq, "CSeq must rise: {accepted:?}");
        last_cseq = cseq;
    }
    let log = carrier.log_text();
    assert!(
        log.contains("challenging REGISTER") && log.contains("Expires 5"),
        "{}",
        tail(&log)
    );
    let entry = upstream_state(&s, "carrier", "registered", Duration::from_secs(1));
    assert_eq!(entry["failures"], 0, "{entry}");
    let (_, metrics) = http(s.admin, "GET", "/metrics", "");
    assert!(
        metrics.contains("weir_upstream_registered{name=\"carrier\"} 1")
            && metrics.contains("weir_upstream_registered{name=\"wrong-password\"} 0"),
        "{metrics}"
    );
}
