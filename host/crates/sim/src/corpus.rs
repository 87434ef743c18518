//! The external SIP corpora (`../shared/corpora`, or `$WEIR_CORPORA`), read in
//! place, and what each folder's README says a correct proxy does with each file.
//!
//! The corpora are third-party data and are never copied into the repository.
//! When they are absent, [`dir`] returns `None` and the tests that need them say
//! that they skipped.

use std::path::{Path, PathBuf};

/// Where the corpora are: `$WEIR_CORPORA`, else `shared/corpora` beside the
/// repository checkout.
pub fn dir() -> Option<PathBuf> {
    if let Ok(p) = std::env::var("WEIR_CORPORA") {
        let p = PathBuf::from(p);
        return p.is_dir().then_some(p);
    }
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    // host/crates/sim -> repository root -> its parent's shared/corpora
    let root = here.ancestors().nth(3)?;
    let p = root.parent()?.join("shared").join("corpora");
    p.is_dir().then_some(p)
}

/// Prints the standard skip notice and returns the folder when present.
pub fn folder(name: &str) -> Option<PathBuf> {
    match dir().map(|d| d.join(name)).filter(|d| d.is_dir()) {
        Some(d) => Some(d),
        None => {
            eprintln!(
                "SKIPPED: corpus folder `{name}` not found (set WEIR_CORPORA or check out shared/corpora beside the repository)"
            );
            None
        }
    }
}

/// Every regular file of a folder except README.md, sorted by name, with bytes.
pub fn files(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out: Vec<(String, Vec<u8>)> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.path().is_file())
        .filter(|e| e.file_name() != "README.md")
        .filter_map(|e| {
            let bytes = std::fs::read(e.path()).ok()?;
            Some((e.file_name().to_string_lossy().into_owned(), bytes))
        })
        .collect();
    out.sort();
    out
}

/// What the proxy must do with one corpus message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// Route it to the next hop.
    Forward,
    /// Answer the sender with this status.
    Reply(u16),
    /// Send nothing at all.
    Drop,
}

/// RFC 4475 §3, per the corpus README's table.
pub fn rfc4475(file: &str) -> Option<Expect> {
    use Expect::*;
    Some(match file.trim_end_matches(".dat") {
        "wsinv" | "intmeth" | "esc01" | "escnull" | "esc02" | "lwsdisp" | "longreq" | "dblreq"
        | "semiuri" | "transports" | "mpart01" | "inv2543" | "baddate" | "unksm2" | "cparam01"
        | "cparam02" | "regescrt" | "invut" | "regaut01" | "sdp01" => Forward,
        "badinv01" | "clerr" | "ncl" | "scalar02" | "quotbal" | "ltgtruri" | "lwsruri"
        | "lwsstart" | "trws" | "escruri" | "regbadct" | "badaspec" | "mismatch01"
        | "badbranch" | "insuf" | "multi01" | "mcl01" => Reply(400),
        "badvers" => Reply(505),
        "mismatch02" => Reply(501),
        "unkscm" | "novelsc" => Reply(416),
        "bext01" => Reply(420),
        "zeromf" => Reply(483),
        // baddn: no empty line ends its headers (archive quirk): 400 or drop; we drop.
        "baddn" | "unreason" | "noreason" | "scalarlg" | "bigcode" | "bcast" | "test" => Drop,
        _ => return None,
    })
}

/// RFC 5118 §4 (the `wire/` copies), per the corpus README.
pub fn rfc5118(file: &str) -> Option<Expect> {
    Some(match file {
        "ipv6-bad" => Expect::Reply(400),
        "ipv6-good"
        | "port-ambiguous"
        | "port-unambiguous"
        | "via-received-param-with-delim"
        | "via-received-param-no-delim"
        | "ipv6-in-sdp"
        | "mult-ip-in-header"
        | "mult-ip-in-sdp"
        | "ipv4-mapped-ipv6"
        | "ipv6-bug-abnf-3-colons"
        | "ipv6-correct-abnf-2-colons" => Expect::Forward,
        _ => return None,
    })
}

