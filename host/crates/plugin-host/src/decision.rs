//! A plugin's answer, checked. Nothing a plugin returns reaches the proxy
//! unchecked: URIs must parse, statuses must be possible, header lines must be
//! single lines and not the host's.

use std::time::Duration;

use weir_sip::message::Method;
use weir_sip::proxy::{FailureAction, Target};
use weir_sip::uri::SipUri;

use crate::bindings::weir::proxy::types;
use crate::request::{check_header, check_uri, EditError};

/// What a plugin decided, in the host's terms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Forward {
        targets: Vec<Target>,
        record_route: Option<bool>,
        media: MediaMode,
    },
    Reply {
        status: u16,
        reason: String,
        headers: Vec<String>,
    },
    Challenge {
        realm: String,
    },
    /// Act as the registrar for `aor` (the To URI when none).
    Register {
        aor: Option<String>,
    },
    Drop,
    Continue,
}

/// The media mode a forward asked for (carried out by the media relay).
pub use weir_sip::proxy::MediaMode;

/// Checks an `on-request` answer for a request of `method`.
pub fn check_decision(d: types::Decision, method: Method) -> Result<Verdict, String> {
    Ok(match d {
        types::Decision::Forward(f) => {
            if f.targets.is_empty() {
                return Err("forward with no targets".into());
            }
            Verdict::Forward {
                targets: check_targets(f.targets)?,
                record_route: f.options.record_route,
                media: match f.options.media {
                    types::MediaMode::Pass => MediaMode::Pass,
                    types::MediaMode::Relay => MediaMode::Relay,
                    types::MediaMode::RelaySrtpCaller => MediaMode::RelaySrtpCaller,
                    types::MediaMode::RelaySrtpCallee => MediaMode::RelaySrtpCallee,
                },
            }
        }
        types::Decision::Reply(r) => {
            let lowest = if method == Method::Invite { 300 } else { 200 };
            let (status, reason, headers) = check_reply(r, lowest)?;
            Verdict::Reply {
                status,
                reason,
                headers,
            }
        }
        types::Decision::Challenge(c) => {
            if c.realm.is_empty() || c.realm.contains(['"', '\\', '\r', '\n']) {
                return Err(format!(
                    "challenge realm {:?} is empty or not a plain string",
                    c.realm
                ));
            }
            Verdict::Challenge { realm: c.realm }
        }
        types::Decision::Register(r) => {
            if method != Method::Register {
                return Err(format!(
                    "register decided for a {} request",
                    method.as_str()
                ));
            }
            if let Some(aor) = &r.aor {
                weir_sip::registrar::aor_of(aor).map_err(|e| format!("register aor: {e}"))?;
            }
            Verdict::Register { aor: r.aor }
        }
        types::Decision::Drop => Verdict::Drop,
        types::Decision::Continue => Verdict::Continue,
    })
}

/// Checks an `on-failure` answer.
pub fn check_failure_decision(d: types::FailureDecision) -> Result<FailureAction, String> {
    Ok(match d {
        types::FailureDecision::Proceed => FailureAction::Proceed,
        types::FailureDecision::Retarget(t) => FailureAction::Retarget(check_targets(t)?),
        types::FailureDecision::Reply(r) => {
            let (status, reason, headers) = check_reply(r, 300)?;
            FailureAction::Reply {
                status,
                reason,
                headers,
            }
        }
    })
}

fn check_targets(targets: Vec<types::Target>) -> Result<Vec<Target>, String> {
    if targets.len() > 32 {
        return Err(format!("{} targets; at most 32", targets.len()));
    }
    targets.into_iter().map(check_target).collect()
}

fn check_target(t: types::Target) -> Result<Target, String> {
    check_uri(&t.uri).map_err(edit_message)?;
    let mut uri = t.uri;
    if let Some(transport) = t.transport {
        let want = match transport {
            types::Transport::Udp => "udp",
            types::Transport::Tcp => "tcp",
            types::Transport::Tls => "tls",
        };
        let has = SipUri::parse(&uri)
            .ok()
            .and_then(|u| u.param("transport").map(str::to_ascii_lowercase));
        match has {
            Some(h) if h == want => {}
            Some(h) => {
                return Err(format!(
                    "target {uri} says transport={h} but asks for {want}"
                ))
            }
            None => {
                // The parameter goes before any `?headers` part.
                let at = uri.find('?').unwrap_or(uri.len());
                uri.insert_str(at, &format!(";transport={want}"));
            }
        }
    }
    if let Some(c) = &t.credential {
        if c.is_empty() || !c.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(format!("credential name {c:?} is empty or not printable"));
        }
    }
    let mut target = Target::new(uri);
    target.timeout = t
        .timeout_ms
        .filter(|ms| *ms > 0)
        .map(|ms| Duration::from_millis(ms.into()));
    target.credential = t.credential;
    Ok(target)
}

