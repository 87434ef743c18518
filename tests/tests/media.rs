//! The media relay end to end: SIPp calls with real RTP (SIPp's G.711 and
//! RFC 4733 pcaps, echoed by a SIPp UAS) through weir's relay, every packet
//! counted both ways; and the media timeout ending a call whose media
//! stopped with a BYE to each party.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::time::Duration;

use weir_e2e::{
    free_port, free_ports, http, metric, require, scenario, tempdir, Sipp, SippRun, Weir,
};

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

/// A SIPp UAS echoing RTP on its media port (media-uas.xml, answering
/// DTMF as the `@DTMF_PT@` of `fill`, else 101), and a UAC running `uac`
/// (with `fill`) through weir: `calls` calls at once; returns when both end.
fn calls_through(
    r: &mut Relayed,
    (uac, uas): (&str, &str),
    fill: &[(&str, &str)],
    calls: u32,
) -> (SippRun, SippRun) {
    let (uac, uas) = start_calls(r, (uac, uas), fill, calls);
    let uac = uac.wait(Duration::from_secs(40));
    let uas = uas.wait(Duration::from_secs(10));
    (uac, uas)
}

/// [`calls_through`] without waiting: the running UAC and UAS.
fn start_calls(
    r: &mut Relayed,
    (uac, uas): (&str, &str),
    fill: &[(&str, &str)],
    calls: u32,
) -> (Sipp, Sipp) {
    let uas_port = free_port();
    let (uas_media, uac_media) = (free_ports(4), free_ports(4));
    let ports = r.ports_regex.clone();
    let dtmf_pt = fill
        .iter()
        .find(|(k, _)| *k == "@DTMF_PT@")
        .map_or("101", |f| f.1);
    let uas_file = scenario(
        r.dir.path(),
        uas,
        &[
            ("@RELAY_PORTS@", ports.as_str()),
            ("@MEDIA_IP@", "127.0.0.1"),
            ("@DTMF_PT@", dtmf_pt),
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
    (uac, uas)
}

/// What media-uac.xml and media-uas.xml are filled with for a call through
/// the relay's `ports` (a regex), the callee answering DTMF as `dtmf_pt`.
fn media_fill<'a>(ports: &'a str, dtmf_pt: &'a str) -> [(&'static str, &'a str); 4] {
    [
        ("@RELAY_PORTS@", ports),
        ("@MEDIA_IP@", "127.0.0.1"),
        ("@HOLD_MS@", "600"),
        ("@DTMF_PT@", dtmf_pt),
    ]
}

/// The fields of weir's "relayed media ended" lines (one per stream of each
/// relayed call), as `name=value` text.
fn ended_streams(weir: &Weir) -> Vec<std::collections::HashMap<String, String>> {
    weir.log_text()
        .lines()
        .filter(|l| l.contains("relayed media ended"))
        .map(|l| {
            l.split_whitespace()
                .filter_map(|w| w.split_once('='))
                .map(|(k, v)| (k.to_string(), v.trim_matches('"').to_string()))
                .collect()
        })
        .collect()
}

fn num(fields: &std::collections::HashMap<String, String>, key: &str) -> f64 {
    fields
        .get(key)
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no number {key} in {fields:?}"))
}

/// The relay's report of the live calls (`GET /v1/media`).
fn live_calls(admin: SocketAddr) -> Vec<serde_json::Value> {
    let (status, body) = http(admin, "GET", "/v1/media", "");
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    v["calls"].as_array().unwrap().clone()
}

#[test]
fn rtp_and_dtmf_flow_both_ways_through_the_relay_with_no_loss() {
    let mut r = relayed("");
    let calls = 3;
    let ports = r.ports_regex.clone();
    let fill = media_fill(&ports, "101");
    let (uac, uas) = calls_through(&mut r, ("media-uac.xml", "media-uas.xml"), &fill, calls);
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
    // Per stream, as each call ended: every packet each way, in sequence.
    let streams = ended_streams(&r.weir);
    assert_eq!(streams.len(), calls as usize, "{streams:?}");
    for s in &streams {
        for party in ["caller", "callee"] {
            let n = |k: &str| num(s, &format!("{party}_{k}"));
            assert_eq!(n("packets"), sent as f64 / f64::from(calls), "{s:?}");
            assert_eq!(n("dtmf"), DTMF_PACKETS as f64, "{s:?}");
            assert_eq!(n("lost"), 0.0, "{s:?}");
            assert_eq!(n("renumbered"), 0.0, "both legs say 101: {s:?}");
            // SIPp plays its pcap on its own clock, over loopback.
            assert!(n("jitter_ms") < 20.0, "{s:?}");
        }
    }
    assert_eq!(metric(r.admin, "weir_media_packets_lost_total"), 0);
}

#[test]
fn dtmf_is_renumbered_when_the_callee_answers_with_another_payload_type() {
    // The caller offers DTMF as 101 and sends 101; the callee answers 96
    // (RFC 3264 allows it). The relay hands the callee 96; the callee's echo
    // of what it got (96) reaches the caller as 101 again.
    let mut r = relayed("");
    let ports = r.ports_regex.clone();
    let fill = media_fill(&ports, "96");
    let (uac, uas) = calls_through(&mut r, ("media-uac.xml", "media-uas.xml"), &fill, 1);
    check(&mut r, "UAC", &uac, 1);
    check(&mut r, "UAS", &uas, 1);
    settle(&r);
    let streams = ended_streams(&r.weir);
    assert_eq!(streams.len(), 1, "{streams:?}");
    let s = &streams[0];
    // The echo came back as 96 only if the callee was handed 96: each of the
    // ten event packets was renumbered on the way in and on the way back.
    for party in ["caller", "callee"] {
        let n = |k: &str| num(s, &format!("{party}_{k}"));
        assert_eq!(n("renumbered"), DTMF_PACKETS as f64, "{s:?}");
        assert_eq!(n("dtmf"), DTMF_PACKETS as f64, "{s:?}");
        assert_eq!(n("packets"), (AUDIO_PACKETS + DTMF_PACKETS) as f64, "{s:?}");
        assert_eq!(n("lost"), 0.0, "{s:?}");
    }
    assert_eq!(
        metric(r.admin, "weir_media_payload_types_mapped_total"),
        2 * DTMF_PACKETS
    );
}

#[test]
fn after_latching_ten_thousand_packets_from_another_source_are_all_dropped() {
    let mut r = relayed("");
    let ports = r.ports_regex.clone();
    let fill = media_fill(&ports, "101");
    let (uac, uas) = start_calls(&mut r, ("media-uac.xml", "media-uas.xml"), &fill, 1);
    // Wait (at most 5 s) until both parties are heard: both latched.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let call = loop {
        let calls = live_calls(r.admin);
        let heard = calls.first().filter(|c| {
            let s = &c["streams"][0];
            s["caller"]["sent"]["packets"].as_u64() > Some(0)
                && s["callee"]["sent"]["packets"].as_u64() > Some(0)
        });
        if let Some(c) = heard {
            break c.clone();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no call latched both ways: {calls:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let stream = &call["streams"][0];
    let caller = stream["caller"]["address"].as_str().unwrap().to_string();
    eprintln!("latched call: {call}");
    // 5,000 RTP packets at each of the relay's ports of the call, from a
    // socket that is neither party (same host, another port), paced so the
    // kernel's receive queue never overflows (each one must reach weir).
    let attacker = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    assert_ne!(attacker.local_addr().unwrap().to_string(), caller);
    let mut packet = vec![0x80, 8, 0, 0, 0, 0, 0, 0, 0xba, 0xd0, 0xba, 0xd0];
    packet.extend_from_slice(&[0x55; 160]);
    let mut sent = 0u64;
    for side in ["caller", "callee"] {
        let port = stream[side]["relay_port"].as_u64().unwrap();
        let to: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        for i in 0..5000u16 {
            packet[2..4].copy_from_slice(&i.to_be_bytes());
            attacker.send_to(&packet, to).unwrap();
            sent += 1;
            if i % 100 == 99 {
                std::thread::sleep(Duration::from_millis(2));
            }
        }
    }
    // The call's own count says where they went (at most 3 s to drain).
    let call_id = call["call_id"].as_str().unwrap().to_string();
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    let dropped = loop {
        let (status, body) = http(r.admin, "GET", &format!("/v1/media/{call_id}"), "");
        assert_eq!(status, 200, "{body}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        let dropped = v["calls"][0]["dropped_source"].as_u64().unwrap();
        if dropped >= sent || std::time::Instant::now() >= deadline {
            break dropped;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(dropped, sent, "every injected packet dropped");
    let uac = uac.wait(Duration::from_secs(40));
    let uas = uas.wait(Duration::from_secs(10));
    check(&mut r, "UAC", &uac, 1);
    check(&mut r, "UAS", &uas, 1);
    settle(&r);
    // None was relayed: the relay moved exactly the call's own packets (the
    // UAS echoes whatever reaches it, so an injected one would count twice).
    assert_eq!(
        metric(r.admin, "weir_media_packets_total"),
        2 * (AUDIO_PACKETS + DTMF_PACKETS)
    );
    assert_eq!(metric(r.admin, "weir_media_dropped_source_total"), sent);
    let streams = ended_streams(&r.weir);
    assert_eq!(num(&streams[0], "caller_lost"), 0.0, "{streams:?}");
    assert_eq!(num(&streams[0], "dropped_source"), sent as f64);
    // A Call-ID the relay does not hold: 404 naming the field.
    let (status, body) = http(r.admin, "GET", "/v1/media/no-such-call", "");
    assert_eq!(status, 404);
    assert!(body.contains("\"field\":\"call_id\""), "{body}");
    let (status, body) = http(r.admin, "GET", "/v1/media?limit=0", "");
    assert_eq!(status, 400);
    assert!(body.contains("\"field\":\"limit\""), "{body}");
}

#[test]
fn a_call_whose_media_stops_is_ended_with_a_bye_to_each_party() {
    let mut r = relayed("timeout = \"2s\"\n");
    let calls = 2;
    let started = std::time::Instant::now();
    // Neither party sends a packet: both get the proxy's BYE and answer it.
    let (uac, uas) = calls_through(
        &mut r,
        ("media-timeout-uac.xml", "media-uas.xml"),
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

#[test]
fn a_call_on_hold_waits_the_hold_timeout_before_its_silence_ends_it() {
    // No media at all; the caller puts the call on hold (re-INVITE,
    // a=sendonly; the callee answers a=recvonly) right after it is answered.
    // Silence on hold is expected: not ended at `timeout` (2 s) but at
    // `hold_timeout` (5 s), with a BYE to each party saying why.
    let mut r = relayed("timeout = \"2s\"\nhold_timeout = \"5s\"\n");
    let ports = r.ports_regex.clone();
    let started = std::time::Instant::now();
    let (uac, uas) = calls_through(
        &mut r,
        ("media-hold-uac.xml", "media-hold-uas.xml"),
        &[
            ("@RELAY_PORTS@", ports.as_str()),
            ("@MEDIA_IP@", "127.0.0.1"),
            ("@DTMF_PT@", "101"),
        ],
        1,
    );
    check(&mut r, "UAC", &uac, 1);
    check(&mut r, "UAS", &uas, 1);
    let took = started.elapsed();
    eprintln!("the held call was ended after {took:?}");
    assert!(
        took >= Duration::from_secs(5),
        "ended before the hold timeout: {took:?}"
    );
    settle(&r);
    assert_eq!(metric(r.admin, "weir_media_timeouts_total"), 1);
    assert_eq!(metric(r.admin, "weir_media_ports_in_use"), 0);
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
        &[
            ("@RELAY_PORTS@", any_port),
            ("@MEDIA_IP@", "10.20.0.5"),
            ("@DTMF_PT@", "101"),
        ],
    );
    let uac_file = scenario(
        dir.path(),
        "media-uac.xml",
        &[
            ("@RELAY_PORTS@", any_port),
            ("@MEDIA_IP@", "198.51.100.10"),
            ("@HOLD_MS@", "600"),
            ("@DTMF_PT@", "101"),
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
