//! `weir plugin new | check | test` as a plugin author runs them.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use weir_e2e::{plugin_wasm, target_dir, tempdir, weir_bin};

fn weir(args: &[&str]) -> Output {
    Command::new(weir_bin())
        .args(args)
        .output()
        .expect("run weir")
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn write_plugin(dir: &Path, file: &str) -> PathBuf {
    let p = dir.join(format!("{file}.wasm"));
    std::fs::write(&p, plugin_wasm(file)).unwrap();
    p
}

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../plugins/agent-router/fixtures")
}

#[test]
fn check_tells_what_the_proxy_will_think() {
    let dir = tempdir::Dir::new("check");
    let wasm = write_plugin(dir.path(), "agent_router");
    let o = weir(&["plugin", "check", wasm.to_str().unwrap()]);
    let t = text(&o);
    assert!(o.status.success(), "{t}");
    for want in [
        "world:    weir:proxy@0.2.0",
        "registry",
        "weir:proxy/handler@0.2.0",
        "init:     ok",
    ] {
        assert!(t.contains(want), "{want} in {t}");
    }
    let o = weir(&[
        "plugin",
        "check",
        wasm.to_str().unwrap(),
        "--config",
        "{\"fallback\":\"tel:1\"}",
    ]);
    assert!(!o.status.success());
    assert!(text(&o).contains("config key fallback"), "{}", text(&o));
    let bad = dir.path().join("bad.wasm");
    std::fs::write(&bad, b"\0asm\x0d\0\x01\0garbage").unwrap();
    let o = weir(&["plugin", "check", bad.to_str().unwrap()]);
    assert!(!o.status.success());
    assert!(text(&o).contains("refused"), "{}", text(&o));
}

#[test]
fn test_replays_fixtures_and_fails_on_a_mismatch() {
    let dir = tempdir::Dir::new("fixtures");
    let wasm = write_plugin(dir.path(), "agent_router");
    let o = weir(&[
        "plugin",
        "test",
        wasm.to_str().unwrap(),
        "--fixtures",
        fixtures().to_str().unwrap(),
    ]);
    let t = text(&o);
    assert!(o.status.success(), "{t}");
    assert!(t.contains("5 passed, 0 failed"), "{t}");
    assert!(
        t.contains("ok    call-id: forward sip:agent7@10.0.0.7:5080"),
        "{t}"
    );
    // The same fixtures with one expectation changed.
    let copy = dir.path().join("fx");
    std::fs::create_dir(&copy).unwrap();
    for e in std::fs::read_dir(fixtures()).unwrap().flatten() {
        std::fs::copy(e.path(), copy.join(e.file_name())).unwrap();
    }
    std::fs::write(
        copy.join("unknown.expect"),
        "reply 480 Temporarily Unavailable\n",
    )
    .unwrap();
    let o = weir(&[
        "plugin",
        "test",
        wasm.to_str().unwrap(),
        "--fixtures",
        copy.to_str().unwrap(),
    ]);
    let t = text(&o);
    assert_eq!(o.status.code(), Some(1), "{t}");
    assert!(
        t.contains("FAIL  unknown: expected \"reply 480 Temporarily Unavailable\""),
        "{t}"
    );
    assert!(t.contains("4 passed, 1 failed"), "{t}");
}

#[test]
fn new_makes_a_crate_that_tests_builds_and_checks() {
    let dir = tempdir::Dir::new("new");
    let o = weir(&[
        "plugin",
        "new",
        "my-router",
        "--dir",
        dir.path().to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let krate = dir.path().join("my-router");
    let again = weir(&[
        "plugin",
        "new",
        "my-router",
        "--dir",
        dir.path().to_str().unwrap(),
    ]);
    assert!(!again.status.success(), "refuses to overwrite");
    // Its own target folder: the workspace's is busy with this very test run.
    let target = target_dir().join("../plugin-template");
    let cargo = |args: &[&str]| {
        Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .args(args)
            .current_dir(&krate)
            .env("CARGO_TARGET_DIR", &target)
            .output()
            .expect("run cargo")
    };
    let t = cargo(&["test", "--quiet"]);
    assert!(
        t.status.success(),
        "cargo test in the template:\n{}",
        text(&t)
    );
    assert!(text(&t).contains("1 passed"), "{}", text(&t));
    let b = cargo(&["build", "--quiet", "--target", "wasm32-wasip2", "--release"]);
    assert!(b.status.success(), "building the template:\n{}", text(&b));
    let wasm = target.join("wasm32-wasip2/release/my_router.wasm");
    let o = weir(&["plugin", "check", wasm.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("weir:proxy@0.2.0"));
}