fn check_reply(r: types::Reply, lowest: u16) -> Result<(u16, String, Vec<String>), String> {
    if !(lowest..=699).contains(&r.status) {
        return Err(format!(
            "status {} is impossible here (a reply must be {lowest}–699)",
            r.status
        ));
    }
    if r.reason.len() > 128 || r.reason.chars().any(char::is_control) {
        return Err("reason phrase is longer than 128 bytes or has control characters".into());
    }
    let reason = if r.reason.is_empty() {
        standard_reason(r.status).to_string()
    } else {
        r.reason
    };
    let mut headers = Vec::with_capacity(r.headers.len());
    for (name, value) in r.headers {
        check_header(&name, &value).map_err(edit_message)?;
        headers.push(format!("{name}: {value}"));
    }
    Ok((r.status, reason, headers))
}

fn edit_message(e: EditError) -> String {
    match e {
        EditError::Guarded(h) => format!("{h} is the host's header"),
        EditError::Invalid(m) => m,
    }
}

/// The RFC 3261 §21 reason phrase (or the class's name).
pub fn standard_reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        202 => "Accepted",
        300 => "Multiple Choices",
        301 => "Moved Permanently",
        302 => "Moved Temporarily",
        380 => "Alternative Service",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        407 => "Proxy Authentication Required",
        408 => "Request Timeout",
        410 => "Gone",
        480 => "Temporarily Unavailable",
        484 => "Address Incomplete",
        486 => "Busy Here",
        487 => "Request Terminated",
        488 => "Not Acceptable Here",
        500 => "Server Internal Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Server Time-out",
        600 => "Busy Everywhere",
        603 => "Decline",
        604 => "Does Not Exist Anywhere",
        606 => "Not Acceptable",
        201..=299 => "Success",
        303..=399 => "Redirection",
        402..=499 => "Client Error",
        505..=599 => "Server Error",
        _ => "Global Failure",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(uri: &str) -> types::Target {
        types::Target {
            uri: uri.into(),
            credential: None,
            transport: None,
            timeout_ms: None,
        }
    }

    fn forward(targets: Vec<types::Target>) -> types::Decision {
        types::Decision::Forward(types::Forward {
            targets,
            options: types::ForwardOptions {
                record_route: None,
                media: types::MediaMode::Pass,
            },
        })
    }

    fn reply(status: u16, headers: Vec<(String, String)>) -> types::Decision {
        types::Decision::Reply(types::Reply {
            status,
            reason: String::new(),
            headers,
        })
    }

    #[test]
    fn bad_answers_are_named() {
        let e = check_decision(
            forward(vec![target("sip:ok@h"), target("nope")]),
            Method::Invite,
        );
        assert!(e.unwrap_err().contains("\"nope\" is not a valid URI"));
        assert!(check_decision(forward(vec![]), Method::Invite).is_err());
        assert!(check_decision(reply(199, vec![]), Method::Options)
            .unwrap_err()
            .contains("status 199 is impossible"));
        assert!(check_decision(reply(200, vec![]), Method::Invite).is_err());
        assert!(check_decision(reply(700, vec![]), Method::Invite).is_err());
        let guarded = vec![("Via".to_string(), "x".to_string())];
        assert!(check_decision(reply(404, guarded), Method::Invite)
            .unwrap_err()
            .contains("Via is the host's header"));
    }

    #[test]
    fn transport_becomes_a_uri_parameter() {
        let mut t = target("sip:a@10.0.0.1:5080?X-A=1");
        t.transport = Some(types::Transport::Tcp);
        t.timeout_ms = Some(1500);
        t.credential = Some("twilio-us1".into());
        let Ok(Verdict::Forward { targets, .. }) = check_decision(forward(vec![t]), Method::Invite)
        else {
            panic!("forward expected");
        };
        assert_eq!(targets[0].uri, "sip:a@10.0.0.1:5080;transport=tcp?X-A=1");
        assert_eq!(targets[0].timeout, Some(Duration::from_millis(1500)));
        assert_eq!(targets[0].credential.as_deref(), Some("twilio-us1"));
        let mut clash = target("sip:a@h;transport=udp");
        clash.transport = Some(types::Transport::Tls);
        assert!(check_decision(forward(vec![clash]), Method::Invite).is_err());
    }

    #[test]
    fn empty_reasons_get_the_standard_phrase() {
        let Ok(Verdict::Reply { reason, .. }) = check_decision(reply(480, vec![]), Method::Invite)
        else {
            panic!("reply expected");
        };
        assert_eq!(reason, "Temporarily Unavailable");
    }
}
