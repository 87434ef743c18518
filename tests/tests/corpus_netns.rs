//! The external corpora sent to the running `weir` binary over UDP, inside a
//! network namespace this test creates: the messages name documentation
//! addresses and example.com hosts, and nothing may leave the machine. Inside,
//! every such name resolves to the namespace's loopback and every such address
//! is made local, where `sip-probe` plays the next hops.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use weir_e2e::{target_dir, tempdir, Netns, Weir};
use weir_sim::corpus::{self, Expect};
use weir_sip::headers::{HeaderName, NameAddr};
use weir_sip::uri::{Host, Uri};
use weir_sip::{Framing, Message};

const PROXY: &str = "127.0.0.1:5999";

/// Names, addresses and ports the messages will be routed to.
#[derive(Default)]
struct Targets {
    names: BTreeSet<String>,
    ips: BTreeSet<IpAddr>,
    ports: BTreeSet<u16>,
}

impl Targets {
    fn add_uri(&mut self, text: &[u8]) {
        let Ok(s) = std::str::from_utf8(text) else {
            return;
        };
        let Ok(Uri::Sip(u)) = Uri::parse(s) else {
            return;
        };
        let host = u
            .param("maddr")
            .and_then(|m| weir_sip::uri::parse_host(m).ok())
            .unwrap_or(u.host);
        match host {
            Host::Domain(d) => {
                self.names.insert(d.to_ascii_lowercase());
            }
            Host::Ip(ip) => {
                self.ips.insert(ip);
            }
        }
        self.ports.insert(u.port.unwrap_or(5060));
    }

    fn gather(&mut self, bytes: &[u8]) {
        let Ok(m) = Message::parse(Bytes::copy_from_slice(bytes), Framing::Datagram) else {
            return;
        };
        self.add_uri(m.request_uri_bytes());
        // Responses go to the top Via's port at the source address (no rport).
        if let Some(Ok(via)) = m.top_via() {
            self.ports.insert(via.port.unwrap_or(5060));
        }
        for (_, v) in m.list(HeaderName::Route) {
            if let Ok(na) = NameAddr::parse(v) {
                self.add_uri(na.uri_text.as_bytes());
            }
        }
    }
}

struct Run {
    summary: Vec<(String, usize, Vec<String>, Vec<String>)>,
    alive: u16,
    out: tempdir::Dir,
}

impl Run {
    fn verdict(&self, name: &str) -> (Expect, &[String]) {
        let (_, fwd, replies, _) = self
            .summary
            .iter()
            .find(|r| r.0 == name)
            .unwrap_or_else(|| panic!("{name} missing"));
        let finals: Vec<&String> = replies.iter().filter(|r| *r != "100").collect();
        let v = if *fwd > 0 {
            Expect::Forward
        } else if let Some(code) = finals.first() {
            Expect::Reply(code.parse().unwrap_or(0))
        } else {
            Expect::Drop
        };
        (v, replies)
    }

    fn forwarded(&self, name: &str, n: usize) -> (Message, String) {
        let p = self.out.path().join(format!("{name}.fwd.{n}"));
        let bytes = std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        let transport =
            std::fs::read_to_string(self.out.path().join(format!("{name}.fwd.{n}.transport")))
                .unwrap();
        (
            Message::parse(Bytes::from(bytes), Framing::Exact).unwrap(),
            transport,
        )
    }
}

