//! Plugins end to end: SIPp calls routed by `agent-router` from registry entries
//! set through the admin API; hot reload under load; faulty plugins under load.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::{SocketAddr, UdpSocket};
use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use weir_e2e::{
    free_port, http, install_file, plugin_wasm, require, rss_kib, scenario, tempdir, Sipp, SippRun,
    Weir,
};

struct Setup {
    weir: Weir,
    proxy: u16,
    admin: SocketAddr,
    plugins: tempdir::Dir,
    dir: tempdir::Dir,
}

/// weir on UDP with `plugin_toml` (the [plugins.*] tables) and plugin files in a
/// fresh folder.
fn setup(files: &[(&str, Vec<u8>)], chain: &[&str], plugin_toml: &str) -> Setup {
    require("sipp", "sip-tester");
    let plugins = tempdir::Dir::new("plugins");
    for (name, bytes) in files {
        install_file(plugins.path(), name, bytes);
    }
    let proxy = free_port();
    let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let chain: Vec<String> = chain.iter().map(|c| format!("\"{c}\"")).collect();
    let config = format!(
        "[sip]\nlisten = [\"udp:127.0.0.1:{proxy}\"]\nt1 = \"100ms\"\n\
         [plugins]\ndir = \"{}\"\nchain = [{}]\n{plugin_toml}\n\
         [admin]\nlisten = \"{admin}\"\n",
        plugins.path().display(),
        chain.join(", ")
    );
    let weir = Weir::start(&config, format!("127.0.0.1:{proxy}").parse().unwrap());
    Setup {
        weir,
        proxy,
        admin,
        plugins,
        dir: tempdir::Dir::new("plugins-e2e"),
    }
}

fn uas(s: &Setup, file: &str, port: u16, calls: u32, extra: &[&str], limit: Duration) -> Sipp {
    let f = scenario(s.dir.path(), file, &[]);
    let mut args = vec![
        "-sf".to_string(),
        f.display().to_string(),
        "-i".into(),
        "127.0.0.1".into(),
        "-p".into(),
        port.to_string(),
        "-m".into(),
        calls.to_string(),
    ];
    args.extend(extra.iter().map(|a| a.to_string()));
    Sipp::spawn_for(s.dir.path(), &format!("uas-{port}"), &args, limit)
}

/// A UAC calling `sip:USER@weir` (the Request-URI names the proxy: only a plugin
/// can route it).
#[allow(clippy::too_many_arguments)]
fn uac(
    s: &Setup,
    file: &str,
    fill: &[(&str, &str)],
    user: &str,
    calls: u32,
    rate: u32,
    limit: Duration,
) -> Sipp {
    let f = scenario(s.dir.path(), file, fill);
    let port = free_port();
    let args = vec![
        "-sf".to_string(),
        f.display().to_string(),
        "-s".into(),
        user.into(),
        "-i".into(),
        "127.0.0.1".into(),
        "-p".into(),
        port.to_string(),
        format!("127.0.0.1:{}", s.proxy),
        "-m".into(),
        calls.to_string(),
        "-r".into(),
        rate.to_string(),
    ];
    Sipp::spawn_for(s.dir.path(), &format!("uac-{user}-{port}"), &args, limit)
}

fn check(s: &mut Setup, what: &str, run: &SippRun, calls: u64) {
    if run.code != Some(0) || run.successful != calls || run.failed != 0 {
        let kept = std::mem::replace(&mut s.dir, tempdir::Dir::new("kept")).keep();
        panic!(
            "{what}: exit {:?}, {} ok, {} failed, {calls} expected (kept {})\n{}\n--- weir ---\n{}",
            run.code,
            run.successful,
            run.failed,
            kept.display(),
            tail(&run.output),
            tail(&s.weir.log_text())
        );
    }
}

