//! Digest authentication of callers end to end, with the `sip-users` plugin
//! deciding `challenge` and `register`: real softphones (baresip) register
//! with their passwords and call each other through weir; SIPVicious `svcrack`
//! with a word list is banned before it reaches the password; `svwar` cannot
//! tell existing users from absent ones.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use weir_e2e::{
    baresip_config, free_port_pair, free_ports, have, http, options_ping, plugin_wasm, Program,
};

mod common;

use common::{setup_with, Setup};
use weir_e2e::tail;

const REALM: &str = "weir.test";

/// weir with `sip-users` for `weir.test`, these users, and more `[digest]` keys.
fn setup(users: &[(&str, &str)], digest_toml: &str) -> Setup {
    let mut toml = format!(
        "[plugins.sip-users]\ncapabilities = [\"location\", \"acl\", \"log\", \"metrics\"]\n\
         [plugins.sip-users.config]\nrealm = \"{REALM}\"\n\
         [digest]\n{digest_toml}\n"
    );
    for (user, password) in users {
        toml.push_str(&format!(
            "[[digest.users]]\nrealm = \"{REALM}\"\nusername = \"{user}\"\npassword = \"{password}\"\n"
        ));
    }
    setup_with(
        &[("sip-users.wasm", plugin_wasm("sip_users"))],
        &["sip-users"],
        "",
        &toml,
    )
}

fn skip_without(program: &str, package: &str) -> bool {
    if have(program) {
        return false;
    }
    eprintln!("SKIPPED: {program} is not installed (scripts/setup.sh test installs {package})");
    true
}

fn kept(s: &mut Setup) -> String {
    let dir = std::mem::replace(&mut s.dir, weir_e2e::tempdir::Dir::new("kept")).keep();
    format!(
        "kept {}\n--- weir ---\n{}",
        dir.display(),
        tail(&s.weir.log_text())
    )
}

/// A baresip user agent for `user` registered through weir.
fn softphone(s: &Setup, user: &str, password: &str, extra: &[&str]) -> Program {
    let dir = s.dir.path().join(user);
    let rtp = free_ports(21);
    baresip_config(
        &dir,
        free_port_pair(),
        (rtp, rtp.saturating_add(20)),
        &format!(
            "<sip:{user}@{REALM}>;auth_pass={password};outbound=\"sip:127.0.0.1:{}\";regint=600;answermode=auto",
            s.proxy
        ),
    );
    let dir_arg = dir.display().to_string();
    let mut args = vec!["-f", dir_arg.as_str()];
    args.extend_from_slice(extra);
    Program::spawn(s.dir.path(), &format!("baresip-{user}"), "baresip", &args)
}

