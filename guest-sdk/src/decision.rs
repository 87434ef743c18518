//! Decisions, built with small typed builders.

use crate::bindings::weir::proxy::types as wit;

/// How to reach a target (otherwise the URI's `transport=` or the proxy's choice).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Udp,
    Tcp,
    Tls,
}

/// What the proxy does with the media of a forwarded call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Media {
    /// SDP untouched; media flows end to end.
    #[default]
    Pass,
    /// The proxy relays RTP on its own address.
    Relay,
    /// Relay, terminating SRTP on the caller's side.
    RelaySrtpCaller,
    /// Relay, terminating SRTP on the callee's side.
    RelaySrtpCallee,
}

/// One place to send a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub uri: String,
    pub credential: Option<String>,
    pub transport: Option<Transport>,
    pub timeout_ms: Option<u32>,
}

impl Target {
    pub fn new(uri: impl Into<String>) -> Target {
        Target {
            uri: uri.into(),
            credential: None,
            transport: None,
            timeout_ms: None,
        }
    }

    /// Answer this target's digest challenge with the proxy's credential `name`.
    pub fn credential(mut self, name: impl Into<String>) -> Target {
        self.credential = Some(name.into());
        self
    }

    pub fn transport(mut self, t: Transport) -> Target {
        self.transport = Some(t);
        self
    }

    /// Give up on this target after `ms` without a final answer.
    pub fn timeout_ms(mut self, ms: u32) -> Target {
        self.timeout_ms = Some(ms);
        self
    }
}

impl From<&str> for Target {
    fn from(uri: &str) -> Target {
        Target::new(uri)
    }
}

impl From<String> for Target {
    fn from(uri: String) -> Target {
        Target::new(uri)
    }
}

impl From<&String> for Target {
    fn from(uri: &String) -> Target {
        Target::new(uri.clone())
    }
}

/// Forward to targets tried in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Forward {
    pub targets: Vec<Target>,
    pub record_route: Option<bool>,
    pub media: Media,
}

impl Forward {
    /// Forward to one target (more with [`Forward::then`]).
    pub fn to(target: impl Into<Target>) -> Forward {
        Forward {
            targets: vec![target.into()],
            record_route: None,
            media: Media::Pass,
        }
    }

    /// Try `target` if the ones before it fail.
    pub fn then(mut self, target: impl Into<Target>) -> Forward {
        self.targets.push(target.into());
        self
    }

    /// Force Record-Route on or off for this request.
    pub fn record_route(mut self, on: bool) -> Forward {
        self.record_route = Some(on);
        self
    }

    pub fn media(mut self, media: Media) -> Forward {
        self.media = media;
        self
    }
}

/// Answer here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub status: u16,
    /// Empty: the standard phrase for the status.
    pub reason: String,
    pub headers: Vec<(String, String)>,
}

impl Reply {
    pub fn new(status: u16) -> Reply {
        Reply {
            status,
            reason: String::new(),
            headers: Vec::new(),
        }
    }

    pub fn reason(mut self, reason: impl Into<String>) -> Reply {
        self.reason = reason.into();
        self
    }

    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Reply {
        self.headers.push((name.into(), value.into()));
        self
    }
}

/// The answer to [`Plugin::on_request`](crate::Plugin::on_request).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Forward(Forward),
    Reply(Reply),
    /// Ask the sender to authenticate in `realm` (401 for REGISTER, 407 otherwise).
    Challenge {
        realm: String,
    },
    /// Handle a REGISTER as the registrar: bindings for `aor` (the To URI
    /// when `None`) are added, refreshed or removed, and the 200 lists them.
    Register {
        aor: Option<String>,
    },
    /// Send nothing.
    Drop,
    /// Let the next plugin of the chain decide (then the proxy's fallback).
    Continue,
}

impl From<Forward> for Decision {
    fn from(f: Forward) -> Decision {
        Decision::Forward(f)
    }
}

impl From<Reply> for Decision {
    fn from(r: Reply) -> Decision {
        Decision::Reply(r)
    }
}

/// A target failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// What it answered (408: no answer in time; 503: unreachable).
    pub status: u16,
    pub reason: String,
    /// Its Request-URI.
    pub target: String,
    /// Targets of the decision not tried yet.
    pub remaining: u32,
}

/// The answer to [`Plugin::on_failure`](crate::Plugin::on_failure).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FailureDecision {
    /// Go on: the next remaining target, or the best response.
    Proceed,
    /// Try these instead of the remaining targets.
    Retarget(Vec<Target>),
    /// Stop and answer this.
    Reply(Reply),
}

impl From<Reply> for FailureDecision {
    fn from(r: Reply) -> FailureDecision {
        FailureDecision::Reply(r)
    }
}

fn target_into_wit(t: Target) -> wit::Target {
    wit::Target {
        uri: t.uri,
        credential: t.credential,
        transport: t.transport.map(|t| match t {
            Transport::Udp => wit::Transport::Udp,
            Transport::Tcp => wit::Transport::Tcp,
            Transport::Tls => wit::Transport::Tls,
        }),
        timeout_ms: t.timeout_ms,
    }
}

fn reply_into_wit(r: Reply) -> wit::Reply {
    wit::Reply {
        status: r.status,
        reason: r.reason,
        headers: r.headers,
    }
}

impl Decision {
    pub(crate) fn into_wit(self) -> wit::Decision {
        match self {
            Decision::Forward(f) => wit::Decision::Forward(wit::Forward {
                targets: f.targets.into_iter().map(target_into_wit).collect(),
                options: wit::ForwardOptions {
                    record_route: f.record_route,
                    media: match f.media {
                        Media::Pass => wit::MediaMode::Pass,
                        Media::Relay => wit::MediaMode::Relay,
                        Media::RelaySrtpCaller => wit::MediaMode::RelaySrtpCaller,
                        Media::RelaySrtpCallee => wit::MediaMode::RelaySrtpCallee,
                    },
                },
            }),
            Decision::Reply(r) => wit::Decision::Reply(reply_into_wit(r)),
            Decision::Challenge { realm } => wit::Decision::Challenge(wit::Challenge { realm }),
            Decision::Register { aor } => wit::Decision::Register(wit::Register { aor }),
            Decision::Drop => wit::Decision::Drop,
            Decision::Continue => wit::Decision::Continue,
        }
    }
}

impl FailureDecision {
    pub(crate) fn into_wit(self) -> wit::FailureDecision {
        match self {
            FailureDecision::Proceed => wit::FailureDecision::Proceed,
            FailureDecision::Retarget(t) => {
                wit::FailureDecision::Retarget(t.into_iter().map(target_into_wit).collect())
            }
            FailureDecision::Reply(r) => wit::FailureDecision::Reply(reply_into_wit(r)),
        }
    }
}

impl Failure {
    pub(crate) fn from_wit(f: wit::Failure) -> Failure {
        Failure {
            status: f.status,
            reason: f.reason,
            target: f.target,
            remaining: f.remaining,
        }
    }
}