fn tail(s: &str) -> String {
    let lines: Vec<&str> = s.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

#[test]
fn calls_follow_registry_entries_set_through_the_admin_api() {
    let mut s = setup(
        &[("agent-router.wasm", plugin_wasm("agent_router"))],
        &["agent-router"],
        "[plugins.agent-router]\ncapabilities = [\"registry\", \"log\", \"metrics\"]\n",
    );
    let uas_port = free_port();
    let (code, body) = http(
        s.admin,
        "PUT",
        "/v1/registry/call:callee",
        &format!("{{\"value\": \"sip:callee@127.0.0.1:{uas_port}\", \"ttl_s\": 300}}"),
    );
    assert_eq!(code, 200, "{body}");
    // Bad bodies are refused, naming the field.
    for (body, field) in [
        ("{\"value\": 7}", "value"),
        ("{\"ttl_s\": 5}", "value"),
        ("{\"value\": \"sip:a@b\", \"ttl_s\": -1}", "ttl_s"),
        ("{\"value\": \"sip:a@b\", \"tll_s\": 5}", "tll_s"),
        ("not json", "body"),
    ] {
        let (code, resp) = http(s.admin, "PUT", "/v1/registry/call:x", body);
        assert_eq!(code, 400, "{body}: {resp}");
        assert!(
            resp.contains(&format!("\"field\":\"{field}\"")),
            "{body}: {resp}"
        );
    }
    let (code, body) = http(s.admin, "GET", "/v1/registry?prefix=call:", "");
    assert_eq!(code, 200);
    assert!(
        body.contains("\"key\":\"call:callee\"") && !body.contains("call:x"),
        "{body}"
    );
    let (code, body) = http(s.admin, "GET", "/v1/plugins", "");
    assert_eq!(code, 200);
    assert!(
        body.contains("\"name\":\"agent-router\"") && body.contains("\"state\":\"loaded\""),
        "{body}"
    );

    let server = uas(
        &s,
        "call-uas.xml",
        uas_port,
        20,
        &[],
        Duration::from_secs(30),
    );
    std::thread::sleep(Duration::from_millis(300));
    let client = uac(
        &s,
        "call-uac.xml",
        &[],
        "callee",
        20,
        20,
        Duration::from_secs(30),
    );
    let c = client.wait(Duration::from_secs(40));
    check(&mut s, "registered calls", &c, 20);
    let u = server.wait(Duration::from_secs(10));
    check(&mut s, "the agent (UAS)", &u, 20);

    // No entry: agent-router answers 404 itself.
    let nobody = uac(
        &s,
        "busy-uac.xml",
        &[("@CODE@", "404")],
        "nobody",
        1,
        1,
        Duration::from_secs(10),
    );
    check(
        &mut s,
        "an unknown call ID",
        &nobody.wait(Duration::from_secs(15)),
        1,
    );
    // Deleted entries stop routing.
    assert_eq!(
        http(s.admin, "DELETE", "/v1/registry/call:callee", "").0,
        204
    );
    let (code, body) = http(s.admin, "DELETE", "/v1/registry/call:callee", "");
    assert_eq!(code, 404);
    assert!(body.contains("\"field\":\"key\""), "{body}");
    let gone = uac(
        &s,
        "busy-uac.xml",
        &[("@CODE@", "404")],
        "callee",
        1,
        1,
        Duration::from_secs(10),
    );
    check(
        &mut s,
        "a deleted entry",
        &gone.wait(Duration::from_secs(15)),
        1,
    );
    assert!(s.weir.alive());
}

/// Replaces the version stamp in the test plugin (same length: still valid).
fn versioned(base: &[u8], v: u32) -> Vec<u8> {
    let from = b"weir-test-version-000";
    let to = format!("weir-test-version-{v:03}");
    let mut out = base.to_vec();
    let at = out
        .windows(from.len())
        .position(|w| w == from)
        .expect("the test plugin carries its version stamp");
    out[at..at + from.len()].copy_from_slice(to.as_bytes());
    out
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// (unix time, version) per INVITE the UAS saw, from its `-trace_logs` file.
fn stamps(dir: &Path) -> Vec<(f64, u32)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !(name.starts_with("stamp-uas") && name.ends_with("_logs.log")) {
            continue;
        }
        for line in std::fs::read_to_string(e.path()).unwrap().lines() {
            // "2026-11-29\t10:05:48.927734\t1795946748.927734 weir-test-version-000"
            let Some(rest) = line.split('\t').nth(2) else {
                continue;
            };
            let mut parts = rest.split_whitespace();
            let (Some(t), Some(v)) = (parts.next(), parts.next()) else {
                continue;
            };
            let (Ok(t), Some(Ok(v))) = (
                t.parse::<f64>(),
                v.strip_prefix("weir-test-version-").map(str::parse::<u32>),
            ) else {
                continue;
            };
            out.push((t, v));
        }
    }
    out
}

