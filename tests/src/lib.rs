//! Helpers for the end-to-end tests: start the real `weir` binary, run SIPp
//! scenarios against it, make network namespaces. Every wait is bounded.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test support: failing loudly is the point

use std::io::Write;
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::{Duration, Instant};

/// The `weir` binary built by the same `cargo build` as this test.
pub fn weir_bin() -> PathBuf {
    target_dir().join("weir")
}

/// `target/<profile>` of the running test executable.
pub fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test>-<hash>
    exe.parent()
        .and_then(Path::parent)
        .expect("target dir")
        .to_path_buf()
}

/// Whether an external program is on the PATH.
pub fn have(program: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {program}"))
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Fails the test with a clear message when a required peer is missing; the
/// test script installs them, so absence is a setup error, not a skip.
pub fn require(program: &str, package: &str) {
    assert!(
        have(program),
        "`{program}` is not installed: run scripts/test.sh (it installs the Debian package `{package}`)"
    );
}

static NEXT_PORT: AtomicU16 = AtomicU16::new(0);

/// A port free on 127.0.0.1 and ::1 for both UDP and TCP. Ports are handed out
/// from a per-process range so parallel tests do not collide.
pub fn free_port() -> u16 {
    free_ports(1)
}

/// Two consecutive free ports; the first is returned (baresip listens for
/// TLS on its SIP port + 1).
pub fn free_port_pair() -> u16 {
    free_ports(2)
}

/// `n` consecutive free ports (an RTP range…); the first is returned.
pub fn free_ports(n: u16) -> u16 {
    if NEXT_PORT.load(Ordering::Relaxed) == 0 {
        let base = 20_000 + (std::process::id() % 400) as u16 * 100;
        let _ = NEXT_PORT.compare_exchange(0, base, Ordering::Relaxed, Ordering::Relaxed);
    }
    let is_free = |p: u16| {
        UdpSocket::bind(("127.0.0.1", p)).is_ok()
            && TcpListener::bind(("127.0.0.1", p)).is_ok()
            && UdpSocket::bind(("::1", p)).is_ok()
            && TcpListener::bind(("::1", p)).is_ok()
    };
    loop {
        let p = NEXT_PORT.fetch_add(n, Ordering::Relaxed);
        if (p..p + n).all(is_free) {
            return p;
        }
    }
}

/// A running `weir run`, killed when dropped.
#[allow(missing_debug_implementations)]
pub struct Weir {
    child: Child,
    pub dir: tempdir::Dir,
    pub log: PathBuf,
}

impl Weir {
    /// Starts weir with `config` (TOML) and waits until it answers OPTIONS on
    /// `probe` (a UDP listen address of the config).
    pub fn start(config: &str, probe: SocketAddr) -> Weir {
        let bin = weir_bin();
        assert!(
            bin.exists(),
            "{} is missing: build the workspace first (scripts/test.sh does)",
            bin.display()
        );
        let dir = tempdir::Dir::new("weir");
        let cfg = dir.path().join("weir.toml");
        std::fs::write(&cfg, config).unwrap();
        let log = dir.path().join("weir.log");
        let child = Command::new(&bin)
            .args(["run", "-c"])
            .arg(&cfg)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("start weir");
        let mut w = Weir { child, dir, log };
        w.wait_ready(probe);
        w
    }

    /// Like [`Weir::start`], inside a network namespace (no readiness probe from
    /// here: the namespace's loopback is not ours; the caller probes).
    pub fn start_in(config: &str, netns: &str) -> Weir {
        let dir = tempdir::Dir::new("weir");
        let cfg = dir.path().join("weir.toml");
        std::fs::write(&cfg, config).unwrap();
        let log = dir.path().join("weir.log");
        let child = Command::new("ip")
            .args(["netns", "exec", netns])
            .arg(weir_bin())
            .args(["run", "-c"])
            .arg(&cfg)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("start weir in the namespace");
        Weir { child, dir, log }
    }

    fn wait_ready(&mut self, probe: SocketAddr) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("weir exited ({status}) during start:\n{}", self.log_text());
            }
            if options_ping(probe, Duration::from_millis(200)).is_some_and(|code| code == 200) {
                return;
            }
        }
        panic!(
            "weir did not answer OPTIONS on {probe} within 10 s:\n{}",
            self.log_text()
        );
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// True while the process runs.
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Weir {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Kamailio playing a peer (a carrier…) with a config from `tests/kamailio/`,
/// its `@KEY@` placeholders filled in; killed when dropped.
#[allow(missing_debug_implementations)]
pub struct Kamailio {
    child: Child,
    pub dir: tempdir::Dir,
    pub log: PathBuf,
}

impl Kamailio {
    /// Starts it and waits until it answers (anything) an OPTIONS on `probe`.
    pub fn start(config: &str, fill: &[(&str, &str)], probe: SocketAddr) -> Kamailio {
        require("kamailio", "kamailio");
        let text = template("kamailio", config, fill);
        let dir = tempdir::Dir::new("kamailio");
        let cfg = dir.path().join(config);
        std::fs::write(&cfg, text).unwrap();
        let log = dir.path().join("kamailio.log");
        // -DD: foreground, -E: log to stderr, -Y: its runtime files here.
        let child = Command::new("kamailio")
            .arg("-f")
            .arg(&cfg)
            .args(["-DD", "-E", "-m", "64", "-M", "8", "-Y"])
            .arg(dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("start kamailio");
        let mut k = Kamailio { child, dir, log };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(Some(status)) = k.child.try_wait() {
                panic!("kamailio exited ({status}) during start:\n{}", k.log_text());
            }
            if options_ping(probe, Duration::from_millis(200)).is_some() {
                return k;
            }
            assert!(
                Instant::now() < deadline,
                "kamailio did not answer on {probe} within 10 s:\n{}",
                k.log_text()
            );
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Kamailio {
    fn drop(&mut self) {
        // SIGTERM: the main process stops its children; SIGKILL would orphan them.
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Sends an OPTIONS to `to` over UDP and returns the status of the answer.
pub fn options_ping(to: SocketAddr, wait: Duration) -> Option<u16> {
    let sock = UdpSocket::bind(if to.is_ipv4() {
        "127.0.0.1:0"
    } else {
        "[::1]:0"
    })
    .ok()?;
    let me = sock.local_addr().ok()?;
    let host = match to {
        SocketAddr::V4(a) => a.to_string(),
        SocketAddr::V6(a) => format!("[{}]:{}", a.ip(), a.port()),
    };
    let me_s = match me {
        SocketAddr::V4(a) => a.to_string(),
        SocketAddr::V6(a) => format!("[{}]:{}", a.ip(), a.port()),
    };
    let msg = format!(
        "OPTIONS sip:{host} SIP/2.0\r\nVia: SIP/2.0/UDP {me_s};branch=z9hG4bK-ping{}\r\nMax-Forwards: 70\r\nFrom: <sip:probe@{me_s}>;tag=p\r\nTo: <sip:{host}>\r\nCall-ID: ping-{}@test\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n",
        me.port(),
        me.port()
    );
    sock.set_read_timeout(Some(wait)).ok()?;
    sock.send_to(msg.as_bytes(), to).ok()?;
    let mut buf = [0u8; 4096];
    let (n, _) = sock.recv_from(&mut buf).ok()?;
    let line = String::from_utf8_lossy(&buf[..n]);
    line.split(' ').nth(1)?.parse().ok()
}

/// `tests/FOLDER/NAME` with each `(from, to)` text replaced; every placeholder
/// given must be there.
fn template(folder: &str, name: &str, fill: &[(&str, &str)]) -> String {
    let src = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join(folder)
        .join(name);
    let mut text =
        std::fs::read_to_string(&src).unwrap_or_else(|e| panic!("{}: {e}", src.display()));
    for (k, v) in fill {
        assert!(text.contains(k), "{name} has no {k}");
        text = text.replace(k, v);
    }
    text
}

/// A SIPp scenario from `tests/scenarios/`, with each `(from, to)` text replaced
/// (placeholders such as `@METHOD@`).
pub fn scenario(dir: &Path, name: &str, fill: &[(&str, &str)]) -> PathBuf {
    let text = template("scenarios", name, fill);
    let out = dir.join(name);
    std::fs::File::create(&out)
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    out
}

/// Waits for `child` to end, killing it at `limit`; its exit code (None: killed).
fn wait_or_kill(child: &mut Child, limit: Duration) -> Option<i32> {
    let deadline = Instant::now() + limit;
    loop {
        match child.try_wait() {
            Ok(Some(s)) => return s.code(),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
        }
    }
}

/// The result of one SIPp run.
#[derive(Debug)]
pub struct SippRun {
    pub code: Option<i32>,
    pub successful: u64,
    pub failed: u64,
    pub output: String,
}

/// A SIPp process.
#[allow(missing_debug_implementations)]
pub struct Sipp {
    child: Child,
    out: PathBuf,
}

impl Sipp {
    /// Starts `sipp` with `args` (a `-timeout` of 60 s bounds it) in `dir`.
    pub fn spawn(dir: &Path, label: &str, args: &[String]) -> Sipp {
        Sipp::spawn_for(dir, label, args, Duration::from_secs(60))
    }

    /// Like [`Sipp::spawn`], bounded by `timeout`.
    pub fn spawn_for(dir: &Path, label: &str, args: &[String], timeout: Duration) -> Sipp {
        Sipp::start(Command::new("sipp"), dir, label, args, timeout)
    }

    /// Like [`Sipp::spawn_for`], inside network namespace `netns`.
    pub fn spawn_in(
        netns: &str,
        dir: &Path,
        label: &str,
        args: &[String],
        timeout: Duration,
    ) -> Sipp {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", netns, "sipp"]);
        Sipp::start(cmd, dir, label, args, timeout)
    }

    fn start(
        mut cmd: Command,
        dir: &Path,
        label: &str,
        args: &[String],
        timeout: Duration,
    ) -> Sipp {
        let out = dir.join(format!("{label}.out"));
        let timeout = format!("{}s", timeout.as_secs().max(1));
        let child = cmd
            .current_dir(dir)
            .args(args)
            .args(["-nostdin", "-timeout", timeout.as_str(), "-timeout_error"])
            .stdout(std::fs::File::create(&out).unwrap())
            .stderr(Stdio::null())
            .spawn()
            .expect("start sipp");
        Sipp { child, out }
    }

    /// Waits (at most `limit`) and reads the final statistics.
    pub fn wait(mut self, limit: Duration) -> SippRun {
        let code = wait_or_kill(&mut self.child, limit);
        let output = std::fs::read_to_string(&self.out).unwrap_or_default();
        SippRun {
            code,
            successful: stat(&output, "Successful call"),
            failed: stat(&output, "Failed call"),
            output,
        }
    }
}

impl Drop for Sipp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn stat(output: &str, name: &str) -> u64 {
    output
        .lines()
        .rev()
        .find(|l| l.trim_start().starts_with(name))
        .and_then(|l| l.rsplit('|').next())
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

/// A plugin component built by `scripts/build-plugins.sh` (`agent_router`, `test_plugin`…).
pub fn plugin_wasm(file: &str) -> Vec<u8> {
    let path = target_dir()
        .join("../wasm32-wasip2/plugin")
        .join(format!("{file}.wasm"));
    std::fs::read(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e}: build the plugins first (scripts/test.sh runs scripts/build-plugins.sh)",
            path.display()
        )
    })
}

/// Puts `bytes` at `dir/name` the way operators are told to: write a hidden
/// file, then rename it over the old one.
pub fn install_file(dir: &Path, name: &str, bytes: &[u8]) {
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, bytes).unwrap();
    std::fs::rename(&tmp, dir.join(name)).unwrap();
}

/// One HTTP/1.1 request on a fresh connection: the status and the body.
pub fn http(addr: SocketAddr, method: &str, path: &str, body: &str) -> (u16, String) {
    http_with(addr, method, path, &[], body)
}

/// Fails (keeping `dir` for a look) unless `run` ended well with `calls`
/// successful calls and none failed; the message carries SIPp's and weir's
/// last lines.
pub fn check_run(dir: &mut tempdir::Dir, weir: &Weir, what: &str, run: &SippRun, calls: u64) {
    if run.code != Some(0) || run.successful != calls || run.failed != 0 {
        let kept = std::mem::replace(dir, tempdir::Dir::new("kept")).keep();
        panic!(
            "{what}: exit {:?}, {} ok, {} failed, {calls} expected (kept {})\n{}\n--- weir ---\n{}",
            run.code,
            run.successful,
            run.failed,
            kept.display(),
            tail(&run.output),
            tail(&weir.log_text())
        );
    }
}

/// The last 30 non-empty lines of `s`.
pub fn tail(s: &str) -> String {
    let lines: Vec<&str> = s.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

/// The value of series `series` (no labels) in weir's `/metrics` at `admin`.
pub fn metric(admin: SocketAddr, series: &str) -> u64 {
    let (status, body) = http(admin, "GET", "/metrics", "");
    assert_eq!(status, 200);
    body.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no {series} in /metrics:\n{body}"))
}

/// Like [`http`], with extra request headers.
pub fn http_with(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, String) {
    use std::io::Read;
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let extra: String = headers
        .iter()
        .map(|(n, v)| format!("{n}: {v}\r\n"))
        .collect();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n{extra}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    let status = resp
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = resp
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_string();
    (status, body)
}

/// Resident memory of a process, in KiB (Linux).
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// A temporary directory removed on drop.
pub mod tempdir {
    use std::path::{Path, PathBuf};

    #[derive(Debug)]
    pub struct Dir(PathBuf);

    impl Dir {
        pub fn new(prefix: &str) -> Dir {
            use std::sync::atomic::{AtomicU32, Ordering};
            static N: AtomicU32 = AtomicU32::new(0);
            let p = std::env::temp_dir().join(format!(
                "{prefix}-{}-{}",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed)
            ));
            let _ = std::fs::remove_dir_all(&p);
            std::fs::create_dir_all(&p).unwrap();
            Dir(p)
        }

        pub fn path(&self) -> &Path {
            &self.0
        }

        /// Keeps the directory (for a failing test's evidence).
        pub fn keep(self) -> PathBuf {
            let p = self.0.clone();
            std::mem::forget(self);
            p
        }
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// A network namespace with its loopback up, deleted on drop.
#[allow(missing_debug_implementations)]
pub struct Netns {
    pub name: String,
}

impl Netns {
    /// Creates the namespace, or returns `None` (saying why) when this machine
    /// cannot (not root, no `ip`).
    pub fn create(tag: &str) -> Option<Netns> {
        if !have("ip") {
            eprintln!("SKIPPED: `ip` (iproute2) is not installed");
            return None;
        }
        let name = format!("weir-{tag}-{}", std::process::id());
        let _ = Command::new("ip").args(["netns", "del", &name]).status();
        let ok = Command::new("ip")
            .args(["netns", "add", &name])
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            eprintln!("SKIPPED: cannot create a network namespace (needs root)");
            return None;
        }
        let ns = Netns { name };
        ns.exec(&["ip", "link", "set", "lo", "up"]);
        Some(ns)
    }

    /// Runs a command inside the namespace and asserts it succeeds.
    pub fn exec(&self, cmd: &[&str]) {
        let status = Command::new("ip")
            .args(["netns", "exec", &self.name])
            .args(cmd)
            .status()
            .expect("ip netns exec");
        assert!(status.success(), "in {}: {cmd:?} failed", self.name);
    }

    /// The namespace's own /etc/hosts (bind-mounted by `ip netns exec`).
    pub fn set_hosts(&self, text: &str) {
        let dir = PathBuf::from("/etc/netns").join(&self.name);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("hosts"), text).unwrap();
        // No DNS server is reachable inside: answer from the hosts file only.
        std::fs::write(dir.join("resolv.conf"), "").unwrap();
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
        let _ = std::fs::remove_dir_all(PathBuf::from("/etc/netns").join(&self.name));
    }
}

/// A peer program running in the background (baresip, SIPVicious…), its
/// output in a file, killed when dropped.
#[allow(missing_debug_implementations)]
pub struct Program {
    child: Child,
    out: PathBuf,
}

/// How a [`Program`] ended: its exit code (None: killed at the limit) and output.
#[derive(Debug)]
pub struct Ran {
    pub code: Option<i32>,
    pub output: String,
}

impl Program {
    /// Starts `program` with `args` in `dir`, stdin closed, stdout and stderr
    /// in `dir/label.out`.
    pub fn spawn(dir: &Path, label: &str, program: &str, args: &[&str]) -> Program {
        let out = dir.join(format!("{label}.out"));
        let file = std::fs::File::create(&out).unwrap();
        let child = Command::new(program)
            .current_dir(dir)
            .args(args)
            .stdin(Stdio::null())
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .spawn()
            .unwrap_or_else(|e| panic!("start {program}: {e}"));
        Program { child, out }
    }

    /// What it has written so far.
    pub fn output(&self) -> String {
        String::from_utf8_lossy(&std::fs::read(&self.out).unwrap_or_default()).into_owned()
    }

    /// Waits for it to end, killing it at `limit`.
    pub fn wait(mut self, limit: Duration) -> Ran {
        let code = wait_or_kill(&mut self.child, limit);
        Ran {
            code,
            output: self.output(),
        }
    }
}

impl Drop for Program {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A baresip configuration folder for `account` (an `accounts` line), its
/// SIP socket on `127.0.0.1:sip_port` (and TLS on `sip_port + 1`: take it
/// from [`free_port_pair`]), RTP in `rtp_ports`, no sound card:
/// it plays a file and plays out into nothing.
pub fn baresip_config(dir: &Path, sip_port: u16, rtp_ports: (u16, u16), account: &str) {
    std::fs::create_dir_all(dir).unwrap();
    let config = format!(
        "poll_method\t\tepoll\n\
         sip_listen\t\t127.0.0.1:{sip_port}\n\
         sip_trans_def\t\tudp\n\
         audio_player\t\taufile,/dev/null\n\
         audio_source\t\taufile,/usr/share/baresip/callwaiting.wav\n\
         audio_alert\t\taufile,/dev/null\n\
         module_path\t\t/usr/lib/baresip/modules\n\
         module\t\t\tg711.so\n\
         module\t\t\taufile.so\n\
         module_app\t\taccount.so\n\
         module_app\t\tmenu.so\n\
         rtp_ports\t\t{}-{}\n",
        rtp_ports.0, rtp_ports.1
    );
    std::fs::write(dir.join("config"), config).unwrap();
    std::fs::write(dir.join("accounts"), format!("{account}\n")).unwrap();
}
