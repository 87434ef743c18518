//! `weir plugin new | check | test`: the plugin author's tools.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use weir_plugin_host::{
    Capabilities, Limits, MemoryRegistry, Registry, RequestRep, Runtime, Services, Verdict,
};
use weir_sip::message::{Framing, Message};
use weir_sip::proxy::{Flow, Transport};

/// Where this binary's `weir-sdk` sources are (for templates built from a checkout).
const SDK_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../guest-sdk");

/// `weir plugin new NAME [--dir PARENT] [--sdk PATH]`.
pub fn new(name: &str, parent: &Path, sdk: Option<&Path>) -> Result<PathBuf, String> {
    if !crate::config::valid_plugin_name(name) || name.starts_with(['-', '_']) {
        return Err(format!(
            "{name:?} is not a plugin name (letters, digits, - and _; it names the .wasm file)"
        ));
    }
    let dir = parent.join(name);
    if dir.exists() {
        return Err(format!("{} already exists", dir.display()));
    }
    let sdk = match sdk {
        Some(p) => p.to_path_buf(),
        None => PathBuf::from(SDK_DIR),
    };
    let sdk = sdk.canonicalize().map_err(|e| {
        format!(
            "weir-sdk not found at {} ({e}); pass --sdk PATH to the guest-sdk folder",
            sdk.display()
        )
    })?;
    let crate_name = name.replace('-', "_");
    let files = [
        (
            "Cargo.toml",
            CARGO_TOML
                .replace("@NAME@", name)
                .replace("@SDK@", &sdk.display().to_string()),
        ),
        ("src/lib.rs", LIB_RS.replace("@NAME@", name)),
        (
            "README.md",
            README
                .replace("@NAME@", name)
                .replace("@CRATE@", &crate_name),
        ),
        (".gitignore", "/target\n".to_string()),
    ];
    std::fs::create_dir_all(dir.join("src"))
        .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    for (file, text) in files {
        let path = dir.join(file);
        std::fs::write(&path, text).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    }
    Ok(dir)
}

const CARGO_TOML: &str = r#"[package]
name = "@NAME@"
version = "0.1.0"
edition = "2021"
publish = false

# A standalone crate, not part of any enclosing workspace.
[workspace]

[lib]
crate-type = ["cdylib", "rlib"]

[dependencies]
weir-sdk = { path = "@SDK@" }

[profile.release]
opt-level = "s"
lto = true
strip = true
codegen-units = 1
"#;

const LIB_RS: &str = r#"//! @NAME@: a Weir routing plugin. See README.md.

use weir_sdk::{export_plugin, Config, Decision, Forward, Host, Plugin, Reply, Request};

pub struct Router {
    /// Where calls go when the registry does not know the dialled user.
    default_target: Option<String>,
}

impl Plugin for Router {
    fn init(config: &Config, _host: &Host) -> Result<Self, String> {
        config.deny_unknown(&["default_target"])?;
        Ok(Router {
            default_target: config.str("default_target")?,
        })
    }

    fn on_request(&mut self, req: &Request, host: &Host) -> Decision {
        let Some(user) = req.request_user() else {
            return Reply::new(404).into();
        };
        match host.registry_get(&format!("call:{user}")) {
            Some(uri) => Forward::to(uri).into(),
            None => match &self.default_target {
                Some(t) => Forward::to(t.as_str()).into(),
                None => Reply::new(404).reason("Unknown Call").into(),
            },
        }
    }
}

export_plugin!(Router);

#[cfg(test)]
mod tests {
    use super::*;
    use weir_sdk::MockHost;

    #[test]
    fn registered_calls_are_forwarded() {
        let mock = MockHost::new();
        mock.registry_set("call:abc", "sip:agent@10.0.0.5:5080", 0).unwrap();
        let host = mock.host();
        let mut plugin = Router::init(&Config::parse("{}").unwrap(), &host).unwrap();
        let req = Request::mock(
            "INVITE sip:abc@weir.example.com SIP/2.0\r\nFrom: <sip:c@example.com>;tag=1\r\n\
             To: <sip:abc@weir.example.com>\r\nCall-ID: 1\r\nCSeq: 1 INVITE\r\n\r\n",
        )
        .unwrap();
        assert_eq!(
            plugin.on_request(&req, &host),
            Forward::to("sip:agent@10.0.0.5:5080").into()
        );
        let other = Request::mock(
            "INVITE sip:zzz@weir.example.com SIP/2.0\r\nFrom: <sip:c@example.com>;tag=1\r\n\
             To: <sip:zzz@weir.example.com>\r\nCall-ID: 2\r\nCSeq: 1 INVITE\r\n\r\n",
        )
        .unwrap();
        assert!(matches!(plugin.on_request(&other, &host), Decision::Reply(r) if r.status == 404));
    }
}
"#;

const README: &str = r#"# @NAME@

A Weir routing plugin.