/// Turns a seed with bare LF or mixed line ends into CRLF and fixes its
/// Content-Length to the body it carries, as the corpus READMEs say to do
/// before replaying a seed as a datagram.
pub fn to_wire(bytes: &[u8]) -> Vec<u8> {
    let mut crlf = Vec::with_capacity(bytes.len() + 64);
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'\r' if bytes.get(i + 1) == Some(&b'\n') => {
                crlf.extend_from_slice(b"\r\n");
                i += 2;
            }
            b'\r' | b'\n' => {
                crlf.extend_from_slice(b"\r\n");
                i += 1;
            }
            b => {
                crlf.push(b);
                i += 1;
            }
        }
    }
    let Some(head_end) = find(&crlf, b"\r\n\r\n") else {
        crlf.extend_from_slice(b"\r\n");
        return crlf;
    };
    let body_len = crlf.len() - head_end - 4;
    let head = String::from_utf8_lossy(&crlf[..head_end]).into_owned();
    let mut out = Vec::with_capacity(crlf.len());
    for (n, line) in head.split("\r\n").enumerate() {
        if n > 0 {
            out.extend_from_slice(b"\r\n");
        }
        let lower = line.to_ascii_lowercase();
        if lower.starts_with("content-length")
            || lower.starts_with("l:")
            || lower.starts_with("l :")
        {
            let name = &line[..line.find(':').unwrap_or(line.len())];
            out.extend_from_slice(format!("{name}: {body_len}").as_bytes());
        } else {
            out.extend_from_slice(line.as_bytes());
        }
    }
    out.extend_from_slice(&crlf[head_end..]);
    out
}

fn find(h: &[u8], n: &[u8]) -> Option<usize> {
    h.windows(n.len()).position(|w| w == n)
}

/// One PROTOS c07-sip case with its placeholders filled: the INVITE and the
/// CANCEL teardown.
#[derive(Debug, Clone)]
pub struct ProtosCase {
    pub number: usize,
    pub invite: Vec<u8>,
    pub teardown: Vec<u8>,
}

/// Reads every PROTOS case from `cases.tar.gz`, filling the placeholders with
/// `to` (user@host), `from_host` and `from_port` (the sender).
pub fn protos_cases(to: &str, from_host: &str, from_port: u16) -> Option<Vec<ProtosCase>> {
    let path = folder("protos-c07-sip")?.join("cases.tar.gz");
    let file = std::fs::File::open(path).ok()?;
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(file));
    let mut cases = Vec::new();
    for entry in archive.entries().ok()? {
        let Ok(mut entry) = entry else { continue };
        let Ok(path) = entry.path() else { continue };
        let Some(number) = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.parse::<usize>().ok())
        else {
            continue;
        };
        let mut bytes = Vec::new();
        if std::io::Read::read_to_end(&mut entry, &mut bytes).is_err() {
            continue;
        }
        let Some((first, rest)) = record(&bytes) else {
            continue;
        };
        let Some((second, _)) = record(rest) else {
            continue;
        };
        let fill = |t: &[u8]| fill_protos(t, number, to, from_host, from_port);
        cases.push(ProtosCase {
            number,
            invite: fill(first),
            teardown: fill(second),
        });
    }
    cases.sort_by_key(|c| c.number);
    Some(cases)
}

fn record(b: &[u8]) -> Option<(&[u8], &[u8])> {
    let sp = b.iter().position(|&c| c == b' ')?;
    let len: usize = std::str::from_utf8(&b[..sp]).ok()?.trim().parse().ok()?;
    let body = b.get(sp + 1..sp + 1 + len)?;
    Some((body, &b[sp + 1 + len..]))
}

fn fill_protos(t: &[u8], number: usize, to: &str, from_host: &str, from_port: u16) -> Vec<u8> {
    let mut s = t.to_vec();
    let n = number.to_string();
    let from = format!("protos@{from_host}");
    let port = from_port.to_string();
    for (k, v) in [
        (&b"<To>"[..], to.as_bytes()),
        (b"<From>", from.as_bytes()),
        (b"<From-Address>", from_host.as_bytes()),
        (b"<From-IP>", from_host.as_bytes()),
        (b"<Local-Port>", port.as_bytes()),
        (b"<Branch-ID>", n.as_bytes()),
        (b"<Call-ID>", n.as_bytes()),
        (b"<CSeq>", b"1"),
        (b"<Teardown-Method>", b"CANCEL"),
    ] {
        s = replace_all(&s, k, v);
    }
    // Content-Length last: the bytes after the first CRLFCRLF.
    let body = find(&s, b"\r\n\r\n").map_or(0, |i| s.len() - i - 4);
    replace_all(&s, b"<Content-Length>", body.to_string().as_bytes())
}

fn replace_all(s: &[u8], from: &[u8], to: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        if s[i..].starts_with(from) {
            out.extend_from_slice(to);
            i += from.len();
        } else {
            out.push(s[i]);
            i += 1;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_conversion_fixes_line_ends_and_length() {
        let w = to_wire(b"OPTIONS sip:a@b SIP/2.0\nl: 99\n\nab\n");
        assert_eq!(w, b"OPTIONS sip:a@b SIP/2.0\r\nl: 4\r\n\r\nab\r\n");
    }
}
