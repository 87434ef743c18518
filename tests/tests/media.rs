//! The media relay end to end: SIPp calls with real RTP (SIPp's G.711 and
//! RFC 4733 pcaps, echoed by a SIPp UAS) through weir's relay, every packet
//! counted both ways; and the media timeout ending a call whose media
//! stopped with a BYE to each party.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::time::Duration;

use weir_e2e::{free_port, free_ports, metric, require, scenario, tempdir, Sipp, SippRun, Weir};

/// Packets in SIPp's g711a.pcap and dtmf_2833_1.pcap.
const AUDIO_PACKETS: u64 = 236;
const DTMF_PACKETS: u64 = 10;

struct Relayed {
    weir: Weir,
    proxy: u16,
    admin: SocketAddr,
    /// Regex alternatives of the relay's RTP ports.
    ports_regex: String,
    dir: tempdir::Dir,
}

/// weir on UDP with the relay on every call (`[media] mode = "always"`) over
/// a small port range of its own, and `extra` `[media]` keys.
fn relayed(extra: &str) -> Relayed {
    require("sipp", "sip-tester");
    let proxy = free_port();
    let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let first = free_ports(40);
    let first = first + first % 2;
    let config = format!(
        "[sip]\nlisten = [\"udp:127.0.0.1:{proxy}\"]\nt1 = \"100ms\"\n\
         [media]\nmode = \"always\"\nport_range = \"{first}-{}\"\n{extra}\n\
         [admin]\nlisten = \"{admin}\"\n",
        first + 37
    );
    let weir = Weir::start(&config, format!("127.0.0.1:{proxy}").parse().unwrap());
    let ports: Vec<String> = (first..first + 36)
        .step_by(2)
        .map(|p| p.to_string())
        .collect();
    Relayed {
        weir,
        proxy,
        admin,
        ports_regex: format!("({})", ports.join("|")),
        dir: tempdir::Dir::new("media-e2e"),
    }
}

fn sipp(r: &Relayed, label: &str, args: &[String]) -> Sipp {
    Sipp::spawn_for(r.dir.path(), label, args, Duration::from_secs(40))
}