```sh
cargo test                                        # native unit tests, mock host
cargo build --target wasm32-wasip2 --release      # the component
weir plugin check target/wasm32-wasip2/release/@CRATE@.wasm
cp target/wasm32-wasip2/release/@CRATE@.wasm /path/to/plugins/.@NAME@.tmp
mv /path/to/plugins/.@NAME@.tmp /path/to/plugins/@NAME@.wasm   # live, no restart
```

It needs the `registry` capability:

```toml
[plugins.@NAME@]
capabilities = ["registry", "log"]
[plugins.@NAME@.config]
# default_target = "sip:queue@10.0.0.9:5080"
```
"#;

fn runtime(registry: Arc<MemoryRegistry>) -> Result<Runtime, String> {
    Runtime::new(Limits::default(), Arc::new(Services::new(registry)))
}

fn all_capabilities() -> Capabilities {
    let mut c = Capabilities::none();
    for n in Capabilities::NAMES {
        c.grant(n);
    }
    c
}

/// `weir plugin check FILE [--config JSON]`: prints what the proxy would think of
/// the file; `Err` when it would refuse it.
pub fn check(file: &Path, config_json: &str) -> Result<String, String> {
    let bytes = std::fs::read(file).map_err(|e| format!("{}: {e}", file.display()))?;
    let rt = runtime(Arc::new(MemoryRegistry::new()))?;
    let mut out = String::new();
    let _ = writeln!(out, "file:     {} ({} bytes)", file.display(), bytes.len());
    let started = Instant::now();
    let info = rt
        .inspect(&bytes)
        .map_err(|e| format!("{out}refused:  {e}"))?;
    let _ = writeln!(out, "sha256:   {}", info.hash);
    let _ = writeln!(
        out,
        "world:    weir:proxy@{} (this host accepts {})",
        info.world,
        weir_plugin_host::WORLD_VERSIONS.join(", ")
    );
    let _ = writeln!(
        out,
        "compile:  {:.1} ms",
        started.elapsed().as_secs_f64() * 1e3
    );
    let _ = writeln!(out, "exports:  {}", info.exports.join(", "));
    let needs: Vec<&str> = info
        .imports
        .iter()
        .filter_map(|i| i.strip_prefix("weir:proxy/"))
        .filter_map(|i| i.split('@').next())
        .filter(|i| *i != "types")
        .collect();
    let _ = writeln!(
        out,
        "uses:     {} (grant with capabilities = [{}])",
        if needs.is_empty() {
            "no host services".to_string()
        } else {
            needs.join(", ")
        },
        needs
            .iter()
            .map(|n| format!("\"{n}\""))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let wasi: Vec<&str> = info
        .imports
        .iter()
        .map(String::as_str)
        .filter(|i| i.starts_with("wasi:"))
        .collect();
    let _ = writeln!(
        out,
        "wasi:     {} (provided locked down: no files, sockets or environment)",
        wasi.join(", ")
    );
    match rt.load("check", &bytes, config_json, all_capabilities()) {
        Ok(_) => {
            let _ = writeln!(out, "init:     ok with config {config_json}");
            Ok(out)
        }
        Err(e) => Err(format!("{out}init:     {e}")),
    }
}

/// `weir plugin test FILE --fixtures DIR [--config JSON] [--bless]`.
///
/// Each `NAME.sip` in DIR is a request (LF or CRLF line ends); `NAME.expect`
/// beside it holds the expected decision on its first line (`forward URI [URI…]`,
/// `reply STATUS [REASON]`, `challenge REALM`, `register [AOR]`, `drop`,
/// `continue`) and, on the
/// following lines, header lines the forwarded request must contain.
/// `registry.json` in DIR (an object of key → value) seeds the registry;
/// `config.json` is the plugin's configuration unless `--config` is given; a
/// `NAME.source` file (`IP:PORT`) sets where the request came from.
pub fn test(
    file: &Path,
    fixtures: &Path,
    config: Option<&str>,
    bless: bool,
) -> Result<String, String> {
    let bytes = std::fs::read(file).map_err(|e| format!("{}: {e}", file.display()))?;
    let registry = Arc::new(MemoryRegistry::new());
    let seed = fixtures.join("registry.json");
    if seed.exists() {
        let text =
            std::fs::read_to_string(&seed).map_err(|e| format!("{}: {e}", seed.display()))?;
        let v: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| format!("{}: {e}", seed.display()))?;
        let obj = v
            .as_object()
            .ok_or_else(|| format!("{}: expected an object of key → value", seed.display()))?;
        for (k, v) in obj {
            let v = v
                .as_str()
                .ok_or_else(|| format!("{}: {k}: the value must be a string", seed.display()))?;
            registry
                .set(k, v, Duration::ZERO, Instant::now())
                .map_err(|e| format!("{}: {e}", seed.display()))?;
        }
    }
    let config = match config {
        Some(c) => c.to_string(),
        None => {
            std::fs::read_to_string(fixtures.join("config.json")).unwrap_or_else(|_| "{}".into())
        }
    };
    let rt = runtime(registry)?;
    let version = rt
        .load("under-test", &bytes, &config, all_capabilities())
        .map_err(|e| format!("{}: {e}", file.display()))?;
    let mut cases: Vec<PathBuf> = std::fs::read_dir(fixtures)
        .map_err(|e| format!("{}: {e}", fixtures.display()))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "sip"))
        .collect();
    cases.sort();
    if cases.is_empty() {
        return Err(format!("{}: no .sip fixtures", fixtures.display()));
    }
    let mut out = String::new();
    let mut failed = 0;
    for case in &cases {
        let name = case
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        let (got, edited) = match run_case(&version, case) {
            Ok(x) => x,
            Err(e) => (format!("error {e}"), None),
        };
        let expect_path = case.with_extension("expect");
        match std::fs::read_to_string(&expect_path) {
            Ok(expect) => {
                let mut lines = expect.lines().map(str::trim).filter(|l| !l.is_empty());
                let want = lines.next().unwrap_or("");
                let missing: Vec<&str> = lines
                    .filter(|h| {
                        !edited
                            .as_deref()
                            .unwrap_or("")
                            .contains(&format!("\r\n{h}\r\n"))
                    })
                    .collect();
                if got == want && missing.is_empty() {
                    let _ = writeln!(out, "ok    {name}: {got}");
                } else {
                    failed += 1;
                    let _ = writeln!(out, "FAIL  {name}: expected {want:?}, got {got:?}");
                    for h in missing {
                        let _ = writeln!(out, "      missing header line {h:?}");
                    }
                }
            }
            Err(_) if bless => {
                std::fs::write(&expect_path, format!("{got}\n"))
                    .map_err(|e| format!("{}: {e}", expect_path.display()))?;
                let _ = writeln!(
                    out,
                    "new   {name}: {got} (written to {})",
                    expect_path.display()
                );
            }
            Err(_) => {
                failed += 1;
                let _ = writeln!(
                    out,
                    "FAIL  {name}: no {} (got {got:?}; --bless writes it)",
                    expect_path.display()
                );
            }
        }
    }
    let _ = writeln!(out, "{} passed, {failed} failed", cases.len() - failed);
    if failed > 0 {
        Err(out)
    } else {
        Ok(out)
    }
}

