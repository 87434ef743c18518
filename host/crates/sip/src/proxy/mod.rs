//! The transaction-stateful proxy of RFC 3261 §16, sans-IO.
//!
//! [`Proxy`] takes framed messages with the [`Flow`] they arrived on, the
//! current time, and DNS answers; it produces [`Transmit`]s, [`Event`]s (DNS
//! questions) and a timer deadline. The host owns every RFC duty: validation
//! (§16.3), route pre-processing (§16.4), forwarding (§16.6), response
//! selection (§16.7), CANCEL (§16.10), retransmissions, Record-Route. Where an
//! initial request goes is asked of a [`Router`]: the configured fallback, or
//! the plugin chain.

mod caller_auth;
mod core;
mod dialog_map;
mod identity;
mod media;
mod registration;
mod upstream_auth;
mod validate;

use std::any::Any;
use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

pub use self::core::Proxy;
pub use caller_auth::{DigestSettings, ProvisionedUsers, StoredUser};
pub use media::{MediaCall, MediaMode, MediaPolicy, MediaRefusal, MediaRelay, NoRelay, Party};
pub use registration::{RegistrationConfig, RegistrationStatus};
pub use upstream_auth::ClientCredential;
pub use validate::Rejection;

use crate::message::Message;
use crate::transaction::Timers;

/// A SIP transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transport {
    Udp,
    Tcp,
    Tls,
}

impl Transport {
    pub fn is_reliable(&self) -> bool {
        !matches!(self, Transport::Udp)
    }

    /// The token used in Via.
    pub fn via_token(&self) -> &'static str {
        match self {
            Transport::Udp => "UDP",
            Transport::Tcp => "TCP",
            Transport::Tls => "TLS",
        }
    }

    /// The `transport=` URI parameter value.
    pub fn param(&self) -> &'static str {
        match self {
            Transport::Udp => "udp",
            Transport::Tcp => "tcp",
            Transport::Tls => "tls",
        }
    }

    pub fn from_token(t: &[u8]) -> Option<Transport> {
        if t.eq_ignore_ascii_case(b"udp") {
            Some(Transport::Udp)
        } else if t.eq_ignore_ascii_case(b"tcp") {
            Some(Transport::Tcp)
        } else if t.eq_ignore_ascii_case(b"tls") {
            Some(Transport::Tls)
        } else {
            None
        }
    }
}

/// Identifies one stream connection in the host.
pub type ConnId = u64;

/// Where a message came from: the transport, our socket, the peer, and for
/// streams the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Flow {
    pub transport: Transport,
    pub local: SocketAddr,
    pub remote: SocketAddr,
    pub conn: Option<ConnId>,
}

/// Bytes to send.
#[derive(Debug, Clone)]
pub struct Transmit {
    pub transport: Transport,
    /// The listener to send from (its socket for UDP, its address family for streams).
    pub local: SocketAddr,
    pub remote: SocketAddr,
    /// For streams: the connection to use if it is still open. Otherwise the host
    /// reuses any open connection to `remote` or opens one.
    pub conn: Option<ConnId>,
    /// The domain the next hop was named by (None for an IP address or a
    /// response): a new TLS connection sends it as SNI and checks the
    /// certificate against it (RFC 5922 §4).
    pub server_name: Option<Arc<str>>,
    pub bytes: bytes::Bytes,
    /// Report a failure to deliver with [`Proxy::handle_send_error`] and this tag.
    pub on_error: Option<SendTag>,
}

/// Names the transaction a transmit belongs to, for transport error reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SendTag(pub(crate) crate::slab::Key);

/// Something the host must do for the proxy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// Resolve `host` to addresses and answer with [`Proxy::handle_resolved`].
    Resolve {
        id: u64,
        host: String,
        port: u16,
        transport: Transport,
    },
    /// An upstream registration was made or renewed (`registered`), or failed
    /// (it is retried later); `detail` says with what answer.
    Registration {
        name: String,
        registered: bool,
        detail: String,
    },
    /// `ip` failed authentication too often: its requests are dropped, unanswered,
    /// for `for_`.
    SourceBanned {
        ip: IpAddr,
        failures: u32,
        for_: Duration,
    },
    /// A call's media is relayed without a router asking: `why` names the
    /// private address that would have left it without audio.
    MediaAutoRelay { call_id: String, why: String },
    /// A description in a response or an ACK of a relayed call could not be
    /// relayed (neither can be refused): it went on without its SDP, and
    /// where it was the answer to the initial offer, the call was ended with
    /// a BYE to `byes` parties (sent once the caller has ACKed the 2xx).
    MediaFailed {
        call_id: String,
        why: String,
        byes: usize,
    },
    /// A relayed call's media stopped: BYE sent to `byes` parties, relay released.
    MediaTimeout { call_id: String, byes: usize },
}

/// A socket the proxy listens on and how it names itself there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listener {
    pub transport: Transport,
    pub local: SocketAddr,
    /// Host written into Via and Record-Route (the listen IP unless advertised).
    pub advertise_host: String,
    pub advertise_port: u16,
}

