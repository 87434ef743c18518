//! The runtime against real plugin components: routing, edits, sandbox limits,
//! bad files and bad answers. Needs the plugins built for wasm32-wasip2
//! (`scripts/build-plugins.sh`; the test script does it first).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use bytes::Bytes;
use weir_plugin_host::{
    Capabilities, Chain, ChainEntry, Limits, LoadError, MemoryRegistry, OnError, PluginSet,
    Registry, Runtime, Services,
};
use weir_sip::message::{Framing, Message};
use weir_sip::proxy::{Decision, Fallback, FallbackRouter, Flow, Router, Transport};

fn wasm(name: &str) -> Vec<u8> {
    let dir = std::env::var_os("WEIR_PLUGIN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../target/wasm32-wasip2/plugin")
        });
    let path = dir.join(format!("{name}.wasm"));
    std::fs::read(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e}; build the plugins first: scripts/build-plugins.sh",
            path.display()
        )
    })
}

fn runtime() -> (Runtime, Arc<MemoryRegistry>) {
    let registry = Arc::new(MemoryRegistry::new());
    let services = Arc::new(Services::new(registry.clone()));
    (Runtime::new(Limits::default(), services).unwrap(), registry)
}

fn all_caps() -> Capabilities {
    let mut c = Capabilities::default();
    c.grant("registry");
    c
}

fn chain(entries: Vec<ChainEntry>) -> Chain {
    let set = Arc::new(ArcSwap::from_pointee(PluginSet {
        generation: 1,
        entries,
    }));
    let services = Arc::new(Services::new(Arc::new(MemoryRegistry::new())));
    Chain::new(set, services, FallbackRouter(Fallback::Reject))
}

fn invite(user: &str) -> Arc<Message> {
    let text = format!(
        "INVITE sip:{user}@weir.example.com SIP/2.0\r\n\
Via: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK-{user}\r\n\
Max-Forwards: 70\r\n\
From: \"Carrier\" <sip:+14155550199@carrier.example.com>;tag=1\r\n\
To: <sip:{user}@weir.example.com>\r\n\
Call-ID: {user}-call@192.0.2.1\r\n\
CSeq: 1 INVITE\r\n\
X-Twilio-CallSid: CA123\r\n\
Content-Length: 0\r\n\r\n"
    );
    Arc::new(Message::parse(Bytes::from(text), Framing::Datagram).unwrap())
}

fn flow() -> Flow {
    Flow {
        transport: Transport::Udp,
        local: "127.0.0.1:5060".parse::<SocketAddr>().unwrap(),
        remote: "192.0.2.1:5060".parse().unwrap(),
        conn: None,
    }
}

fn entry(rt: &Runtime, name: &str, file: &str, config: &str, on_error: OnError) -> ChainEntry {
    let v = rt.load(name, &wasm(file), config, all_caps()).unwrap();
    ChainEntry {
        name: name.into(),
        version: Some(v),
        on_error,
    }
}

#[test]
fn agent_router_routes_from_the_registry() {
    let (rt, registry) = runtime();
    registry
        .set(
            "call:abc123",
            "sip:agent@10.0.0.7:5080",
            Duration::ZERO,
            Instant::now(),
        )
        .unwrap();
    let mut c = chain(vec![entry(
        &rt,
        "agent-router",
        "agent_router",
        "{}",
        OnError::Reject,
    )]);
    let r = c.route(&invite("abc123"), &flow(), None);
    assert!(
        matches!(&r.decision, Decision::Forward(t) if t.len() == 1 && t[0].uri == "sip:agent@10.0.0.7:5080"),
        "{r:?}"
    );
    assert!(r.pin.is_some(), "a forward pins the version for on-failure");
    let r = c.route(&invite("unknown"), &flow(), None);
    assert_eq!(
        r.decision,
        Decision::Reply {
            status: 404,
            reason: "No Agent For This Number".into()
        }
    );
}