fn run_case(
    version: &Arc<weir_plugin_host::PluginVersion>,
    case: &Path,
) -> Result<(String, Option<String>), String> {
    let text = std::fs::read_to_string(case).map_err(|e| e.to_string())?;
    let wire = to_wire(&text);
    let msg = Message::parse(Bytes::from(wire), Framing::Datagram)
        .map_err(|e| format!("the fixture does not parse: {e}"))?;
    if !msg.is_request() {
        return Err("the fixture is not a request".into());
    }
    let remote = match std::fs::read_to_string(case.with_extension("source")) {
        Ok(s) => s
            .trim()
            .parse()
            .map_err(|_| format!("{:?} is not IP:PORT", s.trim()))?,
        Err(_) => std::net::SocketAddr::from(([192, 0, 2, 1], 5060)),
    };
    let flow = Flow {
        transport: Transport::Udp,
        local: std::net::SocketAddr::from(([127, 0, 0, 1], 5060)),
        remote,
        conn: None,
    };
    let mut warm = version.instance().map_err(|e| e.to_string())?;
    let (rep, verdict) = warm.decide(RequestRep::new(Arc::new(msg), flow, None));
    let verdict = verdict.map_err(|(why, _)| why)?;
    let edited = match rep.map(|r| r.edited()) {
        Some(Ok(Some(m))) => Some(String::from_utf8_lossy(m.as_bytes()).into_owned()),
        Some(Err(e)) => return Err(format!("its edits do not make a valid request: {e:?}")),
        _ => Some(text.replace('\n', "\r\n")),
    };
    Ok((describe(&verdict), edited))
}

/// LF line ends become CRLF (fixtures are easier to write with LF); the header
/// block gets its blank line.
fn to_wire(text: &str) -> Vec<u8> {
    let mut t = if text.contains("\r\n") {
        text.to_string()
    } else {
        text.replace('\n', "\r\n")
    };
    if !t.contains("\r\n\r\n") {
        if !t.ends_with("\r\n") {
            t.push_str("\r\n");
        }
        t.push_str("\r\n");
    }
    t.into_bytes()
}

/// One line per decision, as `.expect` files hold it.
pub fn describe(v: &Verdict) -> String {
    match v {
        Verdict::Forward { targets, .. } => {
            let uris: Vec<&str> = targets.iter().map(|t| t.uri.as_str()).collect();
            format!("forward {}", uris.join(" "))
        }
        Verdict::Reply { status, reason, .. } => format!("reply {status} {reason}"),
        Verdict::Challenge { realm } => format!("challenge {realm}"),
        Verdict::Register { aor: None } => "register".into(),
        Verdict::Register { aor: Some(aor) } => format!("register {aor}"),
        Verdict::Drop => "drop".into(),
        Verdict::Continue => "continue".into(),
    }
}
