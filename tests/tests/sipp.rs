//! SIPp UAC → weir → SIPp UAS, over UDP, TCP, TCP-to-UDP and IPv6. The UAS
//! scenarios fail a call when a request did not come through the proxy (its Via
//! must be on top), so "every call succeeded" means every INVITE, ACK, BYE,
//! CANCEL and re-INVITE crossed weir.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::time::Duration;

use weir_e2e::{free_port, require, scenario, tempdir, Sipp, Weir};

struct Net {
    /// `127.0.0.1` or `::1`
    ip: &'static str,
}

impl Net {
    fn addr(&self, port: u16) -> String {
        if self.ip.contains(':') {
            format!("[{}]:{port}", self.ip)
        } else {
            format!("{}:{port}", self.ip)
        }
    }
}

const V4: Net = Net { ip: "127.0.0.1" };
const V6: Net = Net { ip: "::1" };

struct Setup {
    weir: Weir,
    proxy: u16,
    dir: tempdir::Dir,
}

fn setup() -> Setup {
    require("sipp", "sip-tester");
    let proxy = free_port();
    let config = format!(
        "[sip]\nlisten = [\"udp:127.0.0.1:{proxy}\", \"tcp:127.0.0.1:{proxy}\", \"udp:[::1]:{proxy}\", \"tcp:[::1]:{proxy}\"]\n\
         t1 = \"100ms\"\n[log]\nlevel = \"info\"\n"
    );
    let weir = Weir::start(&config, format!("127.0.0.1:{proxy}").parse().unwrap());
    Setup {
        weir,
        proxy,
        dir: tempdir::Dir::new("sipp"),
    }
}

/// One flow: a UAS and a UAC scenario, `calls` calls, over `transport` ("u1"/"t1").
#[allow(clippy::too_many_arguments)]
fn flow(
    s: &mut Setup,
    net: &Net,
    uac_transport: &str,
    uas_transport: &str,
    uac: (&str, &[(&str, &str)]),
    uas: (&str, &[(&str, &str)]),
    calls: u32,
    limit: Duration,
) {
    let uas_port = free_port();
    let uac_port = free_port();
    let uas_file = scenario(s.dir.path(), uas.0, uas.1);
    let uac_file = scenario(s.dir.path(), uac.0, uac.1);
    let label = format!(
        "{}-{}-{uac_transport}",
        uac.0.trim_end_matches(".xml"),
        net.ip.replace(':', "_")
    );
    let uas_run = Sipp::spawn(
        s.dir.path(),
        &format!("{label}-uas"),
        &[
            "-sf".into(),
            uas_file.display().to_string(),
            "-i".into(),
            net.ip.into(),
            "-p".into(),
            uas_port.to_string(),
            "-t".into(),
            uas_transport.into(),
            "-m".into(),
            calls.to_string(),
        ],
    );
    std::thread::sleep(Duration::from_millis(300));
    let uac_run = Sipp::spawn(
        s.dir.path(),
        &format!("{label}-uac"),
        &[
            "-sf".into(),
            uac_file.display().to_string(),
            "-s".into(),
            "callee".into(),
            "-i".into(),
            net.ip.into(),
            "-p".into(),
            uac_port.to_string(),
            net.addr(uas_port),
            "-rsa".into(),
            net.addr(s.proxy),
            "-t".into(),
            uac_transport.into(),
            "-m".into(),
            calls.to_string(),
            "-r".into(),
            "10".into(),
        ],
    );
    let uac_res = uac_run.wait(limit);
    let uas_res = uas_run.wait(Duration::from_secs(15));
    let ok = uac_res.code == Some(0)
        && uas_res.code == Some(0)
        && uac_res.successful == u64::from(calls)
        && uas_res.successful == u64::from(calls);
    if !ok {
        let kept = std::mem::replace(&mut s.dir, tempdir::Dir::new("sipp")).keep();
        panic!(
            "{label}: UAC {:?} ok={} failed={}, UAS {:?} ok={} failed={} (output kept in {})\n--- UAC ---\n{}\n--- UAS ---\n{}\n--- weir ---\n{}",
            uac_res.code,
            uac_res.successful,
            uac_res.failed,
            uas_res.code,
            uas_res.successful,
            uas_res.failed,
            kept.display(),
            tail(&uac_res.output),
            tail(&uas_res.output),
            tail(&s.weir.log_text()),
        );
    }
    assert!(s.weir.alive());
}

