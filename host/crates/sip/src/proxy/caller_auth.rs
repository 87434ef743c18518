//! Authenticating callers (RFC 3261 §22.1–§22.4, RFC 7616, RFC 8760): what
//! the proxy does when a router decides `challenge`.
//!
//! ```text
//!  request ──▶ router: challenge(realm)
//!                │
//!                ├─ no credentials for realm ─────────────▶ 401/407 (fresh nonce)
//!                ├─ malformed credentials ────────────────▶ 400, naming the header
//!                ├─ stale nonce, right answer ────────────▶ 401/407 stale=true
//!                ├─ foreign nonce, other algorithm, no qop ▶ 401/407 (fresh nonce)
//!                ├─ wrong answer or user, reused nc ──────▶ failure counted,
//!                │                                          401/407, or 403 once banned
//!                │                                          (then silence until the ban ends)
//!                └─ verified ─▶ credentials line removed ─▶ router again, with the identity
//! ```
//!
//! REGISTER is challenged with 401 and `WWW-Authenticate` (answered in
//! `Authorization`), everything else with 407 and `Proxy-Authenticate`
//! (answered in `Proxy-Authorization`). Users are stored as H(A1) per
//! algorithm; the password itself is never kept. A source that fails too
//! often in a window is refused for a while without its credentials being
//! looked at.

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use crate::digest::{self, Algorithm, Bans, Credentials, DigestError, Refusal};
use crate::message::{Message, Method};
use crate::uri::SipUri;

use super::Rejection;

/// A user who may authenticate to this proxy: H(A1) per algorithm, so the
/// password is not kept. Debug shows neither.
#[derive(Clone, PartialEq, Eq)]
pub struct StoredUser {
    md5: Option<String>,
    sha256: Option<String>,
}

impl StoredUser {
    /// H(A1) for `username` in `realm` with `password`, for both algorithms.
    pub fn from_password(realm: &str, username: &str, password: &str) -> StoredUser {
        StoredUser {
            md5: Some(digest::ha1(Algorithm::Md5, username, realm, password)),
            sha256: Some(digest::ha1(Algorithm::Sha256, username, realm, password)),
        }
    }

    /// From H(A1) values (lower-case hex) computed elsewhere: the user can
    /// answer only with the algorithms given.
    pub fn from_ha1(md5: Option<String>, sha256: Option<String>) -> StoredUser {
        StoredUser { md5, sha256 }
    }

    /// The algorithms this user can answer with.
    pub fn algorithms(&self) -> Vec<Algorithm> {
        let mut v = Vec::new();
        if self.md5.is_some() {
            v.push(Algorithm::Md5);
        }
        if self.sha256.is_some() {
            v.push(Algorithm::Sha256);
        }
        v
    }

    fn ha1(&self, algorithm: Algorithm) -> Option<&str> {
        match algorithm {
            Algorithm::Md5 => self.md5.as_deref(),
            Algorithm::Sha256 => self.sha256.as_deref(),
        }
    }
}

impl fmt::Debug for StoredUser {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("StoredUser(…)")
    }
}

/// How callers are challenged (`[digest]` in the configuration).
#[derive(Clone)]
pub struct DigestSettings {
    /// Offered in this order, one challenge header each (most preferred first).
    pub algorithms: Vec<Algorithm>,
    /// How long a nonce may be used before it is stale.
    pub nonce_lifetime: Duration,
    /// Failures from one source within `ban_window` that ban it…
    pub ban_after: u32,
    pub ban_window: Duration,
    /// …for this long.
    pub ban_time: Duration,
    /// Keys the nonce MACs: must be random (the host draws it at start).
    pub secret: [u8; 32],
    /// Users by (realm, username), from the configuration.
    pub users: HashMap<(String, String), StoredUser>,
    /// Users provisioned while running (the admin API), asked after `users`.
    pub provisioned: ProvisionedUsers,
}

/// Users added and removed while the proxy runs, shared with whoever
/// provisions them. Kept as H(A1) like configured users.
pub type ProvisionedUsers = Arc<RwLock<HashMap<(String, String), StoredUser>>>;

impl fmt::Debug for DigestSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DigestSettings")
            .field("algorithms", &self.algorithms)
            .field("nonce_lifetime", &self.nonce_lifetime)
            .field("ban_after", &self.ban_after)
            .field("ban_window", &self.ban_window)
            .field("ban_time", &self.ban_time)
            .field("users", &self.users.len())
            .field(
                "provisioned",
                &self.provisioned.read().map(|u| u.len()).unwrap_or_default(),
            )
            .finish_non_exhaustive()
    }
}