impl Listener {
    pub fn new(transport: Transport, local: SocketAddr) -> Listener {
        let host = match local.ip() {
            IpAddr::V4(a) => a.to_string(),
            IpAddr::V6(a) => format!("[{a}]"),
        };
        Listener {
            transport,
            local,
            advertise_host: host,
            advertise_port: local.port(),
        }
    }

    /// The `host:port` written into Via.
    pub fn sent_by(&self) -> String {
        format!("{}:{}", self.advertise_host, self.advertise_port)
    }
}

/// What happens to an initial request that nothing else routes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fallback {
    /// Forward it to its Request-URI (plain RFC 3261 proxy behaviour).
    RequestUri,
    /// Answer 404 with a reason that says how to add routing.
    Reject,
}

/// Which initial requests get a Record-Route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordRoute {
    /// Requests that can create a dialog (INVITE, SUBSCRIBE, REFER, NOTIFY).
    Dialogs,
    Never,
}

/// Proxy settings (the `[sip]` and `[routing]` sections of the configuration).
#[derive(Debug, Clone)]
pub struct ProxyConfig {
    pub listeners: Vec<Listener>,
    /// Extra names that mean "this proxy": a host (as written in URIs, IPv6 in
    /// brackets) and a port, `None` for any port.
    pub aliases: Vec<(String, Option<u16>)>,
    pub timers: Timers,
    pub record_route: RecordRoute,
    pub fallback: Fallback,
    /// Timer C (§16.6 step 11): how long an INVITE branch may ring before it is
    /// cancelled; reset by every provisional response.
    pub ring_timeout: Duration,
    /// Requests larger than this go over a stream transport when the target did
    /// not name one (RFC 3261 §18.1.1).
    pub udp_max: usize,
    /// Messages larger than this get 513 or are dropped.
    pub max_message: usize,
    /// Forward responses that match no transaction by their Via (§16.11).
    pub forward_stray_responses: bool,
    /// Value of the Server/User-Agent header on locally generated messages.
    pub server_name: Option<String>,
    /// Credentials by name, for targets whose next hop asks for digest
    /// authentication ([`Target::credential`]).
    pub credentials: HashMap<String, ClientCredential>,
    /// When set, requests from any other source address are refused with 403
    /// before anything else looks at them (responses are not filtered: they
    /// come from the next hops this proxy chose).
    pub accept_from: Option<Vec<ipnet::IpNet>>,
    /// How callers are challenged when a router decides [`Decision::Challenge`].
    pub digest: DigestSettings,
    /// Addresses-of-record to keep registered with upstream registrars
    /// (started by [`Proxy::start_registrations`]).
    pub registrations: Vec<RegistrationConfig>,
    /// When an INVITE's media is relayed besides a router asking for it.
    pub media_policy: MediaPolicy,
    /// Relayed dialogs at most (new relayed calls beyond get 503).
    pub media_max_dialogs: usize,
    /// Terminate SRTP on a leg whose signalling is not TLS (its SDES keys
    /// then cross the network in clear).
    pub media_srtp_over_plain_sip: bool,
}

impl ProxyConfig {
    pub fn new(listeners: Vec<Listener>) -> Self {
        ProxyConfig {
            listeners,
            aliases: Vec::new(),
            timers: Timers::default(),
            record_route: RecordRoute::Dialogs,
            fallback: Fallback::RequestUri,
            ring_timeout: Duration::from_secs(180),
            udp_max: 1300,
            max_message: 65_535,
            forward_stray_responses: true,
            server_name: Some(concat!("weir/", env!("CARGO_PKG_VERSION")).to_string()),
            credentials: HashMap::new(),
            accept_from: None,
            digest: DigestSettings::default(),
            registrations: Vec::new(),
            media_policy: MediaPolicy::AsRouted,
            media_max_dialogs: 100_000,
            media_srtp_over_plain_sip: false,
        }
    }
}

/// A place to send a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The Request-URI to send.
    pub uri: String,
    /// Give up on this target after this long without a final response.
    pub timeout: Option<Duration>,
    /// The configured credential to answer this target's digest challenge with.
    pub credential: Option<String>,
}

impl Target {
    pub fn new(uri: impl Into<String>) -> Target {
        Target {
            uri: uri.into(),
            timeout: None,
            credential: None,
        }
    }
}

/// What to do with an initial request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Try the targets in order until one answers 2xx or 6xx (sequential failover).
    Forward(Vec<Target>),
    /// Answer with this status and reason.
    Reply { status: u16, reason: String },
    /// Ask the sender to authenticate in this realm (401 for REGISTER, 407
    /// otherwise); once it has, the router is asked again with its identity.
    Challenge { realm: String },
    /// Send nothing.
    Drop,
}

/// Whatever a router wants back when it is asked about a failure of the request
/// it routed (the plugin version that decided, for instance). Opaque to the proxy.
#[derive(Clone)]
pub struct Pin(pub Arc<dyn Any + Send + Sync>);

impl fmt::Debug for Pin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Pin(..)")
    }
}