/// Starts weir in a fresh namespace and runs the probe over `files`.
fn run(tag: &str, files: &[PathBuf], wire: bool) -> Option<Run> {
    let ns = Netns::create(tag)?;
    let mut targets = Targets::default();
    for f in files {
        let bytes = std::fs::read(f).unwrap();
        targets.gather(&if wire { corpus::to_wire(&bytes) } else { bytes });
    }
    let mut hosts = String::from("127.0.0.1 localhost\n::1 localhost ip6-localhost\n");
    for n in &targets.names {
        hosts.push_str(&format!("127.0.0.1 {n}\n"));
    }
    ns.set_hosts(&hosts);
    for ip in &targets.ips {
        if ip.is_loopback() || ip.is_unspecified() || ip.is_multicast() {
            continue;
        }
        let (family, prefix) = if ip.is_ipv4() {
            ("-4", "32")
        } else {
            ("-6", "128")
        };
        ns.exec(&[
            "ip",
            family,
            "route",
            "add",
            "local",
            &format!("{ip}/{prefix}"),
            "dev",
            "lo",
        ]);
    }
    let config = "[sip]\nlisten = [\"udp:127.0.0.1:5999\", \"tcp:127.0.0.1:5999\", \"udp:[::1]:5999\", \"tcp:[::1]:5999\"]\n\
                  t1 = \"10ms\"\n[log]\nlevel = \"warn\"\n";
    let mut weir = Weir::start_in(config, &ns.name);
    let out = tempdir::Dir::new("corpus");
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", &ns.name])
        .arg(target_dir().join("sip-probe"))
        .args(["--proxy", PROXY, "--out"])
        .arg(out.path());
    if wire {
        cmd.arg("--wire");
    }
    for p in &targets.ports {
        cmd.args(["--catch", &p.to_string()]);
    }
    cmd.args(files);
    // The probe waits for weir itself (OPTIONS until 200), then sends.
    let mut probe = cmd.stdout(Stdio::null()).spawn().expect("start sip-probe");
    let deadline = Instant::now() + Duration::from_secs(240);
    let status = loop {
        if let Some(s) = probe.try_wait().unwrap() {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "sip-probe did not finish in 240 s"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(
        status.success(),
        "sip-probe failed; weir log:\n{}",
        weir.log_text()
    );
    assert!(weir.alive(), "weir died:\n{}", weir.log_text());
    let text = std::fs::read_to_string(out.path().join("summary.tsv")).unwrap();
    let mut summary = vec![];
    let mut alive = 0;
    for line in text.lines() {
        if let Some(code) = line.strip_prefix("ALIVE ") {
            alive = code.parse().unwrap_or(0);
            continue;
        }
        let cols: Vec<&str> = line.split('\t').collect();
        let list = |s: &str| {
            s.split(',')
                .filter(|x| !x.is_empty())
                .map(String::from)
                .collect::<Vec<_>>()
        };
        summary.push((
            cols[0].to_string(),
            cols[1].parse().unwrap(),
            list(cols[2]),
            list(cols[3]),
        ));
    }
    drop(weir);
    Some(Run {
        summary,
        alive,
        out,
    })
}

fn files_in(dir: &Path) -> Vec<PathBuf> {
    corpus::files(dir)
        .into_iter()
        .map(|(n, _)| dir.join(n))
        .collect()
}

#[test]
fn rfc4475_and_rfc5118_through_the_running_proxy() {
    let Some(d4475) = corpus::folder("rfc4475") else {
        return;
    };
    let Some(d5118) = corpus::folder("rfc5118") else {
        return;
    };
    let mut files = files_in(&d4475);
    files.extend(files_in(&d5118.join("wire")));
    let Some(run) = run("corpus", &files, false) else {
        return;
    };
    assert_eq!(run.alive, 200, "weir answers after the whole corpus");
    let mut failures = vec![];
    for f in &files {
        let name = f.file_name().unwrap().to_string_lossy().into_owned();
        let expect = corpus::rfc4475(&name)
            .or_else(|| corpus::rfc5118(&name))
            .unwrap();
        let (got, replies) = run.verdict(&name);
        if got != expect {
            failures.push(format!(
                "{name}: expected {expect:?}, got {got:?} (replies {replies:?})"
            ));
        }
        for r in replies {
            assert!(
                !r.starts_with("unparseable"),
                "{name}: weir sent bytes that do not parse: {r}"
            );
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    // What the corpus README asks beyond the verdict.
    let (wsinv, _) = run.forwarded("wsinv.dat", 0);
    assert_eq!(wsinv.max_forwards(), Some(Ok(67)));
    let raw = String::from_utf8_lossy(wsinv.as_bytes()).into_owned();
    assert!(raw.contains("NewFangledHeader:   newfangled value\r\n continued newfangled value\r\n"));
    assert!(raw.contains("UnknownHeaderWithUnusualValue: ;;,,;;,;\r\n"));
    let (_, transport) = run.forwarded("longreq.dat", 0);
    assert_eq!(transport, "tcp", "longreq (over 1300 bytes) goes over TCP");
    let (esc01, _) = run.forwarded("esc01.dat", 0);
    assert_eq!(
        esc01.request_uri_bytes(),
        b"sip:sips%3Auser%40example.com@example.net"
    );
    let (dbl, _) = run.forwarded("dblreq.dat", 0);
    assert_eq!(dbl.method_bytes(), b"REGISTER");
    assert_eq!(
        run.summary.iter().find(|r| r.0 == "dblreq.dat").unwrap().1,
        1
    );
    let (mpart, _) = run.forwarded("mpart01.dat", 0);
    let orig = Message::parse(
        Bytes::from(std::fs::read(d4475.join("mpart01.dat")).unwrap()),
        Framing::Datagram,
    )
    .unwrap();
    assert_eq!(
        mpart.body(),
        orig.body(),
        "the binary body is forwarded byte for byte"
    );
    let (v6, _) = run.forwarded("port-unambiguous", 0);
    assert_eq!(v6.request_uri_bytes(), b"sip:[2001:db8::10]:5070");
}

#[test]
fn kamailio_and_pjsip_seeds_through_the_running_proxy() {
    let mut files = vec![];
    for folder in [
        "kamailio-test-sip",
        "pjsip-fuzz-seeds/fuzz-sip",
        "pjsip-fuzz-seeds/fuzz-sip-dialog",
        "profuzzbench-kamailio-seed",
    ] {
        if let Some(d) = corpus::folder(folder) {
            files.extend(files_in(&d));
        }
    }
    if files.is_empty() {
        return;
    }
    let Some(run) = run("seeds", &files, true) else {
        return;
    };
    assert_eq!(run.alive, 200, "weir answers after every seed");
    for (name, _, replies, _) in &run.summary {
        for r in replies {
            let code: u16 = r
                .parse()
                .unwrap_or_else(|_| panic!("{name}: weir sent bytes that do not parse: {r}"));
            assert!((100..700).contains(&code), "{name}: {code}");
        }
    }
}