impl Default for DigestSettings {
    fn default() -> Self {
        DigestSettings {
            // MD5 only by default: user agents that predate RFC 8760 (baresip
            // 1.0, for one) give up on a challenge set that contains SHA-256
            // at all, even after an MD5 one. Operators whose phones handle it
            // list SHA-256 first.
            algorithms: vec![Algorithm::Md5],
            nonce_lifetime: Duration::from_secs(300),
            ban_after: 10,
            ban_window: Duration::from_secs(60),
            ban_time: Duration::from_secs(900),
            secret: [0; 32],
            users: HashMap::new(),
            provisioned: ProvisionedUsers::default(),
        }
    }
}

/// What to do with a request its router wants authenticated.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// Verified as `user`; the credentials are header line `field`.
    Verified { user: String, field: usize },
    /// Answer with this challenge response.
    Challenge(Rejection),
    /// Answer with this error.
    Refuse(Rejection),
}

/// Realms a router may challenge in at once: each keeps its own nonce state.
const MAX_REALMS: usize = 1024;

/// The server side of digest for the proxy: nonce state per realm, bans.
pub(crate) struct CallerAuth {
    settings: DigestSettings,
    realms: HashMap<String, digest::Server>,
    bans: Bans,
    /// Wrong answers (unknown user, wrong password, reused nonce count).
    pub failures: u64,
}

impl CallerAuth {
    pub fn new(settings: DigestSettings) -> CallerAuth {
        CallerAuth {
            bans: Bans::new(settings.ban_after, settings.ban_window, settings.ban_time),
            settings,
            realms: HashMap::new(),
            failures: 0,
        }
    }

    /// Whether `ip` is banned: its requests are refused before routing.
    pub fn is_banned(&self, ip: IpAddr, now: Instant) -> bool {
        self.bans.is_banned(ip.to_canonical(), now)
    }

    /// Checks `msg` (from `ip`) for credentials in `realm`. `salt` makes a
    /// fresh nonce unique.
    pub fn check(
        &mut self,
        now: Instant,
        msg: &Message,
        ip: IpAddr,
        realm: &str,
        salt: u64,
    ) -> Outcome {
        let stale = match self.examine(now, msg, ip.to_canonical(), realm) {
            Ok(decided) => return decided,
            Err(Rechallenge { stale }) => stale,
        };
        let Some(server) = self.realms.get(realm) else {
            return Outcome::Refuse(Rejection::new(500, "Server Internal Error"));
        };
        let register = msg.method() == Some(Method::Register);
        Outcome::Challenge(challenge(
            server,
            &self.settings.algorithms,
            now,
            salt,
            register,
            stale,
        ))
    }

    /// Everything but writing a challenge: the outcome, or that the caller
    /// is to be challenged (again). Creates `realm`'s nonce state.
    fn examine(
        &mut self,
        now: Instant,
        msg: &Message,
        ip: IpAddr,
        realm: &str,
    ) -> Result<Outcome, Rechallenge> {
        const FRESH: Rechallenge = Rechallenge { stale: false };
        let header = if msg.method() == Some(Method::Register) {
            "Authorization"
        } else {
            "Proxy-Authorization"
        };
        if realm.is_empty() || realm.contains(['"', '\\', '\r', '\n']) {
            return Ok(Outcome::Refuse(Rejection::new(
                500,
                "Server Internal Error (the router asked for a challenge without a usable realm)",
            )));
        }
        if !self.realms.contains_key(realm) && self.realms.len() >= MAX_REALMS {
            return Ok(Outcome::Refuse(Rejection::new(
                500,
                "Server Internal Error (too many digest realms in use)",
            )));
        }
        let server = self.realms.entry(realm.to_string()).or_insert_with(|| {
            digest::Server::new(
                realm,
                self.settings.secret,
                now,
                self.settings.nonce_lifetime,
            )
        });
        let mut found = None;
        for (i, f) in msg.fields_all().iter().enumerate() {
            if !msg.name_bytes(f).eq_ignore_ascii_case(header.as_bytes()) {
                continue;
            }
            match Credentials::parse(msg.value(f)) {
                Ok(c) if c.realm == realm => {
                    found = Some((i, c));
                    break;
                }
                // Another realm's, or another scheme's: someone else's to check.
                Ok(_) | Err(DigestError::NotDigest) => {}
                // We offer only what we support: the caller learns it from a
                // fresh challenge.
                Err(DigestError::UnsupportedAlgorithm(_)) => return Err(FRESH),
                Err(e) => {
                    return Ok(Outcome::Refuse(Rejection::new(
                        400,
                        format!("Bad Request (malformed {header}: {e})"),
                    )))
                }
            }
        }
        let Some((field, creds)) = found else {
            return Err(FRESH);
        };
        if !same_target(&creds.uri, msg.request_uri_bytes()) {
            return Ok(Outcome::Refuse(Rejection::new(
                400,
                format!("Bad Request ({header} uri is not the Request-URI)"),
            )));
        }
        if !self.settings.algorithms.contains(&creds.algorithm) {
            return Err(FRESH);
        }
        let key = (realm.to_string(), creds.username.clone());
        let provisioned;
        let stored = match self.settings.users.get(&key) {
            Some(u) => u.ha1(creds.algorithm),
            None => {
                // A writer that panicked cannot have left a half-written user
                // (one HashMap insert or remove): read on.
                let users = self
                    .settings
                    .provisioned
                    .read()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                provisioned = users
                    .get(&key)
                    .and_then(|u| u.ha1(creds.algorithm))
                    .map(str::to_string);
                provisioned.as_deref()
            }
        };
        match server.verify(now, &creds, msg.method_bytes(), stored) {
            Ok(()) => {
                self.bans.succeeded(ip);
                Ok(Outcome::Verified {
                    user: creds.username,
                    field,
                })
            }
            Err(Refusal::Stale) => Err(Rechallenge { stale: true }),
            // Not the caller's fault (a restart, another algorithm, an old
            // client): a fresh nonce is all it needs.
            Err(Refusal::ForeignNonce | Refusal::WrongAlgorithm | Refusal::NoQop) => Err(FRESH),
            Err(Refusal::WrongRealm(_) | Refusal::Replay(_) | Refusal::Wrong) => {
                self.failures += 1;
                if self.bans.failed(ip, now) {
                    return Ok(Outcome::Refuse(banned()));
                }
                Err(FRESH)
            }
        }
    }
}