/// A router's answer: the decision and what goes with it.
#[derive(Debug)]
pub struct Routed {
    pub decision: Decision,
    /// The request as the router edited it: forwarded instead of the received
    /// one. Responses still echo the received From/To/Call-ID/CSeq/Via.
    pub edited: Option<Message>,
    /// Overrides `[sip] record_route` for this request.
    pub record_route: Option<bool>,
    /// Extra header lines (`Name: value`) for a [`Decision::Reply`].
    pub reply_headers: Vec<String>,
    /// Handed back to [`Router::on_failure`] for this request.
    pub pin: Option<Pin>,
    /// What happens to an INVITE's media.
    pub media: MediaMode,
}

impl From<Decision> for Routed {
    fn from(decision: Decision) -> Routed {
        Routed {
            decision,
            edited: None,
            record_route: None,
            reply_headers: Vec::new(),
            pin: None,
            media: MediaMode::Pass,
        }
    }
}

/// A target answered a forwarded request with a final negative status (or
/// timed out: 408; or could not be reached: 503).
#[derive(Debug, Clone, Copy)]
pub struct Failure<'a> {
    pub status: u16,
    pub reason: &'a [u8],
    /// The Request-URI that target was sent.
    pub target: &'a str,
    /// Targets of the decision not tried yet.
    pub remaining: usize,
}

/// What to do after a [`Failure`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FailureAction {
    /// The next remaining target, or the best response when none is left.
    Proceed,
    /// These targets instead of the remaining ones.
    Retarget(Vec<Target>),
    /// Stop and answer with this status, reason and extra header lines.
    Reply {
        status: u16,
        reason: String,
        headers: Vec<String>,
    },
}

/// Decides where initial requests go. In-dialog requests, ACK and CANCEL never
/// reach the router: they follow the route set.
pub trait Router: Send {
    /// `identity` is the user the proxy verified, when this request answered a
    /// [`Decision::Challenge`] (its credentials are then no longer in it).
    fn route(&mut self, request: &Arc<Message>, from: &Flow, identity: Option<&str>) -> Routed;

    /// A target failed (never called after a 6xx, a CANCEL or a 2xx). `pin` is
    /// what [`Router::route`] returned with the decision.
    fn on_failure(
        &mut self,
        _pin: Option<&Pin>,
        _request: &Message,
        _failure: &Failure<'_>,
    ) -> FailureAction {
        FailureAction::Proceed
    }
}

/// The configured fallback as a router.
#[derive(Debug, Clone, Copy)]
pub struct FallbackRouter(pub Fallback);

impl Router for FallbackRouter {
    fn route(&mut self, request: &Arc<Message>, _from: &Flow, _: Option<&str>) -> Routed {
        self.decide(request).into()
    }
}

impl FallbackRouter {
    /// The fallback's decision for `request`.
    pub fn decide(&self, request: &Message) -> Decision {
        match self.0 {
            Fallback::RequestUri => Decision::Forward(vec![Target::new(
                String::from_utf8_lossy(request.request_uri_bytes()).into_owned(),
            )]),
            Fallback::Reject => Decision::Reply {
                status: 404,
                reason:
                    "No Route (set [routing] fallback = \"request-uri\" or add a routing plugin)"
                        .to_string(),
            },
        }
    }
}

/// Counters that tell what the proxy did; `live_*` are current sizes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    pub requests_in: u64,
    pub responses_in: u64,
    /// Input that could not be indexed, or a response or ACK that was invalid.
    pub dropped_malformed: u64,
    /// Invalid requests answered with an error (400, 416, 420, 483, 505…).
    pub rejected: u64,
    /// Requests refused because their source is not in `accept_from`.
    pub refused_sources: u64,
    pub retransmissions_absorbed: u64,
    pub stray_responses_forwarded: u64,
    pub stray_responses_dropped: u64,
    pub forwarded_requests: u64,
    pub forwarded_responses: u64,
    pub failovers: u64,
    /// 401/407 from a next hop answered with a configured credential.
    pub challenges_answered: u64,
    /// Challenges sent to callers (401/407), answers verified, answers
    /// refused (wrong, replayed), and requests dropped from banned sources.
    pub challenges_sent: u64,
    pub callers_verified: u64,
    pub caller_auth_failures: u64,
    pub refused_banned: u64,
    /// Dialogs whose CSeq the proxy shifts (after answering a challenge).
    pub shifted_dialogs: usize,
    /// Dialogs whose caller-ID a router rewrote (kept consistent both ways).
    pub rewritten_dialogs: usize,
    pub loops_detected: u64,
    /// Dialogs whose media is relayed, now.
    pub relayed_dialogs: usize,
    /// Relayed calls ended because their media stopped.
    pub media_timeouts: u64,
    pub live_server_transactions: usize,
    pub live_client_transactions: usize,
    pub live_contexts: usize,
}

impl Stats {
    /// Live server transactions, client transactions and response contexts.
    pub fn live(&self) -> (usize, usize, usize) {
        (
            self.live_server_transactions,
            self.live_client_transactions,
            self.live_contexts,
        )
    }
}

#[cfg(test)]
mod tests;
