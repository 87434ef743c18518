//! SIP over TLS end to end: real softphones (baresip) calling through weir's
//! `tls:` listener, weir checking their certificates when it dials them;
//! a TLS caller reaching a UDP callee with a Record-Route entry per transport;
//! a certificate replaced on disk served to new connections within 2 s while
//! open connections stay up (and a broken one refused); TLS 1.0/1.1 clients
//! refused (openssl); outbound TLS sending the next hop's domain as SNI and
//! refusing a certificate no trusted CA vouches for (openssl s_server).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Write};
use std::net::{TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use weir_e2e::{
    baresip_config, free_port, free_port_pair, free_ports, have, scenario, tempdir, Program, Sipp,
    Weir,
};

fn skip_without(program: &str, package: &str) -> bool {
    if have(program) {
        return false;
    }
    eprintln!("SKIPPED: {program} is not installed (scripts/setup.sh test installs {package})");
    true
}

/// A test CA and the certificates it signs, as PEM files in a folder.
struct Pki {
    dir: PathBuf,
    ca: rcgen::Certificate,
    ca_key: rcgen::KeyPair,
}

impl Pki {
    fn new(dir: &Path) -> Pki {
        Pki::named(dir, "Weir test CA")
    }

    fn named(dir: &Path, name: &str) -> Pki {
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        let ca = params.self_signed(&ca_key).unwrap();
        std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
        Pki {
            dir: dir.to_path_buf(),
            ca,
            ca_key,
        }
    }

    fn ca_file(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    /// A certificate for `names` (DNS names or IP addresses): (cert PEM, key PEM).
    fn issue(&self, names: &[&str]) -> (String, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let params = rcgen::CertificateParams::new(names).unwrap();
        let cert = params.signed_by(&key, &self.ca, &self.ca_key).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    /// Issues and writes `NAME.pem`, `NAME.key` and `NAME.both` (baresip wants
    /// certificate and key in one file).
    fn write(&self, name: &str, names: &[&str]) -> (PathBuf, PathBuf) {
        let (cert, key) = self.issue(names);
        let (c, k) = (
            self.dir.join(format!("{name}.pem")),
            self.dir.join(format!("{name}.key")),
        );
        std::fs::write(&c, &cert).unwrap();
        std::fs::write(&k, &key).unwrap();
        std::fs::write(
            self.dir.join(format!("{name}.both")),
            format!("{cert}{key}"),
        )
        .unwrap();
        (c, k)
    }
}

/// weir with a UDP and a TLS listener, `weir.pem` from `pki`, trusting its CA.
struct TlsWeir {
    weir: Weir,
    udp: u16,
    tls: u16,
}

fn start_weir(pki: &Pki, extra: &str) -> TlsWeir {
    let (cert, key) = pki.write("weir", &["localhost", "127.0.0.1"]);
    let (udp, tls) = (free_port(), free_port());
    let config = format!(
        "[sip]\nlisten = [\"udp:127.0.0.1:{udp}\", \"tls:127.0.0.1:{tls}\"]\n\
         [tls]\ncertificate = \"{}\"\nprivate_key = \"{}\"\nca_file = \"{}\"\n{extra}",
        cert.display(),
        key.display(),
        pki.ca_file().display()
    );
    let weir = Weir::start(&config, format!("127.0.0.1:{udp}").parse().unwrap());
    TlsWeir { weir, udp, tls }
}

/// A baresip user agent speaking TLS, with its own certificate from `pki`
/// (it listens for TLS on `port + 1`) and trusting the test CA.
fn tls_phone(
    dir: &Path,
    pki: &Pki,
    name: &str,
    port: u16,
    account: &str,
    args: &[&str],
) -> Program {
    let home = dir.join(name);
    let rtp = free_ports(21);
    baresip_config(&home, port, (rtp, rtp.saturating_add(20)), account);
    pki.write(name, &["127.0.0.1"]);
    let config = std::fs::read_to_string(home.join("config"))
        .unwrap()
        .replace("sip_trans_def\t\tudp", "sip_trans_def\t\ttls");
    let config = format!(
        "{config}sip_certificate\t\t{}\nsip_cafile\t\t{}\n",
        pki.dir.join(format!("{name}.both")).display(),
        pki.ca_file().display()
    );
    std::fs::write(home.join("config"), config).unwrap();
    let home = home.display().to_string();
    let mut all = vec!["-f", home.as_str()];
    all.extend_from_slice(args);
    Program::spawn(dir, name, "baresip", &all)
}

fn keep(dir: tempdir::Dir, w: &TlsWeir) -> String {
    format!(
        "kept {}\n--- weir ---\n{}",
        dir.keep().display(),
        w.weir.log_text()
    )
}

#[test]
fn softphones_call_each_other_over_tls_with_certificates_checked() {
    if skip_without("baresip", "baresip") {
        return;
    }
    let dir = tempdir::Dir::new("tls-phones");
    let pki = Pki::new(dir.path());
    let w = start_weir(&pki, "");
    let (bob_port, alice_port) = (free_port_pair(), free_port_pair());
    let bob = tls_phone(
        dir.path(),
        &pki,
        "bob",
        bob_port,
        "<sip:bob@127.0.0.1;transport=tls>;regint=0;answermode=auto",
        &["-t", "20"],
    );
    std::thread::sleep(Duration::from_millis(500));
    // Alice's only way out is weir's TLS listener; weir dials bob's TLS
    // listener by IP address, so bob's certificate must name that address.
    let alice = tls_phone(
        dir.path(),
        &pki,
        "alice",
        alice_port,
        &format!(
            "<sip:alice@127.0.0.1;transport=tls>;outbound=\"sip:127.0.0.1:{};transport=tls\";regint=0",
            w.tls
        ),
        &[
            "-e",
            &format!("/dial sip:bob@127.0.0.1:{};transport=tls", bob_port + 1),
            "-t",
            "5",
        ],
    );
    let a = alice.wait(Duration::from_secs(15));
    let bob_out = bob.output();
    if !a.output.contains("Call established") || !bob_out.contains("Call established") {
        panic!(
            "no call over TLS\n--- alice ---\n{}\n--- bob ---\n{}\n{}",
            a.output,
            bob_out,
            keep(dir, &w)
        );
    }
}

#[test]
fn a_tls_caller_reaches_a_udp_callee_through_a_record_route_per_transport() {
    if skip_without("baresip", "baresip") {
        return;
    }
    let dir = tempdir::Dir::new("tls-udp");
    let pki = Pki::new(dir.path());
    let w = start_weir(&pki, "");
    let far = free_port();
    let uas = scenario(
        dir.path(),
        "tls-uas.xml",
        &[
            ("@RR_UDP@", &format!("127\\.0\\.0\\.1:{}", w.udp)),
            ("@RR_TLS@", &format!("127\\.0\\.0\\.1:{}", w.tls)),
        ],
    );
    let sipp = Sipp::spawn_for(
        dir.path(),
        "far",
        &[
            "-sf".into(),
            uas.display().to_string(),
            "-i".into(),
            "127.0.0.1".into(),
            "-p".into(),
            far.to_string(),
            "-m".into(),
            "1".into(),
        ],
        Duration::from_secs(20),
    );
    let alice = tls_phone(
        dir.path(),
        &pki,
        "alice",
        free_port_pair(),
        &format!(
            "<sip:alice@127.0.0.1;transport=tls>;outbound=\"sip:127.0.0.1:{};transport=tls\";regint=0",
            w.tls
        ),
        &["-e", &format!("/dial sip:far@127.0.0.1:{far};transport=udp"), "-t", "6"],
    );
    let run = sipp.wait(Duration::from_secs(25));
    let a = alice.wait(Duration::from_secs(15));
    // The far end's BYE reached alice over TLS: baresip reports the session
    // closed by the peer.
    if run.successful != 1
        || !a.output.contains("Call established")
        || !a.output.contains("terminated")
    {
        panic!(
            "the TLS-to-UDP call failed\n--- far end ---\n{}\n--- alice ---\n{}\n{}",
            run.output,
            a.output,
            keep(dir, &w)
        );
    }
}

/// A TLS client that trusts the test CA and records what certificate it saw.
struct Client {
    stream: rustls::StreamOwned<rustls::ClientConnection, TcpStream>,
}

impl Client {
    fn connect(pki: &Pki, port: u16) -> Client {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(pki.ca.der().clone()).unwrap();
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        let conn = rustls::ClientConnection::new(
            Arc::new(config),
            "localhost".to_string().try_into().unwrap(),
        )
        .unwrap();
        let tcp = TcpStream::connect(("127.0.0.1", port)).unwrap();
        tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut stream = rustls::StreamOwned::new(conn, tcp);
        while stream.conn.is_handshaking() {
            stream.conn.complete_io(&mut stream.sock).unwrap();
        }
        Client { stream }
    }

    /// The leaf certificate the server presented.
    fn certificate(&self) -> Vec<u8> {
        self.stream.conn.peer_certificates().unwrap()[0].to_vec()
    }

    /// Sends an OPTIONS to weir itself on this connection; the status answered.
    fn options(&mut self, port: u16, n: u32) -> u16 {
        let me = self.stream.sock.local_addr().unwrap();
        let msg = format!(
            "OPTIONS sip:127.0.0.1:{port};transport=tls SIP/2.0\r\nVia: SIP/2.0/TLS {me};branch=z9hG4bK-tls{n}\r\n\
             Max-Forwards: 70\r\nFrom: <sip:probe@localhost>;tag=t{n}\r\nTo: <sip:127.0.0.1:{port}>\r\n\
             Call-ID: tls-{n}-{}@test\r\nCSeq: {n} OPTIONS\r\nContent-Length: 0\r\n\r\n",
            me.port()
        );
        self.stream.write_all(msg.as_bytes()).unwrap();
        self.stream.flush().unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        while !got.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = self.stream.read(&mut buf).unwrap();
            assert!(n > 0, "weir closed the connection");
            got.extend_from_slice(&buf[..n]);
        }
        let text = String::from_utf8_lossy(&got);
        text.split(' ').nth(1).unwrap().parse().unwrap()
    }
}

/// Writes a file by renaming a new one over it, as certificate tools do.
fn replace(path: &Path, text: &str) {
    let tmp = path.with_extension("new");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

#[test]
fn a_certificate_replaced_on_disk_is_served_within_two_seconds_and_open_connections_stay_up() {
    let dir = tempdir::Dir::new("tls-reload");
    let pki = Pki::new(dir.path());
    let w = start_weir(&pki, "");
    let mut old = Client::connect(&pki, w.tls);
    let first = old.certificate();
    assert_eq!(old.options(w.tls, 1), 200);

    // A new pair (key and certificate both change) appears on disk.
    let (cert, key) = pki.issue(&["localhost", "127.0.0.1"]);
    let replaced = Instant::now();
    replace(&pki.dir.join("weir.key"), &key);
    replace(&pki.dir.join("weir.pem"), &cert);
    let second = loop {
        let seen = Client::connect(&pki, w.tls).certificate();
        if seen != first {
            break seen;
        }
        assert!(
            replaced.elapsed() < Duration::from_secs(2),
            "the new certificate was not served within 2 s\n{}",
            w.weir.log_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    println!("new certificate served after {:?}", replaced.elapsed());
    assert!(
        second == der_of(&cert),
        "served a certificate that is neither the old nor the new one"
    );
    // The connection opened before the change still carries requests.
    assert_eq!(old.options(w.tls, 2), 200);

    // A broken certificate: refused with the reason, the second pair serves on.
    replace(
        &pki.dir.join("weir.pem"),
        "-----BEGIN CERTIFICATE-----\nnot base64\n",
    );
    std::thread::sleep(Duration::from_millis(2500));
    let mut after = Client::connect(&pki, w.tls);
    assert!(
        after.certificate() == second,
        "a broken file replaced the certificate"
    );
    assert_eq!(after.options(w.tls, 3), 200);
    let log = w.weir.log_text();
    assert!(
        log.contains("TLS certificate not reloaded")
            && (log.contains("weir.pem: no PEM certificate in it")
                || log.contains("weir.pem: not PEM")),
        "the refusal is not logged with the file\n{log}"
    );
    assert_eq!(old.options(w.tls, 4), 200);
}

/// The DER of the first certificate in a PEM text.
fn der_of(pem: &str) -> Vec<u8> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::CertificateDer::from_pem_slice(pem.as_bytes())
        .unwrap()
        .to_vec()
}

/// Runs `openssl s_client` against `port` with `args`; its whole output.
fn s_client(port: u16, args: &[&str]) -> String {
    let out = std::process::Command::new("openssl")
        .args(["s_client", "-connect", &format!("127.0.0.1:{port}")])
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn tls_1_0_and_1_1_clients_are_refused() {
    if skip_without("openssl", "openssl") {
        return;
    }
    let dir = tempdir::Dir::new("tls-versions");
    let pki = Pki::new(dir.path());
    let w = start_weir(&pki, "");
    let ca = pki.ca_file().display().to_string();
    // The control: TLS 1.2 completes and the chain verifies.
    let ok = s_client(w.tls, &["-tls1_2", "-CAfile", &ca, "-verify_return_error"]);
    assert!(
        ok.contains("Protocol  : TLSv1.2") && ok.contains("Verify return code: 0 (ok)"),
        "{ok}"
    );
    // SECLEVEL=0 lets openssl offer the old versions at all.
    for old in ["-tls1", "-tls1_1"] {
        let out = s_client(w.tls, &[old, "-cipher", "DEFAULT@SECLEVEL=0"]);
        assert!(
            out.contains("alert") && out.contains("Cipher is (NONE)"),
            "{old} was not refused:\n{out}"
        );
    }
}

/// `openssl s_server` as a TLS next hop for `localhost`: it serves the right
/// certificate only to a client that sends SNI "localhost" (anything else is a
/// fatal alert) and prints what it receives. Its stdin stays open (EOF
/// would stop it); killed when dropped.
struct SServer {
    child: std::process::Child,
    out: PathBuf,
}

impl SServer {
    fn start(dir: &Path, pki: &Pki, port: u16) -> SServer {
        let (wrong_c, wrong_k) = pki.write("default", &["default.invalid"]);
        let (c, k) = pki.write("carrier", &["localhost"]);
        let out = dir.join(format!("s_server-{port}.out"));
        let file = std::fs::File::create(&out).unwrap();
        let child = std::process::Command::new("openssl")
            .args(["s_server", "-accept", &format!("127.0.0.1:{port}")])
            .arg("-cert")
            .arg(wrong_c)
            .arg("-key")
            .arg(wrong_k)
            .arg("-cert2")
            .arg(c)
            .arg("-key2")
            .arg(k)
            .args(["-servername", "localhost", "-servername_fatal"])
            .stdin(std::process::Stdio::piped())
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .spawn()
            .unwrap();
        SServer { child, out }
    }

    /// What it printed until now.
    fn output(&self) -> String {
        String::from_utf8_lossy(&std::fs::read(&self.out).unwrap_or_default()).into_owned()
    }
}

impl Drop for SServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Sends `INVITE sip:carrier@localhost:PORT;transport=tls` to weir over UDP;
/// the status line of the first final answer (None: none within `wait`).
fn invite_to(weir: u16, target_port: u16, wait: Duration) -> Option<String> {
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    let me = sock.local_addr().unwrap();
    let msg = format!(
        "INVITE sip:carrier@localhost:{target_port};transport=tls SIP/2.0\r\n\
         Via: SIP/2.0/UDP {me};branch=z9hG4bK-sni{}\r\nMax-Forwards: 70\r\n\
         From: <sip:agent@127.0.0.1>;tag=a\r\nTo: <sip:carrier@localhost>\r\n\
         Call-ID: sni-{}@test\r\nCSeq: 1 INVITE\r\nContact: <sip:agent@{me}>\r\nContent-Length: 0\r\n\r\n",
        me.port(),
        me.port()
    );
    sock.send_to(msg.as_bytes(), ("127.0.0.1", weir)).unwrap();
    let deadline = Instant::now() + wait;
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline {
        sock.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        if let Ok((n, _)) = sock.recv_from(&mut buf) {
            let text = String::from_utf8_lossy(&buf[..n]);
            let line = text.lines().next()?.to_string();
            if !line.starts_with("SIP/2.0 1") {
                return Some(line);
            }
        }
    }
    None
}

#[test]
fn outbound_tls_sends_the_domain_as_sni_and_checks_the_certificate() {
    if skip_without("openssl", "openssl") {
        return;
    }
    let dir = tempdir::Dir::new("tls-sni");
    let pki = Pki::new(dir.path());
    let w = start_weir(&pki, "");
    let port = free_port();
    let server = SServer::start(dir.path(), &pki, port);
    std::thread::sleep(Duration::from_millis(500));
    // No answer comes (s_server is no SIP peer): the INVITE arriving is enough.
    let _ = invite_to(w.udp, port, Duration::from_secs(2));
    let got = server.output();
    assert!(
        got.contains("Hostname in TLS extension: \"localhost\""),
        "no SNI\n{got}\n{}",
        w.weir.log_text()
    );
    assert!(
        got.contains("INVITE sip:carrier@localhost:")
            && got.contains("Via: SIP/2.0/TLS 127.0.0.1:"),
        "the INVITE did not arrive over TLS\n{got}"
    );

    // The same next hop when weir trusts another CA: the handshake fails, the
    // caller gets an error at once (500, not the 503 that would blame weir
    // itself, RFC 3261 §16.7), and the log says why.
    let other = tempdir::Dir::new("tls-sni-other");
    let other_pki = Pki::named(other.path(), "Another CA");
    let (cert, key) = pki.write("weir2", &["localhost"]);
    let udp = free_port();
    let config = format!(
        "[sip]\nlisten = [\"udp:127.0.0.1:{udp}\", \"tls:127.0.0.1:{}\"]\n\
         [tls]\ncertificate = \"{}\"\nprivate_key = \"{}\"\nca_file = \"{}\"\n",
        free_port(),
        cert.display(),
        key.display(),
        other_pki.ca_file().display()
    );
    let distrustful = Weir::start(&config, format!("127.0.0.1:{udp}").parse().unwrap());
    let port = free_port();
    let _server = SServer::start(dir.path(), &pki, port);
    std::thread::sleep(Duration::from_millis(500));
    let line = invite_to(udp, port, Duration::from_secs(5));
    assert_eq!(
        line.as_deref(),
        Some("SIP/2.0 500 Server Internal Error (next hop unreachable)"),
        "{}",
        distrustful.log_text()
    );
    let deadline = Instant::now() + Duration::from_secs(2);
    while !distrustful.log_text().contains("UnknownIssuer") && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let log = distrustful.log_text();
    assert!(
        log.contains("TLS handshake failed") && log.contains("UnknownIssuer"),
        "{log}"
    );
}
