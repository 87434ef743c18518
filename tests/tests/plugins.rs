//! Plugins end to end: SIPp calls routed by `agent-router` from registry entries
//! set through the admin API; hot reload under load. Faulty plugins under load
//! are in `plugin_faults.rs`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use weir_e2e::{free_port, http, http_with, install_file, plugin_wasm};

mod common;

use common::{check, setup, uac, uas};

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

/// The value of a string field in a JSON body (enough for these tests).
fn json_str(body: &str, field: &str) -> String {
    let v: serde_json::Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"));
    v[field].as_str().unwrap_or_default().to_string()
}

#[test]
fn calls_and_numbers_registered_through_the_api_reach_their_agent() {
    let mut s = setup(
        &[("agent-router.wasm", plugin_wasm("agent_router"))],
        &["agent-router"],
        "[plugins.agent-router]\ncapabilities = [\"registry\", \"log\", \"metrics\"]\n",
    );
    let uas_port = free_port();
    let agent = format!("sip:agent@127.0.0.1:{uas_port}");
    let body = format!(
        r#"{{"agent": "{agent}", "from": "+14155550100", "direction": "inbound", "metadata": {{"lead": "42"}}}}"#
    );
    let key = [("Idempotency-Key", "webhook-7f3a")];
    let (code, created) = http_with(s.admin, "POST", "/v1/calls", &key, &body);
    assert_eq!(code, 201, "{created}");
    let call_id = json_str(&created, "call_id");
    assert_eq!(
        json_str(&created, "sip_uri"),
        format!("sip:{call_id}@127.0.0.1:{}", s.proxy)
    );
    // The provider retries its webhook: the same call comes back.
    let (code, again) = http_with(s.admin, "POST", "/v1/calls", &key, &body);
    assert_eq!(code, 200, "{again}");
    assert_eq!(json_str(&again, "call_id"), call_id);
    // The same key with another request is a conflict, not a second call.
    let (code, resp) = http_with(
        s.admin,
        "POST",
        "/v1/calls",
        &key,
        &format!(r#"{{"agent": "{agent}"}}"#),
    );
    assert_eq!(code, 409, "{resp}");
    assert!(resp.contains("\"field\":\"Idempotency-Key\""), "{resp}");
    // Bad requests name the field.
    for (body, field) in [
        ("{}", "agent"),
        (r#"{"agent": ""}"#, "agent"),
        (r#"{"agent": "tel:+14155550100"}"#, "agent"),
        (r#"{"agent": "sales", "from": "4155550100"}"#, "from"),
        (r#"{"agent": "sales", "to": "+0123456789"}"#, "to"),
        (
            r#"{"agent": "sales", "direction": "sideways"}"#,
            "direction",
        ),
        (r#"{"agent": "sales", "metadata": [1]}"#, "metadata"),
        (r#"{"agent": "sales", "ttl_s": 0}"#, "ttl_s"),
        (r#"{"agent": "sales", "colour": "red"}"#, "colour"),
        ("[]", "body"),
    ] {
        let (code, resp) = http(s.admin, "POST", "/v1/calls", body);
        assert_eq!(code, 400, "{body}: {resp}");
        assert!(
            resp.contains(&format!("\"field\":\"{field}\"")),
            "{body}: {resp}"
        );
    }
    let (code, resp) = http_with(
        s.admin,
        "POST",
        "/v1/calls",
        &[("Idempotency-Key", "")],
        r#"{"agent": "sales"}"#,
    );
    assert!(code == 400 && resp.contains("Idempotency-Key"), "{resp}");

    // An INVITE to the returned URI reaches the registered agent.
    let server = uas(
        &s,
        "call-uas.xml",
        uas_port,
        2,
        &[],
        Duration::from_secs(30),
    );
    std::thread::sleep(Duration::from_millis(300));
    let client = uac(
        &s,
        "call-uac.xml",
        &[],
        &call_id,
        1,
        1,
        Duration::from_secs(20),
    );
    check(
        &mut s,
        "a call to the registered URI",
        &client.wait(Duration::from_secs(25)),
        1,
    );
    let (code, got) = http(s.admin, "GET", &format!("/v1/calls/{call_id}"), "");
    assert_eq!(code, 200);
    assert!(
        got.contains("\"used\":true") && got.contains("\"lead\":\"42\""),
        "{got}"
    );

    // An imported number routes its (national) dialled form to its agent.
    let (code, resp) = http(
        s.admin,
        "PUT",
        "/v1/numbers/+14155550123",
        &format!(r#"{{"agent": "{agent}", "trunk": "twilio-us1"}}"#),
    );
    assert_eq!(code, 201, "{resp}");
    let (code, resp) = http(s.admin, "GET", "/v1/numbers/+14155550123", "");
    assert!(
        code == 200 && resp.contains("\"trunk\":\"twilio-us1\""),
        "{resp}"
    );
    for (path, body, field) in [
        ("/v1/numbers/4155550123", r#"{"agent": "sales"}"#, "number"),
        ("/v1/numbers/+14155550123", r#"{"trunk": "t"}"#, "agent"),
        (
            "/v1/numbers/+14155550123",
            r#"{"agent": "sales", "trunk": "a b"}"#,
            "trunk",
        ),
    ] {
        let (code, resp) = http(s.admin, "PUT", path, body);
        assert_eq!(code, 400, "{path} {body}: {resp}");
        assert!(resp.contains(&format!("\"field\":\"{field}\"")), "{resp}");
    }
    let client = uac(
        &s,
        "call-uac.xml",
        &[],
        "4155550123",
        1,
        1,
        Duration::from_secs(20),
    );
    check(
        &mut s,
        "a call to an imported number",
        &client.wait(Duration::from_secs(25)),
        1,
    );
    check(
        &mut s,
        "the agent (UAS)",
        &server.wait(Duration::from_secs(10)),
        2,
    );
    for path in [
        format!("/v1/calls/{call_id}"),
        "/v1/numbers/+14155550123".into(),
    ] {
        assert_eq!(http(s.admin, "DELETE", &path, "").0, 204, "{path}");
        let (code, resp) = http(s.admin, "GET", &path, "");
        assert_eq!(code, 404, "{path}: {resp}");
    }
}