/// Polls the admin API until `aor` has a binding (or `limit` passes).
fn registered(s: &Setup, aor: &str, limit: Duration) -> Option<String> {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        let (status, body) = http(s.admin, "GET", &format!("/v1/registrations/{aor}"), "");
        if status == 200 {
            return Some(body);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    None
}

#[test]
fn softphones_register_with_their_password_and_call_each_other() {
    if skip_without("baresip", "baresip") {
        return;
    }
    let mut s = setup(&[("alice", "wonder-land"), ("bob", "b0b-pw")], "");
    let bob = softphone(&s, "bob", "b0b-pw", &["-t", "30"]);
    let Some(binding) = registered(&s, "sip:bob@weir.test", Duration::from_secs(10)) else {
        panic!(
            "bob did not register\n--- baresip ---\n{}\n{}",
            tail(&bob.output()),
            kept(&mut s)
        );
    };
    assert!(binding.contains("\"transport\":\"udp\""), "{binding}");
    assert!(binding.contains("\"source\":\"127.0.0.1:"), "{binding}");
    // Alice calls bob: challenged, answers, reaches bob's registered contact.
    let alice = softphone(
        &s,
        "alice",
        "wonder-land",
        &["-e", "/dial sip:bob@weir.test", "-t", "6"],
    );
    let a = alice.wait(Duration::from_secs(20));
    if !a.output.contains("Call established: sip:bob@weir.test") {
        panic!(
            "the call was not established\n--- alice ---\n{}\n--- bob ---\n{}\n{}",
            tail(&a.output),
            tail(&bob.output()),
            kept(&mut s)
        );
    }
    assert!(
        bob.output().contains("answering call"),
        "{}",
        tail(&bob.output())
    );
    let (_, metrics) = http(s.admin, "GET", "/metrics", "");
    for counter in ["challenged", "registered", "to_registered"] {
        assert!(
            metrics.contains(&format!("name=\"{counter}\"}}")),
            "{counter} missing from\n{metrics}"
        );
    }
    // The operator can remove a binding; a second removal finds nothing.
    let (status, _) = http(s.admin, "DELETE", "/v1/registrations/sip:bob@weir.test", "");
    assert_eq!(status, 204);
    let (status, body) = http(s.admin, "DELETE", "/v1/registrations/sip:bob@weir.test", "");
    assert_eq!(status, 404, "{body}");
    let (status, body) = http(s.admin, "GET", "/v1/registrations/tel:+1", "");
    assert!(
        status == 400 && body.contains("\"field\":\"aor\""),
        "{body}"
    );
    // A wrong password registers nothing; the phone's retries soon get its
    // address banned (last: the ban would silence alice too).
    let mallory = softphone(&s, "alice", "guess", &["-t", "4"]);
    let m = mallory.wait(Duration::from_secs(10));
    let (status, _) = http(s.admin, "GET", "/v1/registrations/sip:alice@weir.test", "");
    assert_eq!(status, 404, "a wrong password registered alice");
    assert!(
        m.output.contains("401 Unauthorized")
            || m.output
                .contains("403 Forbidden (too many failed authentications)"),
        "{}",
        tail(&m.output)
    );
}

#[test]
fn svcrack_is_banned_before_it_reaches_the_password() {
    if skip_without("svcrack", "sipvicious") {
        return;
    }
    let password = "c0rrect-h0rse";
    let mut s = setup(
        &[("alice", password)],
        "ban_after = 5\nban_window = \"1m\"\nban_time = \"10m\"",
    );
    let words = |list: &[&str]| {
        let path = s.dir.path().join(format!("words-{}.txt", list.len()));
        std::fs::write(&path, list.join("\n") + "\n").unwrap();
        path.display().to_string()
    };
    let port = s.proxy.to_string();
    // The tool works against this proxy: with the password second in its
    // list (below the ban threshold) it finds it.
    let short = words(&["guess1", password]);
    let run = Program::spawn(
        s.dir.path(),
        "svcrack-short",
        "svcrack",
        &["-u", "alice", "-d", &short, "-p", &port, "127.0.0.1"],
    )
    .wait(Duration::from_secs(60));
    assert!(
        run.output.contains(password),
        "svcrack did not find a password it had: {}\n{}",
        tail(&run.output),
        kept(&mut s)
    );
    // With the password thirteenth it is banned first, and finds nothing.
    let mut list: Vec<String> = (1..=12).map(|i| format!("wrong{i}")).collect();
    list.push(password.to_string());
    list.extend((13..=15).map(|i| format!("wrong{i}")));
    let long = words(&list.iter().map(String::as_str).collect::<Vec<_>>());
    let run = Program::spawn(
        s.dir.path(),
        "svcrack-long",
        "svcrack",
        &["-u", "alice", "-d", &long, "-p", &port, "127.0.0.1"],
    )
    .wait(Duration::from_secs(90));
    if run.output.contains(password) || !run.output.contains("found nothing") {
        panic!(
            "svcrack was not stopped: {}\n{}",
            tail(&run.output),
            kept(&mut s)
        );
    }
    assert!(
        s.weir
            .log_text()
            .contains("source banned after failed authentications"),
        "{}",
        kept(&mut s)
    );
    let (_, metrics) = http(s.admin, "GET", "/metrics", "");
    let counter = |name: &str| -> u64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("{name} missing from\n{metrics}"))
    };
    assert!(
        counter("weir_sip_caller_auth_failures_total") >= 5,
        "{metrics}"
    );
    assert!(counter("weir_sip_refused_banned_total") >= 1, "{metrics}");
    assert!(counter("weir_sip_callers_verified_total") >= 1, "{metrics}");
    // Banned: even an OPTIONS from that address goes unanswered.
    let proxy = format!("127.0.0.1:{}", s.proxy).parse().unwrap();
    assert_eq!(options_ping(proxy, Duration::from_millis(500)), None);
}