#[test]
fn edits_reach_the_forwarded_request() {
    let (rt, _) = runtime();
    let mut c = chain(vec![entry(
        &rt,
        "t",
        "test_plugin",
        r#"{"target":"sip:uas@10.0.0.2"}"#,
        OnError::Reject,
    )]);
    let r = c.route(&invite("someone"), &flow(), None);
    let edited = r.edited.expect("the plugin stamped a header");
    let text = String::from_utf8_lossy(edited.as_bytes()).into_owned();
    assert!(
        text.contains("\r\nX-Plugin-Version: weir-test-version-000\r\n"),
        "{text}"
    );
    assert!(text.contains("\r\nX-Twilio-CallSid: CA123\r\n"), "{text}");
}

#[test]
fn capabilities_not_granted_refuse_the_load() {
    let (rt, _) = runtime();
    let e = rt
        .load(
            "agent-router",
            &wasm("agent_router"),
            "{}",
            Capabilities::default(),
        )
        .unwrap_err();
    assert_eq!(e, LoadError::Capability("registry".into()));
    assert!(e.to_string().contains("add \"registry\" to capabilities"));
}

#[test]
fn bad_files_never_load() {
    let (rt, _) = runtime();
    let caps = all_caps();
    let e = rt.load("x", b"not wasm at all", "{}", caps).unwrap_err();
    assert!(matches!(e, LoadError::Compile(_)), "{e}");
    let mut truncated = wasm("agent_router");
    truncated.truncate(truncated.len() / 2);
    assert!(matches!(
        rt.load("x", &truncated, "{}", caps),
        Err(LoadError::Compile(_))
    ));
    let core = b"\0asm\x01\0\0\0";
    assert!(matches!(
        rt.load("x", core, "{}", caps),
        Err(LoadError::NotAPlugin(_))
    ));
    let e = rt
        .load("x", &wasm("test_plugin"), r#"{"fail_init":true}"#, caps)
        .unwrap_err();
    assert_eq!(
        e,
        LoadError::Init("asked to fail (fail_init = true)".into())
    );
    let e = rt
        .load("x", &wasm("agent_router"), r#"{"nope":1}"#, caps)
        .unwrap_err();
    assert!(e.to_string().contains("config key nope is unknown"), "{e}");
}

/// Replaces every occurrence of `from` with `to` (same length).
fn patch(bytes: &[u8], from: &[u8], to: &[u8]) -> Vec<u8> {
    assert_eq!(from.len(), to.len());
    let mut out = bytes.to_vec();
    let mut n = 0;
    let mut i = 0;
    while i + from.len() <= out.len() {
        if &out[i..i + from.len()] == from {
            out[i..i + from.len()].copy_from_slice(to);
            n += 1;
            i += from.len();
        } else {
            i += 1;
        }
    }
    assert!(n > 0, "nothing to patch");
    out
}

#[test]
fn another_world_version_is_named() {
    let (rt, _) = runtime();
    let other = patch(
        &wasm("test_plugin"),
        b"weir:proxy/handler@0.2.0",
        b"weir:proxy/handler@0.9.0",
    );
    let other = patch(&other, b"weir:proxy/types@0.2.0", b"weir:proxy/types@0.9.0");
    let e = rt.load("old", &other, "{}", all_caps()).unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.contains("weir:proxy@0.9.0") && msg.contains("weir:proxy@0.2.0"),
        "{msg}"
    );
}

#[test]
fn patched_versions_load_as_new_versions() {
    let (rt, _) = runtime();
    let v1 = rt
        .load("t", &wasm("test_plugin"), "{}", all_caps())
        .unwrap();
    let bytes = patch(
        &wasm("test_plugin"),
        b"weir-test-version-000",
        b"weir-test-version-007",
    );
    let v2 = rt.load("t", &bytes, "{}", all_caps()).unwrap();
    assert_ne!(v1.hash, v2.hash);
    assert_ne!(v1.id, v2.id);
    let mut c = chain(vec![ChainEntry {
        name: "t".into(),
        version: Some(v2),
        on_error: OnError::Reject,
    }]);
    let r = c.route(&invite("x"), &flow(), None);
    let text = String::from_utf8_lossy(r.edited.unwrap().as_bytes()).into_owned();
    assert!(
        text.contains("X-Plugin-Version: weir-test-version-007"),
        "{text}"
    );
}

fn fault_chain(rt: &Runtime, fault: &str, on_error: OnError) -> Chain {
    let cfg = format!(r#"{{"fault":"{fault}","target":"sip:uas@10.0.0.2"}}"#);
    chain(vec![entry(rt, "faulty", "test_plugin", &cfg, on_error)])
}

fn assert_rejected_naming(r: &weir_sip::proxy::Routed) {
    assert_eq!(
        r.decision,
        Decision::Reply {
            status: 500,
            reason: "Server Internal Error (plugin faulty failed)".into()
        }
    );
}

#[test]
fn traps_cost_one_request_and_the_next_is_served() {
    let (rt, _) = runtime();
    for fault in ["panic", "memory", "loop"] {
        let mut c = fault_chain(&rt, fault, OnError::Reject);
        let started = Instant::now();
        let r = c.route(&invite("fault1"), &flow(), None);
        let took = started.elapsed();
        assert_rejected_naming(&r);
        // The deadline is 10 ms; the answer is due within deadline + 5 ms.
        assert!(
            took < Duration::from_millis(15) || fault != "loop",
            "{fault}: {took:?}"
        );
        let r = c.route(&invite("healthy"), &flow(), None);
        assert!(matches!(r.decision, Decision::Forward(_)), "{fault}: {r:?}");
    }
}

#[test]
fn bad_answers_follow_the_policy() {
    let (rt, _) = runtime();
    for fault in ["bad-uri", "bad-status", "guarded"] {
        let mut c = fault_chain(&rt, fault, OnError::Reject);
        assert_rejected_naming(&c.route(&invite("fault1"), &flow(), None));
        // Continue: the fallback decides (Reject here: 404).
        let mut c = fault_chain(&rt, fault, OnError::Continue);
        let r = c.route(&invite("fault1"), &flow(), None);
        assert!(
            matches!(r.decision, Decision::Reply { status: 404, .. }),
            "{fault}: {r:?}"
        );
    }
}

#[test]
fn continue_passes_along_the_chain() {
    let (rt, registry) = runtime();
    registry
        .set(
            "num:+14155550100",
            "sip:sales@10.0.0.8",
            Duration::ZERO,
            Instant::now(),
        )
        .unwrap();
    // agent-router passes REGISTER on; the test plugin forwards it.
    let mut c = chain(vec![
        entry(&rt, "agent-router", "agent_router", "{}", OnError::Reject),
        entry(
            &rt,
            "t",
            "test_plugin",
            r#"{"target":"sip:registrar@10.0.0.3"}"#,
            OnError::Reject,
        ),
    ]);
    let reg = "REGISTER sip:weir.example.com SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.1;branch=z9hG4bKr\r\n\
From: <sip:a@weir.example.com>;tag=1\r\nTo: <sip:a@weir.example.com>\r\nCall-ID: r1\r\nCSeq: 1 REGISTER\r\n\
Content-Length: 0\r\n\r\n";
    let reg = Arc::new(Message::parse(Bytes::from(reg), Framing::Datagram).unwrap());
    let r = c.route(&reg, &flow(), None);
    assert!(
        matches!(&r.decision, Decision::Forward(t) if t[0].uri == "sip:registrar@10.0.0.3"),
        "{r:?}"
    );
    let r = c.route(&invite("4155550100"), &flow(), None);
    assert!(
        matches!(&r.decision, Decision::Forward(t) if t[0].uri == "sip:sales@10.0.0.8"),
        "{r:?}"
    );
}

#[test]
fn a_missing_plugin_follows_its_policy() {
    let mut c = chain(vec![ChainEntry {
        name: "gone".into(),
        version: None,
        on_error: OnError::Reject,
    }]);
    let r = c.route(&invite("x"), &flow(), None);
    assert!(
        matches!(&r.decision, Decision::Reply { status: 500, reason } if reason.contains("plugin gone"))
    );
    let mut c = chain(vec![ChainEntry {
        name: "gone".into(),
        version: None,
        on_error: OnError::Continue,
    }]);
    assert!(matches!(
        c.route(&invite("x"), &flow(), None).decision,
        Decision::Reply { status: 404, .. }
    ));
}
