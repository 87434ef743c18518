//! Carrier trunking end to end: an agent (SIPp) calls out through weir to a
//! carrier stand-in (Kamailio, tests/kamailio/carrier.cfg) that challenges
//! every INVITE with 407; weir answers with the `[credentials.carrier]` that
//! carrier-trunk's target names, and the far end (SIPp) and the agent each see
//! consistent CSeq numbers, whichever side hangs up.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use weir_e2e::{free_port, plugin_wasm, Kamailio};

mod common;

use common::{check, setup, tail, uac, uas_filled};

#[test]
fn outbound_calls_answer_the_carriers_digest_challenge() {
    let carrier_port = free_port();
    let far_port = free_port();
    let mut s = setup(
        &[("carrier-trunk.wasm", plugin_wasm("carrier_trunk"))],
        &["carrier-trunk"],
        &format!(
            "[plugins.carrier-trunk.config]\n\
             carrier_ranges = [\"192.0.2.0/24\"]\n\
             agent_ranges = [\"127.0.0.0/8\"]\n\
             termination_uri = \"sip:127.0.0.1:{carrier_port}\"\n\
             credential = \"carrier\"\n\
             caller_id = \"+14155550199\"\n\
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