/// The caller is to be challenged again (`stale`: its nonce only expired).
struct Rechallenge {
    stale: bool,
}

/// Whether the digest `uri` names the Request-URI (RFC 7616 §3.4.6): the
/// same text, or the same SIP host and port. User agents differ here (SIPp
/// writes `sip:host:port` for `sip:user@host:port`), and the nonce count,
/// which the response hashes, already stops an answer from being replayed.
fn same_target(digest_uri: &str, request_uri: &[u8]) -> bool {
    if digest_uri.as_bytes() == request_uri {
        return true;
    }
    let Ok(ruri) = std::str::from_utf8(request_uri) else {
        return false;
    };
    match (SipUri::parse(digest_uri), SipUri::parse(ruri)) {
        (Ok(a), Ok(b)) => a.scheme == b.scheme && a.host.matches(&b.host) && a.port == b.port,
        _ => false,
    }
}

/// The 403 the request that bans its source gets (later ones get nothing).
pub(crate) fn banned() -> Rejection {
    Rejection::new(403, "Forbidden (too many failed authentications)")
}

fn challenge(
    server: &digest::Server,
    algorithms: &[Algorithm],
    now: Instant,
    salt: u64,
    register: bool,
    stale: bool,
) -> Rejection {
    let (status, reason, name) = if register {
        (401, "Unauthorized", "WWW-Authenticate")
    } else {
        (407, "Proxy Authentication Required", "Proxy-Authenticate")
    };
    let mut rej = Rejection::new(status, reason);
    for (i, &alg) in algorithms.iter().enumerate() {
        // One nonce per algorithm: a nonce is bound to the algorithm it was
        // issued for.
        let c = server.challenge(now, salt.wrapping_add(i as u64), alg, stale);
        rej.headers.push(format!("{name}: {}", c.to_value()));
    }
    rej
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::digest::Challenge;
    use crate::message::Framing;
    use bytes::Bytes;

    const REALM: &str = "weir.test";

    fn settings() -> DigestSettings {
        let mut s = DigestSettings {
            algorithms: vec![Algorithm::Sha256, Algorithm::Md5],
            secret: [7; 32],
            ban_after: 3,
            ..DigestSettings::default()
        };
        s.users.insert(
            (REALM.into(), "alice".into()),
            StoredUser::from_password(REALM, "alice", "wonderland"),
        );
        s
    }

    fn request(method: &str, auth: Option<(&str, &str)>) -> Message {
        let mut text = format!(
            "{method} sip:bob@weir.test SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.1;branch=z9hG4bK1\r\nMax-Forwards: 70\r\nFrom: <sip:alice@weir.test>;tag=1\r\nTo: <sip:bob@weir.test>\r\nCall-ID: c1\r\nCSeq: 1 {method}\r\n"
        );
        if let Some((name, value)) = auth {
            text.push_str(&format!("{name}: {value}\r\n"));
        }
        text.push_str("Content-Length: 0\r\n\r\n");
        Message::parse(Bytes::from(text), Framing::Datagram).unwrap()
    }

    fn challenge_of(o: &Outcome) -> Challenge {
        let Outcome::Challenge(rej) = o else {
            panic!("expected a challenge, got {o:?}");
        };
        let v = rej.headers[0].split_once(": ").unwrap().1;
        Challenge::parse(v.as_bytes()).unwrap()
    }

    fn answer(c: &Challenge, method: &str, user: &str, password: &str, nc: u32) -> String {
        let creds = c.answer(
            user,
            password,
            method.as_bytes(),
            "sip:bob@weir.test",
            "0a4f113b",
            nc,
        );
        creds.to_value()
    }

    const IP: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 1));

    #[test]
    fn register_gets_401_and_others_407_with_each_algorithm() {
        let mut auth = CallerAuth::new(settings());
        let now = Instant::now();
        let o = auth.check(now, &request("REGISTER", None), IP, REALM, 1);
        let Outcome::Challenge(rej) = &o else {
            panic!("{o:?}")
        };
        assert_eq!(rej.status, 401);
        assert_eq!(rej.headers.len(), 2);
        assert!(rej.headers[0].starts_with("WWW-Authenticate: Digest "));
        assert!(rej.headers[0].contains("algorithm=SHA-256"));
        assert!(rej.headers[1].contains("algorithm=MD5"));
        let o = auth.check(now, &request("INVITE", None), IP, REALM, 2);
        let Outcome::Challenge(rej) = &o else {
            panic!("{o:?}")
        };
        assert_eq!(rej.status, 407);
        assert!(rej.headers[0].starts_with("Proxy-Authenticate: Digest "));
    }

    #[test]
    fn a_right_answer_is_verified_once_per_nonce_count() {
        let mut auth = CallerAuth::new(settings());
        let now = Instant::now();
        let c = challenge_of(&auth.check(now, &request("INVITE", None), IP, REALM, 1));
        let value = answer(&c, "INVITE", "alice", "wonderland", 1);
        let req = request("INVITE", Some(("Proxy-Authorization", &value)));
        let o = auth.check(now, &req, IP, REALM, 2);
        assert_eq!(
            o,
            Outcome::Verified {
                user: "alice".into(),
                field: 6
            }
        );
        // The same nc again is a replay: challenged, and counted.
        let o = auth.check(now, &req, IP, REALM, 3);
        assert!(!challenge_of(&o).stale);
        let value = answer(&c, "INVITE", "alice", "wonderland", 2);
        let o = auth.check(
            now,
            &request("INVITE", Some(("Proxy-Authorization", &value))),
            IP,
            REALM,
            4,
        );
        assert!(matches!(o, Outcome::Verified { .. }), "{o:?}");
    }

    #[test]
    fn the_register_answer_goes_in_authorization_and_the_md5_nonce_works() {
        let mut auth = CallerAuth::new(settings());
        let now = Instant::now();
        let o = auth.check(now, &request("REGISTER", None), IP, REALM, 1);
        let Outcome::Challenge(rej) = &o else {
            panic!("{o:?}")
        };
        let md5 = Challenge::parse(rej.headers[1].split_once(": ").unwrap().1.as_bytes()).unwrap();
        assert_eq!(md5.algorithm, Algorithm::Md5);
        let value = answer(&md5, "REGISTER", "alice", "wonderland", 1);
        // In the wrong header it is not looked at.
        let o = auth.check(
            now,
            &request("REGISTER", Some(("Proxy-Authorization", &value))),
            IP,
            REALM,
            2,
        );
        assert!(matches!(o, Outcome::Challenge(_)), "{o:?}");
        let o = auth.check(
            now,
            &request("REGISTER", Some(("Authorization", &value))),
            IP,
            REALM,
            3,
        );
        assert!(matches!(o, Outcome::Verified { .. }), "{o:?}");
    }

    #[test]
    fn stale_nonces_are_rechallenged_with_stale_true() {
        let mut auth = CallerAuth::new(settings());
        let now = Instant::now();
        let c = challenge_of(&auth.check(now, &request("INVITE", None), IP, REALM, 1));
        let value = answer(&c, "INVITE", "alice", "wonderland", 1);
        let later = now + Duration::from_secs(301);
        let o = auth.check(
            later,
            &request("INVITE", Some(("Proxy-Authorization", &value))),
            IP,
            REALM,
            2,
        );
        assert!(challenge_of(&o).stale);
        // A stale nonce with a wrong answer is just wrong.
        let value = answer(&c, "INVITE", "alice", "guess", 1);
        let o = auth.check(
            later,
            &request("INVITE", Some(("Proxy-Authorization", &value))),
            IP,
            REALM,
            3,
        );
        assert!(!challenge_of(&o).stale);
    }

    #[test]
    fn bad_credentials_get_precise_answers() {
        let mut auth = CallerAuth::new(settings());
        let now = Instant::now();
        let refuse = |o: Outcome| match o {
            Outcome::Refuse(r) => (r.status, r.reason.into_owned()),
            o => panic!("expected a refusal, got {o:?}"),
        };
        let check = |auth: &mut CallerAuth, v: &str| {
            auth.check(
                now,
                &request("INVITE", Some(("Proxy-Authorization", v))),
                IP,
                REALM,
                1,
            )
        };
        let (status, reason) = refuse(check(&mut auth, "Digest username=\"alice"));
        assert_eq!(status, 400);
        assert!(reason.contains("malformed Proxy-Authorization"), "{reason}");
        let (status, _) = refuse(check(
            &mut auth,
            "Digest username=\"a\", username=\"b\", realm=\"weir.test\", nonce=\"n\", uri=\"sip:bob@weir.test\", response=\"r\"",
        ));
        assert_eq!(status, 400);
        // An algorithm we do not offer: a fresh challenge says what we do.
        let o = check(
            &mut auth,
            "Digest username=\"alice\", realm=\"weir.test\", nonce=\"n\", uri=\"sip:bob@weir.test\", response=\"r\", algorithm=SHA-512-256",
        );
        assert!(matches!(o, Outcome::Challenge(_)), "{o:?}");
        // Another realm's credentials are not ours: challenged in ours.
        let o = check(
            &mut auth,
            "Digest username=\"alice\", realm=\"carrier\", nonce=\"n\", uri=\"sip:bob@weir.test\", response=\"r\"",
        );
        assert!(matches!(o, Outcome::Challenge(_)), "{o:?}");
        // A uri naming another target than the Request-URI.
        let o = check(
            &mut auth,
            "Digest username=\"alice\", realm=\"weir.test\", nonce=\"n\", uri=\"sip:eve@elsewhere.test\", response=\"r\"",
        );
        assert_eq!(refuse(o).0, 400);
        assert!(same_target("sip:weir.test", b"sip:bob@weir.test"));
        assert!(!same_target("sip:weir.test:5070", b"sip:bob@weir.test"));
        assert!(!same_target("sips:weir.test", b"sip:bob@weir.test"));
        // A nonce not issued here.
        let o = check(
            &mut auth,
            "Digest username=\"alice\", realm=\"weir.test\", nonce=\"n\", uri=\"sip:bob@weir.test\", response=\"r\", qop=auth, nc=00000001, cnonce=\"x\"",
        );
        assert!(matches!(o, Outcome::Challenge(_)), "{o:?}");
        // None of these counted as failed guesses.
        assert!(!auth.is_banned(IP, now));
        // An empty realm from the router is the router's fault.
        let o = auth.check(now, &request("INVITE", None), IP, "", 1);
        assert_eq!(refuse(o).0, 500);
    }

    #[test]
    fn repeated_failures_ban_the_source_and_unknown_users_count_too() {
        let mut auth = CallerAuth::new(settings());
        let now = Instant::now();
        let c = challenge_of(&auth.check(now, &request("INVITE", None), IP, REALM, 1));
        for (i, user) in ["alice", "mallory"].into_iter().enumerate() {
            let value = answer(&c, "INVITE", user, "guess", i as u32 + 1);
            let o = auth.check(
                now,
                &request("INVITE", Some(("Proxy-Authorization", &value))),
                IP,
                REALM,
                2,
            );
            // Unknown user and wrong password look the same.
            assert!(
                matches!(o, Outcome::Challenge(ref r) if r.status == 407),
                "{o:?}"
            );
        }
        let value = answer(&c, "INVITE", "alice", "guess2", 3);
        let o = auth.check(
            now,
            &request("INVITE", Some(("Proxy-Authorization", &value))),
            IP,
            REALM,
            3,
        );
        assert_eq!(o, Outcome::Refuse(banned()));
        assert!(auth.is_banned(IP, now));
        let other: IpAddr = "192.0.2.2".parse().unwrap();
        assert!(!auth.is_banned(other, now));
        // IPv4-mapped is the same source.
        assert!(auth.is_banned("::ffff:192.0.2.1".parse().unwrap(), now));
        assert!(!auth.is_banned(IP, now + Duration::from_secs(901)));
    }
}
