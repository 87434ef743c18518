//! `sip-users`: softphones and PBXs that authenticate with digest, register
//! with the proxy's registrar, and are called at their registered contacts.
//! See README.md.

use weir_sdk::{export_plugin, Config, Decision, Forward, Host, Level, Plugin, Reply, Request};

/// The plugin's configuration, checked at `init`.
#[derive(Debug)]
pub struct SipUsers {
    realm: String,
    domain: String,
    trusted: Vec<String>,
    open_methods: Vec<String>,
    from_must_match: bool,
}

impl Plugin for SipUsers {
    fn init(config: &Config, host: &Host) -> Result<Self, String> {
        config.deny_unknown(&[
            "realm",
            "domain",
            "trusted_acls",
            "open_methods",
            "from_must_match",
        ])?;
        let realm = config.required_str("realm")?;
        if realm.is_empty() || realm.contains(['"', '\\']) {
            return Err(format!("config key realm: {realm:?} is not a plain name"));
        }
        let trusted = config.str_list("trusted_acls")?;
        for name in &trusted {
            // An unknown list is a configuration error now, not a 500 later.
            host.acl_contains(name, "127.0.0.1")
                .map_err(|e| format!("config key trusted_acls: {e}"))?;
        }
        let mut open_methods = config.str_list("open_methods")?;
        if config.get("open_methods").is_none() {
            open_methods = vec!["OPTIONS".to_string()];
        }
        Ok(SipUsers {
            domain: config.str_or("domain", &realm)?,
            realm,
            trusted,
            open_methods,
            from_must_match: config.bool_or("from_must_match", true)?,
        })
    }

    fn on_request(&mut self, req: &Request, host: &Host) -> Decision {
        let method = req.method();
        let source = req.source().ip;
        let trusted = self
            .trusted
            .iter()
            .any(|name| host.acl_contains(name, &source).unwrap_or(false));
        if trusted
            || self
                .open_methods
                .iter()
                .any(|m| m.eq_ignore_ascii_case(method))
        {
            // Carriers and other trusted peers do not authenticate; they may
            // still call a registered user.
            return self.to_registered(req, host);
        }
        let Some(user) = req.identity() else {
            host.count("challenged", 1);
            return Decision::Challenge {
                realm: self.realm.clone(),
            };
        };
        if method.eq_ignore_ascii_case("REGISTER") {
            if req.to_user() != Some(user.as_str()) {
                host.count("register_refused", 1);
                return Reply::new(403)
                    .reason(format!(
                        "Forbidden ({user} may register only its own address)"
                    ))
                    .into();
            }
            host.count("registered", 1);
            return Decision::Register { aor: None };
        }
        if self.from_must_match && req.from_user() != Some(user.as_str()) {
            host.count("from_refused", 1);
            host.log(
                Level::Info,
                &format!("{user} sent a request From {:?}", req.from_user()),
            );
            return Reply::new(403)
                .reason(format!("Forbidden (From is not {user})"))
                .into();
        }
        self.to_registered(req, host)
    }
}

impl SipUsers {
    /// To the contacts registered for the Request-URI's user in our domain;
    /// otherwise the next plugin decides (a carrier trunk, an agent router).
    fn to_registered(&self, req: &Request, host: &Host) -> Decision {
        let Some(user) = req.request_user() else {
            return Decision::Continue;
        };
        let contacts = host.contacts(&format!("sip:{user}@{}", self.domain));
        let mut contacts = contacts.into_iter();
        let Some(first) = contacts.next() else {
            return Decision::Continue;
        };
        host.count("to_registered", 1);
        contacts.fold(Forward::to(first), |f, c| f.then(c)).into()
    }
}

export_plugin!(SipUsers);

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use weir_sdk::{MockHost, Transport};

    fn request(method: &str, from: &str, to: &str) -> Request<'static> {
        Request::mock(&format!(
            "{method} sip:{to}@pbx.test SIP/2.0\r\nFrom: <sip:{from}@pbx.test>;tag=1\r\n\
             To: <sip:{to}@pbx.test>\r\nCall-ID: c1\r\nCSeq: 1 {method}\r\n\r\n"
        ))
        .unwrap()
        .with_source("192.0.2.7", 5060, Transport::Udp)
    }

    fn plugin(json: &str, host: &Host) -> SipUsers {
        SipUsers::init(&Config::parse(json).unwrap(), host).unwrap()
    }

    #[test]
    fn users_are_challenged_then_register_their_own_address() {
        let mock = MockHost::new();
        let host = mock.host();
        let mut p = plugin(r#"{"realm":"pbx.test"}"#, &host);
        let reg = request("REGISTER", "alice", "alice");
        assert_eq!(
            p.on_request(&reg, &host),
            Decision::Challenge {
                realm: "pbx.test".into()
            }
        );
        let reg = request("REGISTER", "alice", "alice").with_identity("alice");
        assert_eq!(p.on_request(&reg, &host), Decision::Register { aor: None });
        let other = request("REGISTER", "alice", "bob").with_identity("alice");
        let Decision::Reply(r) = p.on_request(&other, &host) else {
            panic!("reply expected")
        };
        assert_eq!(r.status, 403);
        assert_eq!(mock.counter("challenged"), 1);
    }

    #[test]
    fn calls_reach_registered_contacts_or_the_next_plugin() {
        let mock = MockHost::new();
        let host = mock.host();
        mock.set_contacts(
            "sip:bob@pbx.test",
            &["sip:bob@10.0.0.8:5062", "sip:bob@10.0.0.9"],
        );
        let mut p = plugin(r#"{"realm":"pbx.test"}"#, &host);
        let call = request("INVITE", "alice", "bob").with_identity("alice");
        assert_eq!(
            p.on_request(&call, &host),
            Forward::to("sip:bob@10.0.0.8:5062")
                .then("sip:bob@10.0.0.9")
                .into()
        );
        let out = request("INVITE", "alice", "14155550100").with_identity("alice");
        assert_eq!(p.on_request(&out, &host), Decision::Continue);
        // Someone else's From.
        let spoof = request("INVITE", "carol", "bob").with_identity("alice");
        assert!(matches!(p.on_request(&spoof, &host), Decision::Reply(r) if r.status == 403));
    }

    #[test]
    fn trusted_sources_are_not_challenged() {
        let mock = MockHost::new();
        let host = mock.host();
        mock.set_acl("carriers", &["192.0.2.7"]);
        mock.set_contacts("sip:bob@pbx.test", &["sip:bob@10.0.0.8:5062"]);
        let mut p = plugin(r#"{"realm":"pbx.test","trusted_acls":["carriers"]}"#, &host);
        assert_eq!(
            p.on_request(&request("INVITE", "carrier", "bob"), &host),
            Forward::to("sip:bob@10.0.0.8:5062").into()
        );
        assert_eq!(
            p.on_request(&request("INVITE", "carrier", "nobody"), &host),
            Decision::Continue
        );
    }

    #[test]
    fn bad_config_is_refused_with_the_key() {
        let mock = MockHost::new();
        let host = mock.host();
        let e = SipUsers::init(&Config::parse("{}").unwrap(), &host).unwrap_err();
        assert!(e.contains("realm"), "{e}");
        let e = SipUsers::init(
            &Config::parse(r#"{"realm":"r","trusted_acls":["nope"]}"#).unwrap(),
            &host,
        )
        .unwrap_err();
        assert!(e.contains("trusted_acls") && e.contains("nope"), "{e}");
        let e =
            SipUsers::init(&Config::parse(r#"{"realm":"r","x":1}"#).unwrap(), &host).unwrap_err();
        assert!(e.contains('x'), "{e}");
    }
}