#[test]
fn svwar_cannot_tell_existing_users_from_absent_ones() {
    if skip_without("svwar", "sipvicious") {
        return;
    }
    let mut s = setup(&[("alice", "a-pw"), ("bob", "b-pw")], "");
    let names = s.dir.path().join("names.txt");
    std::fs::write(&names, "zed\nalice\nbob\nyann\n").unwrap();
    let names = names.display().to_string();
    let port = s.proxy.to_string();
    for method in ["REGISTER", "INVITE", "OPTIONS"] {
        let run = Program::spawn(
            s.dir.path(),
            &format!("svwar-{method}"),
            "svwar",
            &["-m", method, "-d", &names, "-p", &port, "127.0.0.1"],
        )
        .wait(Duration::from_secs(60));
        let listed: Vec<&str> = run
            .output
            .lines()
            .filter(|l| l.starts_with("| ") && !l.contains("Extension"))
            .collect();
        if !listed.is_empty() || !run.output.contains("found nothing") {
            panic!(
                "svwar {method} told users apart: {listed:?}\n{}\n{}",
                tail(&run.output),
                kept(&mut s)
            );
        }
    }
}

#[test]
fn users_provisioned_through_the_api_register_and_are_locked_out_when_removed() {
    if skip_without("baresip", "baresip") {
        return;
    }
    let mut s = setup(&[("alice", "in-the-file")], "");
    let path = "/v1/users/weir.test/carol";
    // Bad input: each field named, nothing stored.
    for (body, field) in [
        ("{}", "password"),
        ("{\"password\": \"\"}", "password"),
        ("{\"ha1_md5\": \"xyz\"}", "ha1_md5"),
        (
            "{\"password\": \"p\", \"ha1_sha256\": \"00\"}",
            "ha1_sha256",
        ),
        ("{\"password\": \"p\", \"pin\": 1}", "pin"),
        ("[1]", "body"),
    ] {
        let (status, text) = http(s.admin, "PUT", path, body);
        assert!(
            status == 400 && text.contains(&format!("\"field\":\"{field}\"")),
            "{body}: {status} {text}"
        );
    }
    let (status, text) = http(
        s.admin,
        "PUT",
        "/v1/users/weir.test/bad%22name",
        "{\"password\": \"p\"}",
    );
    assert!(
        status == 400 && text.contains("\"field\":\"username\""),
        "{status} {text}"
    );
    // A configured user belongs to the file.
    let (status, _) = http(
        s.admin,
        "PUT",
        "/v1/users/weir.test/alice",
        "{\"password\": \"p\"}",
    );
    assert_eq!(status, 409);
    let (status, text) = http(s.admin, "PUT", path, "{\"password\": \"c4r0l-pw\"}");
    assert_eq!(status, 201, "{text}");
    let (status, listed) = http(s.admin, "GET", "/v1/users", "");
    assert_eq!(status, 200);
    assert!(
        listed.contains("\"username\":\"carol\"")
            && listed.contains("\"source\":\"api\"")
            && listed.contains("\"username\":\"alice\"")
            && !listed.contains("c4r0l"),
        "{listed}"
    );
    let carol = softphone(&s, "carol", "c4r0l-pw", &["-t", "20"]);
    if registered(&s, "sip:carol@weir.test", Duration::from_secs(10)).is_none() {
        panic!(
            "carol did not register with her provisioned password\n{}\n{}",
            tail(&carol.output()),
            kept(&mut s)
        );
    }
    drop(carol);
    // Removed: her binding goes too, and the same password no longer registers.
    assert_eq!(http(s.admin, "DELETE", path, "").0, 204);
    assert_eq!(http(s.admin, "DELETE", path, "").0, 404);
    assert_eq!(
        http(
            s.admin,
            "DELETE",
            "/v1/registrations/sip:carol@weir.test",
            ""
        )
        .0,
        204
    );
    let again = softphone(&s, "carol", "c4r0l-pw", &["-t", "3"]);
    let out = again.wait(Duration::from_secs(8)).output;
    assert!(
        registered(&s, "sip:carol@weir.test", Duration::from_millis(500)).is_none(),
        "a removed user registered\n{}",
        tail(&out)
    );
    // It did try, and was refused (its quick retries soon get it banned).
    assert!(
        out.contains("401 Unauthorized")
            || out.contains("403 Forbidden (too many failed authentications)"),
        "{}",
        tail(&out)
    );
}