#[test]
fn hot_reload_under_load_drops_no_call() {
    const RATE: u32 = 200;
    const SECONDS: u32 = 60;
    const CALLS: u32 = RATE * SECONDS;
    let base = plugin_wasm("test_plugin");
    let uas_port = free_port();
    let mut s = setup(
        &[("test-plugin.wasm", base.clone())],
        &["test-plugin"],
        &format!(
            "[plugins.test-plugin]\ncapabilities = [\"registry\"]\n\
             [plugins.test-plugin.config]\ntarget = \"sip:callee@127.0.0.1:{uas_port}\"\n"
        ),
    );
    let limit = Duration::from_secs(u64::from(SECONDS) + 30);
    let server = uas(
        &s,
        "stamp-uas.xml",
        uas_port,
        CALLS,
        &["-trace_logs"],
        limit,
    );
    std::thread::sleep(Duration::from_millis(300));
    let client = uac(&s, "call-uac.xml", &[], "callee", CALLS, RATE, limit);
    // Ten new versions, one every 5 s from the 4th second; then a broken file.
    let started = Instant::now();
    let mut renames = Vec::new();
    for v in 1..=10u32 {
        let at = Duration::from_secs(4 + 5 * u64::from(v - 1));
        std::thread::sleep(at.saturating_sub(started.elapsed()));
        install_file(s.plugins.path(), "test-plugin.wasm", &versioned(&base, v));
        renames.push((unix_now(), v));
    }
    std::thread::sleep(Duration::from_secs(54).saturating_sub(started.elapsed()));
    install_file(
        s.plugins.path(),
        "test-plugin.wasm",
        b"\0asm this is not a component",
    );
    let broken_at = unix_now();
    let c = client.wait(limit);
    check(&mut s, "calls during ten reloads", &c, u64::from(CALLS));
    let u = server.wait(Duration::from_secs(20));
    check(&mut s, "the UAS during ten reloads", &u, u64::from(CALLS));

    let seen = stamps(s.dir.path());
    assert_eq!(seen.len(), CALLS as usize, "one stamp per INVITE");
    for &(t, v) in &seen {
        // The newest version renamed in at least 2 s before this INVITE.
        let due = renames
            .iter()
            .filter(|(at, _)| at + 2.0 <= t)
            .map(|(_, v)| *v)
            .max()
            .unwrap_or(0);
        assert!(
            v >= due,
            "an INVITE at {t:.3} carried version {v}; version {due} was due by then"
        );
    }
    for v in 0..=10 {
        assert!(
            seen.iter().any(|(_, s)| *s == v),
            "version {v} never served"
        );
    }
    // The broken file changed nothing: version 10 went on serving.
    assert!(seen
        .iter()
        .filter(|(t, _)| *t > broken_at + 0.5)
        .all(|(_, v)| *v == 10));
    let (_, body) = http(s.admin, "GET", "/v1/plugins", "");
    assert!(
        body.contains("\"state\":\"loaded\"") && body.contains("not a WebAssembly component"),
        "{body}"
    );
    assert!(s.weir.alive());
}

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