fn args(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

/// Waits (at most 5 s) until the relay holds no session and `/metrics` (published
/// about once a second) shows it.
fn settle(r: &Relayed) {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while metric(r.admin, "weir_media_sessions") != 0 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    std::thread::sleep(Duration::from_millis(1200));
}

fn check(r: &mut Relayed, what: &str, run: &SippRun, calls: u64) {
    weir_e2e::check_run(&mut r.dir, &r.weir, what, run, calls);
}

/// A SIPp UAS echoing RTP on its media port (media-uas.xml), and a UAC
/// running `uac` (with `fill`) through weir: `calls` calls at once.
fn calls_through(
    r: &mut Relayed,
    uac: &str,
    fill: &[(&str, &str)],
    calls: u32,
) -> (SippRun, SippRun) {
    let uas_port = free_port();
    let (uas_media, uac_media) = (free_ports(4), free_ports(4));
    let ports = r.ports_regex.clone();
    let uas_file = scenario(
        r.dir.path(),
        "media-uas.xml",
        &[
            ("@RELAY_PORTS@", ports.as_str()),
            ("@MEDIA_IP@", "127.0.0.1"),
        ],
    );
    let uac_file = scenario(r.dir.path(), uac, fill);
    let uas = sipp(
        r,
        "uas",
        &args(&[
            "-sf",
            &uas_file.display().to_string(),
            "-i",
            "127.0.0.1",
            "-p",
            &uas_port.to_string(),
            "-mi",
            "127.0.0.1",
            "-mp",
            &uas_media.to_string(),
            "-rtp_echo",
            "-m",
            &calls.to_string(),
        ]),
    );
    let uac = sipp(
        r,
        "uac",
        &args(&[
            "-sf",
            &uac_file.display().to_string(),
            "-s",
            "agent",
            "-i",
            "127.0.0.1",
            "-p",
            &free_port().to_string(),
            "-mi",
            "127.0.0.1",
            "-mp",
            &uac_media.to_string(),
            "-rsa",
            &format!("127.0.0.1:{}", r.proxy),
            &format!("127.0.0.1:{uas_port}"),
            "-m",
            &calls.to_string(),
            "-r",
            "10",
        ]),
    );
    let uac = uac.wait(Duration::from_secs(40));
    let uas = uas.wait(Duration::from_secs(10));
    (uac, uas)
}

#[test]
fn rtp_and_dtmf_flow_both_ways_through_the_relay_with_no_loss() {
    let mut r = relayed("");
    let calls = 3;
    let ports = r.ports_regex.clone();
    let fill = [
        ("@RELAY_PORTS@", ports.as_str()),
        ("@MEDIA_IP@", "127.0.0.1"),
        ("@HOLD_MS@", "600"),
    ];
    let (uac, uas) = calls_through(&mut r, "media-uac.xml", &fill, calls);
    check(&mut r, "UAC", &uac, u64::from(calls));
    check(&mut r, "UAS", &uas, u64::from(calls));
    settle(&r);
    // Every packet the caller played went to the callee through the relay and
    // every echo came back through it: nothing lost, nothing refused.
    let sent = u64::from(calls) * (AUDIO_PACKETS + DTMF_PACKETS);
    let relayed = metric(r.admin, "weir_media_packets_total");
    eprintln!(
        "relayed {relayed} packets for {calls} calls ({sent} each way); dropped {}, malformed {}, send errors {}",
        metric(r.admin, "weir_media_dropped_source_total"),
        metric(r.admin, "weir_media_malformed_total"),
        metric(r.admin, "weir_media_send_errors_total")
    );
    assert_eq!(relayed, 2 * sent, "loss 0 both ways");
    assert_eq!(metric(r.admin, "weir_media_dropped_source_total"), 0);
    assert_eq!(metric(r.admin, "weir_media_malformed_total"), 0);
    // The BYEs gave every port back.
    assert_eq!(metric(r.admin, "weir_media_sessions"), 0);
    assert_eq!(metric(r.admin, "weir_media_ports_in_use"), 0);
}

#[test]
fn a_call_whose_media_stops_is_ended_with_a_bye_to_each_party() {
    let mut r = relayed("timeout = \"2s\"\n");
    let calls = 2;
    let started = std::time::Instant::now();
    // Neither party sends a packet: both get the proxy's BYE and answer it.
    let (uac, uas) = calls_through(
        &mut r,
        "media-timeout-uac.xml",
        &[("@MEDIA_IP@", "127.0.0.1")],
        calls,
    );
    check(&mut r, "UAC", &uac, u64::from(calls));
    check(&mut r, "UAS", &uas, u64::from(calls));
    let took = started.elapsed();
    eprintln!("calls ended by the media timeout after {took:?}");
    assert!(
        took >= Duration::from_secs(2),
        "not before the timeout: {took:?}"
    );
    settle(&r);
    assert_eq!(
        metric(r.admin, "weir_media_timeouts_total"),
        u64::from(calls)
    );
    assert_eq!(metric(r.admin, "weir_media_ports_in_use"), 0);
    assert!(
        r.weir
            .log_text()
            .contains("no media: call ended, BYE sent to each party"),
        "{}",
        r.weir.log_text()
    );
}

/// IP packets delivered to a protocol so far inside namespace `ns` (RTP and
/// SIP alike; counted whether or not the application reads its socket, which
/// SIPp's UAC does not do for media).
fn packets_delivered(ns: &str) -> u64 {
    let out = std::process::Command::new("ip")
        .args(["netns", "exec", ns, "cat", "/proc/net/snmp"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut ip = text.lines().filter(|l| l.starts_with("Ip:"));
    let (names, values) = (ip.next().unwrap(), ip.next().unwrap());
    let at = names
        .split_whitespace()
        .position(|n| n == "InDelivers")
        .unwrap();
    values.split_whitespace().nth(at).unwrap().parse().unwrap()
}

/// A carrier on a public network and an agent on a private one, weir between
/// them with an address on each (and no forwarding): the carrier cannot
/// reach the agent's private address, nor the agent the carrier's. The agent
/// (a SIPp UAS echoing RTP) answers with its private address in the SDP, the
/// carrier (a SIPp UAC) plays G.711 and DTMF. Datagrams each host receives
/// are counted by its kernel.
fn nat_call(media_mode: &str) -> Option<(u64, u64, String)> {
    require("sipp", "sip-tester");
    let tag = format!("{}{}", &media_mode[..2], std::process::id() % 10_000);
    let carrier = weir_e2e::Netns::create(&format!("c{tag}"))?;
    let edge = weir_e2e::Netns::create(&format!("e{tag}"))?;
    let agent = weir_e2e::Netns::create(&format!("a{tag}"))?;
    let run = |cmd: &str| {
        let args: Vec<&str> = cmd.split_whitespace().collect();
        let ok = std::process::Command::new("ip")
            .args(&args)
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "ip {cmd}");
    };
    run(&format!(
        "link add c0 netns {} type veth peer name e0 netns {}",
        carrier.name, edge.name
    ));
    run(&format!(
        "link add a0 netns {} type veth peer name e1 netns {}",
        agent.name, edge.name
    ));
    carrier.exec(&["ip", "addr", "add", "198.51.100.10/24", "dev", "c0"]);
    carrier.exec(&["ip", "link", "set", "c0", "up"]);
    edge.exec(&["ip", "addr", "add", "198.51.100.1/24", "dev", "e0"]);
    edge.exec(&["ip", "addr", "add", "10.20.0.1/24", "dev", "e1"]);
    edge.exec(&["ip", "link", "set", "e0", "up"]);
    edge.exec(&["ip", "link", "set", "e1", "up"]);
    agent.exec(&["ip", "addr", "add", "10.20.0.5/24", "dev", "a0"]);
    agent.exec(&["ip", "link", "set", "a0", "up"]);
    // The agent reaches the proxy's public address through its side of the
    // edge, as it would through a NAT.
    agent.exec(&["ip", "route", "add", "default", "via", "10.20.0.1"]);

    let config = format!(
        "[sip]\nlisten = [\"udp:0.0.0.0:5060\"]\nadvertise = \"198.51.100.1\"\nt1 = \"100ms\"\n\
         [media]\nmode = \"{media_mode}\"\nport_range = \"30000-30099\"\n"
    );
    let weir = Weir::start_in(&config, &edge.name);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !weir.log_text().contains("media relay") {
        assert!(
            std::time::Instant::now() < deadline,
            "weir did not start:\n{}",
            weir.log_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let dir = tempdir::Dir::new("media-nat");
    let any_port = "[0-9]+";
    let uas_file = scenario(
        dir.path(),
        "media-uas.xml",
        &[("@RELAY_PORTS@", any_port), ("@MEDIA_IP@", "10.20.0.5")],
    );
    let uac_file = scenario(
        dir.path(),
        "media-uac.xml",
        &[
            ("@RELAY_PORTS@", any_port),
            ("@MEDIA_IP@", "198.51.100.10"),
            ("@HOLD_MS@", "600"),
        ],
    );
    let (agent_before, carrier_before) = (
        packets_delivered(&agent.name),
        packets_delivered(&carrier.name),
    );
    let limit = Duration::from_secs(30);
    let uas = Sipp::spawn_in(
        &agent.name,
        dir.path(),
        "agent",
        &args(&[
            "-sf",
            &uas_file.display().to_string(),
            "-i",
            "10.20.0.5",
            "-p",
            "5080",
            "-mi",
            "10.20.0.5",
            "-mp",
            "40000",
            "-rtp_echo",
            "-m",
            "1",
        ]),
        limit,
    );
    let uac = Sipp::spawn_in(
        &carrier.name,
        dir.path(),
        "carrier",
        &args(&[
            "-sf",
            &uac_file.display().to_string(),
            "-s",
            "agent",
            "-i",
            "198.51.100.10",
            "-p",
            "5060",
            "-mi",
            "198.51.100.10",
            "-mp",
            "40000",
            "-rsa",
            "198.51.100.1:5060",
            "10.20.0.5:5080",
            "-m",
            "1",
        ]),
        limit,
    );
    let uac = uac.wait(limit);
    let uas = uas.wait(Duration::from_secs(10));
    let log = weir.log_text();
    for (what, run) in [("carrier", &uac), ("agent", &uas)] {
        assert!(
            run.code == Some(0) && run.successful == 1,
            "{what} ({media_mode}): {:?} {} ok\n{}\n--- weir ---\n{log}",
            run.code,
            run.successful,
            run.output
        );
    }
    Some((
        packets_delivered(&agent.name) - agent_before,
        packets_delivered(&carrier.name) - carrier_before,
        log,
    ))
}

#[test]
fn a_private_agent_address_means_no_audio_without_the_relay_and_audio_both_ways_with_it() {
    let Some((agent_got, carrier_got, _)) = nat_call("off") else {
        return;
    };
    eprintln!(
        "relay off: the agent's host received {agent_got} packets, the carrier's {carrier_got}"
    );
    // SIP only (INVITE, ACK, BYE and their answers, a few retransmissions):
    // not one of the 246 RTP packets reached either side.
    let audio = AUDIO_PACKETS + DTMF_PACKETS;
    assert!(
        agent_got < 20 && carrier_got < 20,
        "audio flowed without the relay"
    );

    let Some((agent_got, carrier_got, log)) = nat_call("auto") else {
        return;
    };
    eprintln!(
        "relay auto: the agent's host received {agent_got} packets, the carrier's {carrier_got}"
    );
    assert!(agent_got >= audio, "carrier → agent audio lost:\n{log}");
    assert!(carrier_got >= audio, "agent → carrier audio lost:\n{log}");
    assert!(
        log.contains("the target sip:agent@10.20.0.5:5080;transport=UDP is a private address"),
        "the auto relay names the call and the address:\n{log}"
    );
}