fn tail(s: &str) -> String {
    let lines: Vec<&str> = s.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

const SECS_20: Duration = Duration::from_secs(20);

fn all_flows(s: &mut Setup, net: &Net, t: &str) {
    flow(
        s,
        net,
        t,
        t,
        ("call-uac.xml", &[]),
        ("call-uas.xml", &[]),
        10,
        SECS_20,
    );
    flow(
        s,
        net,
        t,
        t,
        ("reinvite-uac.xml", &[]),
        ("call-uas.xml", &[]),
        5,
        SECS_20,
    );
    flow(
        s,
        net,
        t,
        t,
        ("cancel-uac.xml", &[]),
        ("cancel-uas.xml", &[]),
        5,
        SECS_20,
    );
    flow(
        s,
        net,
        t,
        t,
        ("busy-uac.xml", &[("@CODE@", "486")]),
        ("busy-uas.xml", &[]),
        5,
        SECS_20,
    );
    for method in ["OPTIONS", "MESSAGE"] {
        let m: &[(&str, &str)] = &[("@METHOD@", method)];
        flow(
            s,
            net,
            t,
            t,
            ("request-uac.xml", m),
            ("request-uas.xml", m),
            5,
            SECS_20,
        );
    }
}

#[test]
fn udp_calls_cancel_busy_reinvite_options_message() {
    let mut s = setup();
    all_flows(&mut s, &V4, "u1");
}

/// A cold transfer: the agent's REFER (Refer-To, Referred-By, User-to-User,
/// an X- header) reaches the carrier through the route set byte for byte, and
/// the carrier's NOTIFY with the sipfrag outcome comes back the same way.
#[test]
fn refer_and_its_notify_pass_through_with_uui_and_custom_headers() {
    let mut s = setup();
    for t in ["u1", "t1"] {
        flow(
            &mut s,
            &V4,
            t,
            t,
            ("refer-uac.xml", &[]),
            ("refer-uas.xml", &[]),
            5,
            SECS_20,
        );
    }
}

#[test]
fn tcp_calls_cancel_busy_reinvite_options_message() {
    let mut s = setup();
    all_flows(&mut s, &V4, "t1");
}

#[test]
fn ipv6_udp_and_tcp_calls() {
    let mut s = setup();
    flow(
        &mut s,
        &V6,
        "u1",
        "u1",
        ("call-uac.xml", &[]),
        ("call-uas.xml", &[]),
        5,
        SECS_20,
    );
    flow(
        &mut s,
        &V6,
        "t1",
        "t1",
        ("call-uac.xml", &[]),
        ("call-uas.xml", &[]),
        5,
        SECS_20,
    );
}

#[test]
fn tcp_caller_to_udp_callee_is_double_record_routed() {
    let mut s = setup();
    // The caller speaks TCP to weir; the Request-URI asks for UDP to the callee.
    let ruri: &[(&str, &str)] = &[(";transport=[transport] SIP/2.0", ";transport=udp SIP/2.0")];
    flow(
        &mut s,
        &V4,
        "t1",
        "u1",
        ("call-uac.xml", ruri),
        ("call-uas.xml", &[]),
        5,
        SECS_20,
    );
}

#[test]
fn unanswered_invite_gets_408_from_timer_b() {
    let mut s = setup();
    // T1 = 100 ms: Timer B fires after 6.4 s and the caller gets 408.
    for t in ["u1", "t1"] {
        flow(
            &mut s,
            &V4,
            t,
            t,
            ("busy-uac.xml", &[("@CODE@", "408")]),
            ("silent-uas.xml", &[]),
            2,
            Duration::from_secs(30),
        );
    }
}

#[test]
fn weir_answers_options_addressed_to_itself() {
    let s = setup();
    let to: SocketAddr = format!("127.0.0.1:{}", s.proxy).parse().unwrap();
    assert_eq!(
        weir_e2e::options_ping(to, Duration::from_secs(2)),
        Some(200)
    );
    let to6: SocketAddr = format!("[::1]:{}", s.proxy).parse().unwrap();
    assert_eq!(
        weir_e2e::options_ping(to6, Duration::from_secs(2)),
        Some(200)
    );
}
