//! The proxy state: server and client transactions, response contexts, timers.

use std::borrow::Cow;
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::fmt;
use std::hash::BuildHasherDefault;
use std::io::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;

use super::caller_auth::{self, CallerAuth};
use super::identity::{self, CallerIdentities};
use super::media::{MediaRelay, NoRelay, Party, RelayedDialogs};
use super::registration::Registration;
use super::upstream_auth::{self, Answer, CseqShifts};
use super::validate::{check_request, check_response, Checked, Rejection};
use super::{
    Decision, Event, Failure, FailureAction, Flow, Listener, Pin, ProxyConfig, RecordRoute,
    RegistrationConfig, RegistrationStatus, Routed, Router, SendTag, Stats, Target, Transmit,
    Transport,
};
use crate::build;
use crate::headers::{HeaderName, NameAddr, Via};
use crate::message::{Framing, Message, Method, Rewrite};
use crate::slab::{Key, Slab};
use crate::transaction::{
    ClientInvite, ClientNonInvite, ServerInvite, ServerNonInvite, Step, TuEvent,
};
use crate::uri::{Host, Scheme, SipUri, Uri};

mod relaying;

use relaying::StraySdp;

/// Prefix of every branch this proxy writes: the RFC 3261 magic cookie and a
/// marker, then the loop-detection hash (16 hex digits), a dot and a random part.
const BRANCH_PREFIX: &str = "z9hG4bKw";

/// The transaction-stateful proxy. See the [module documentation](super).
pub struct Proxy {
    cfg: ProxyConfig,
    /// Every (host, port) that means this proxy; a `None` port matches any.
    local_names: Vec<(LocalHost, Option<u16>)>,
    /// Per listener: the Via up to the branch value, and the Record-Route value.
    via_prefix: Vec<String>,
    rr_value: Vec<String>,
    /// `Server: …` for responses the proxy writes, if configured.
    server_line: Option<String>,
    router: Box<dyn Router>,
    rng: u64,
    /// Keys transaction identifiers with secret hash keys, so keys are small
    /// and no one can aim collisions at the tables.
    keys: TxnKeys,
    servers: HashMap<u128, Key, BuildHasherDefault<KeyHash>>,
    server_txns: Slab<ServerTxn>,
    clients: HashMap<u128, Key, BuildHasherDefault<KeyHash>>,
    client_txns: Slab<ClientTxn>,
    contexts: Slab<Context>,
    timers: BinaryHeap<Reverse<(Instant, TimerRef)>>,
    transmits: VecDeque<Transmit>,
    events: VecDeque<Event>,
    resolving: HashMap<u64, Pending>,
    next_resolve: u64,
    /// Dialogs whose caller-side CSeq goes out shifted (see `upstream_auth`).
    shifts: CseqShifts,
    /// Dialogs whose caller-ID a router rewrote (see `identity`).
    identities: CallerIdentities,
    /// Nonces and bans for challenged callers.
    caller_auth: CallerAuth,
    /// Upstream registrations, and when each one's timer is armed.
    registrations: Vec<(Registration, Option<Instant>)>,
    /// The host's media relay and the dialogs whose media it carries.
    media: Box<dyn MediaRelay>,
    relayed: RelayedDialogs,
    next_media: u64,
    stats: Stats,
}

impl fmt::Debug for Proxy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Proxy")
            .field("stats", &self.stats())
            .finish()
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum LocalHost {
    Ip(IpAddr),
    /// Lower case.
    Name(String),
}

impl LocalHost {
    fn from_host(h: &Host<'_>) -> LocalHost {
        match h {
            Host::Ip(ip) => LocalHost::Ip(*ip),
            Host::Domain(d) => LocalHost::Name(d.to_ascii_lowercase()),
        }
    }

    fn matches(&self, h: &Host<'_>) -> bool {
        match (self, h) {
            (LocalHost::Ip(a), Host::Ip(b)) => a == b,
            (LocalHost::Name(a), Host::Domain(b)) => a.eq_ignore_ascii_case(b),
            _ => false,
        }
    }
}

fn local_names(cfg: &ProxyConfig) -> Vec<(LocalHost, Option<u16>)> {
    let mut names = Vec::new();
    for l in &cfg.listeners {
        if let Ok(h) = crate::uri::parse_host(&l.advertise_host) {
            names.push((LocalHost::from_host(&h), Some(l.advertise_port)));
        }
        names.push((LocalHost::Ip(l.local.ip()), Some(l.local.port())));
    }
    for (host, port) in &cfg.aliases {
        if let Ok(h) = crate::uri::parse_host(host) {
            names.push((LocalHost::from_host(&h), *port));
        }
    }
    names.dedup();
    names
}

/// Two independently keyed SipHash instances: 128-bit transaction keys.
#[derive(Debug, Default)]
struct TxnKeys {
    a: std::collections::hash_map::RandomState,
    b: std::collections::hash_map::RandomState,
}

impl TxnKeys {
    fn key(&self, parts: &[&[u8]]) -> u128 {
        use std::hash::{BuildHasher, Hasher};
        let mut h1 = self.a.build_hasher();
        let mut h2 = self.b.build_hasher();
        for p in parts {
            h1.write(p);
            h1.write_u8(0xff);
            h2.write(p);
            h2.write_u8(0xff);
        }
        (u128::from(h1.finish()) << 64) | u128::from(h2.finish())
    }

    /// A client transaction: our branch, and whether it is the CANCEL's.
    fn client(&self, branch: &[u8], cancel: bool) -> u128 {
        self.key(&[branch, if cancel { b"CANCEL" } else { b"" }])
    }
}

/// The keys are already keyed hashes: the table hashes them no further.
#[derive(Debug, Default)]
struct KeyHash(u64);

impl std::hash::Hasher for KeyHash {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8)) ^ u64::from(b);
        }
    }
    fn write_u128(&mut self, i: u128) {
        self.0 = (i as u64) ^ ((i >> 64) as u64);
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum TimerRef {
    Server(Key),
    Client(Key),
    Context(Key),
    Registration(usize),
}

/// Where responses to a request go (RFC 3261 §18.2.2), or a forwarded request.
#[derive(Debug, Clone)]
struct Peer {
    transport: Transport,
    local: SocketAddr,
    remote: SocketAddr,
    conn: Option<u64>,
    /// The next hop's domain, for TLS (SNI and the certificate check).
    server_name: Option<Arc<str>>,
}

#[derive(Debug)]
enum ServerMachine {
    Invite(ServerInvite),
    NonInvite(ServerNonInvite),
}

#[derive(Debug)]
struct ServerTxn {
    key: u128,
    machine: ServerMachine,
    peer: Peer,
    /// The request, until a final response is sent (then only the machine's
    /// retransmission state is kept: memory per call matters under load).
    request: Option<Arc<Message>>,
    /// The top Via with `received`/`rport` filled in.
    top_via: Vec<u8>,
    to_tag: String,
    context: Option<Key>,
    armed: Option<Instant>,
}

#[derive(Debug)]
enum ClientMachine {
    Invite(ClientInvite),
    NonInvite(ClientNonInvite),
}

#[derive(Debug)]
struct ClientTxn {
    key: u128,
    machine: ClientMachine,
    peer: Peer,
    /// Who the answers go to: a branch of a context, or a registration.
    owner: Option<Owner>,
    /// Forget the transaction at this time whatever its state (a branch that was
    /// abandoned after CANCEL must not linger if the 487 never comes).
    expire: Option<Instant>,
    armed: Option<Instant>,
}

impl ClientTxn {
    fn poll_timeout(&self) -> Option<Instant> {
        let t = match &self.machine {
            ClientMachine::Invite(m) => m.poll_timeout(),
            ClientMachine::NonInvite(m) => m.poll_timeout(),
        };
        match (t, self.expire) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    fn is_terminated(&self) -> bool {
        match &self.machine {
            ClientMachine::Invite(m) => m.is_terminated(),
            ClientMachine::NonInvite(m) => m.is_terminated(),
        }
    }
}

/// How the proxy reaches a next hop, before DNS.
#[derive(Debug, Clone)]
struct NextHop {
    host: String,
    ip: Option<IpAddr>,
    port: Option<u16>,
    /// Named by `transport=` or implied by `sips:`.
    transport: Option<Transport>,
    sips: bool,
}

/// What §16.4 route pre-processing decided for a request.
#[derive(Debug, Clone, Default)]
struct RoutePlan {
    /// Route values naming this proxy at the top, as (line, count) to drop.
    drop_front: Vec<(usize, usize)>,
    /// Strict-router compatibility: the Request-URI named us, so the last Route
    /// value becomes the Request-URI: (its line, its URI).
    from_last_route: Option<(usize, String)>,
    /// The first Route value left, if any: the next hop.
    next_route: Option<String>,
}

/// A forward waiting for DNS or ready to go.
#[derive(Debug)]
struct Forward {
    request: Arc<Message>,
    plan: RoutePlan,
    /// The Request-URI to send.
    uri: String,
    inbound: usize,
    record_route: bool,
    loop_hash: u64,
    top_via: Vec<u8>,
    kind: ForwardKind,
    /// The CSeq number to send, when it differs from the request's.
    cseq: Option<u32>,
    /// Credentials for a next hop's challenge.
    auth: Option<Answer>,
}

/// Who a client transaction works for.
#[derive(Debug, Clone, Copy)]
enum Owner {
    /// The context and branch index.
    Branch(Key, usize),
    /// An upstream registration (its index).
    Registration(usize),
    /// A request of the proxy's own whose answer changes nothing (the BYE
    /// that ends a call whose media stopped).
    Local,
}

#[derive(Debug, Clone, Copy)]
enum ForwardKind {
    /// A branch of a response context.
    Branch(Key, usize),
    /// ACK for a 2xx, or CANCEL with no matching transaction (§16.10, §16.11):
    /// no transaction; the branch is derived from the incoming one.
    Stateless,
    /// A REGISTER of an upstream registration (its index).
    Registration(usize),
    /// A request of the proxy's own (see [`Owner::Local`]).
    Local,
}

#[derive(Debug)]
struct Pending {
    forward: Forward,
    hop: NextHop,
}

#[derive(Debug)]
enum Final {
    Received(Message),
    Local {
        status: u16,
        reason: Cow<'static, str>,
    },
}

impl Final {
    fn status(&self) -> u16 {
        match self {
            Final::Received(m) => m.status().unwrap_or(500),
            Final::Local { status, .. } => *status,
        }
    }

    fn reason(&self) -> &[u8] {
        match self {
            Final::Received(m) => m.reason(),
            Final::Local { reason, .. } => reason.as_bytes(),
        }
    }
}

#[derive(Debug)]
struct Branch {
    client: Option<Key>,
    resolving: Option<u64>,
    deadline: Option<Instant>,
    target_deadline: Option<Instant>,
    provisional: bool,
    cancel_pending: bool,
    finished: bool,
}

/// A response context (§16.7): one server transaction and its branches.
#[derive(Debug)]
struct Context {
    server: Key,
    request: Arc<Message>,
    method: Method,
    plan: RoutePlan,
    inbound: usize,
    loop_hash: u64,
    record_route: bool,
    targets: VecDeque<Target>,
    /// The target being tried.
    current: Target,
    /// A next hop's challenge was answered for this request (once only).
    challenged: bool,
    /// The CSeq number sent downstream, when it differs from the request's:
    /// responses go upstream with the request's number again.
    cseq: Option<u32>,
    auth: Option<Answer>,
    /// From the router's decision, for `on_failure`.
    pin: Option<Pin>,
    /// Extra header lines for a locally generated final response.
    reply_headers: Vec<String>,
    /// From/To values the request had when it arrived, where it went out with
    /// others: its responses go upstream with these again.
    echo: Vec<(HeaderName, Bytes)>,
    /// A relayed dialog's request: its relay id and who answers it.
    media: Option<(u64, Party)>,
    /// Where the branch whose response is being forwarded sent it from.
    responder_ip: Option<IpAddr>,
    branches: Vec<Branch>,
    finals: Vec<Final>,
    answered: bool,
    cancelled: bool,
    armed: Option<Instant>,
}

impl Context {
    fn active(&self) -> bool {
        self.branches.iter().any(|b| !b.finished)
    }

    fn poll_timeout(&self) -> Option<Instant> {
        self.branches
            .iter()
            .filter(|b| !b.finished)
            .filter_map(|b| match (b.deadline, b.target_deadline) {
                (Some(a), Some(c)) => Some(a.min(c)),
                (a, c) => a.or(c),
            })
            .min()
    }
}

impl Proxy {
    /// A proxy with `cfg`, asking `router` about initial requests. `seed` feeds
    /// the branch and tag generator: pass something random.
    pub fn new(cfg: ProxyConfig, router: Box<dyn Router>, seed: u64) -> Proxy {
        Proxy {
            local_names: local_names(&cfg),
            via_prefix: cfg
                .listeners
                .iter()
                .map(|l| {
                    format!(
                        "SIP/2.0/{} {};branch=",
                        l.transport.via_token(),
                        l.sent_by()
                    )
                })
                .collect(),
            rr_value: cfg.listeners.iter().map(record_route_value).collect(),
            server_line: cfg.server_name.as_ref().map(|s| format!("Server: {s}")),
            caller_auth: CallerAuth::new(cfg.digest.clone()),
            registrations: Vec::new(),
            cfg,
            router,
            rng: seed | 1,
            keys: TxnKeys::default(),
            servers: HashMap::default(),
            server_txns: Slab::default(),
            clients: HashMap::default(),
            client_txns: Slab::default(),
            contexts: Slab::default(),
            timers: BinaryHeap::new(),
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            resolving: HashMap::new(),
            next_resolve: 1,
            // A day without a request ends a shift: longer than carriers let
            // calls last (Twilio: 4 h).
            shifts: CseqShifts::new(std::time::Duration::from_secs(24 * 3600), 100_000),
            identities: CallerIdentities::new(std::time::Duration::from_secs(24 * 3600), 100_000),
            media: Box::new(NoRelay),
            relayed: RelayedDialogs::default(),
            next_media: 1,
            stats: Stats::default(),
        }
    }

    pub fn config(&self) -> &ProxyConfig {
        &self.cfg
    }

    /// Replaces the router (for example when plugins are reloaded).
    pub fn set_router(&mut self, router: Box<dyn Router>) {
        self.router = router;
    }

    /// Sets the media relay that relayed calls' SDP goes through.
    pub fn set_media(&mut self, media: Box<dyn MediaRelay>) {
        self.media = media;
    }

    pub fn stats(&self) -> Stats {
        Stats {
            relayed_dialogs: self.relayed.len(),
            live_server_transactions: self.server_txns.len(),
            live_client_transactions: self.client_txns.len(),
            live_contexts: self.contexts.len(),
            shifted_dialogs: self.shifts.len(),
            rewritten_dialogs: self.identities.len(),
            caller_auth_failures: self.caller_auth.failures,
            ..self.stats.clone()
        }
    }

    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// The earliest deadline at which [`Proxy::handle_timeout`] has work.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.timers.peek().map(|Reverse((at, _))| *at)
    }

    /// One message: a whole UDP datagram, or one message framed from a stream.
    pub fn handle_input(&mut self, now: Instant, flow: Flow, bytes: Bytes) {
        if flow.transport == Transport::Udp {
            match crate::framing::classify_datagram(&bytes) {
                crate::framing::DatagramKind::Sip => {}
                _ => return,
            }
        }
        let framing = match flow.transport {
            Transport::Udp => Framing::Datagram,
            _ => Framing::Exact,
        };
        let too_large = bytes.len() > self.cfg.max_message;
        let msg = match Message::parse(bytes, framing) {
            Ok(m) => m,
            Err(_) => {
                self.stats.dropped_malformed += 1;
                return;
            }
        };
        if too_large {
            if msg.is_request() && msg.method() != Some(Method::Ack) {
                self.reply_stateless(&flow, &msg, &Rejection::new(513, "Message Too Large"));
            } else {
                self.stats.dropped_malformed += 1;
            }
            return;
        }
        if msg.is_request() {
            self.on_request(now, flow, msg);
        } else {
            self.on_response(now, flow, msg);
        }
    }

    /// Fires every timer that is due.
    pub fn handle_timeout(&mut self, now: Instant) {
        while let Some(Reverse((at, r))) = self.timers.peek().copied() {
            if at > now {
                break;
            }
            self.timers.pop();
            match r {
                TimerRef::Server(k) => self.server_timer(now, k, at),
                TimerRef::Client(k) => self.client_timer(now, k, at),
                TimerRef::Context(k) => self.context_timer(now, k, at),
                TimerRef::Registration(i) => self.registration_timer(now, i),
            }
        }
    }

    /// The answer to [`Event::Resolve`].
    pub fn handle_resolved(
        &mut self,
        now: Instant,
        id: u64,
        addrs: Result<Vec<SocketAddr>, String>,
    ) {
        let Some(p) = self.resolving.remove(&id) else {
            return;
        };
        if let ForwardKind::Branch(ctx, i) = p.forward.kind {
            match self
                .contexts
                .get_mut(ctx)
                .and_then(|c| c.branches.get_mut(i))
            {
                Some(b) if b.resolving == Some(id) => b.resolving = None,
                _ => return,
            }
        }
        let transport = self.pick_transport(&p.hop, p.forward.request.len());
        let addr = match addrs {
            Ok(list) => list
                .iter()
                .find(|a| self.listener_for(transport, a.ip()).is_some())
                .or(list.first())
                .copied(),
            Err(_) => None,
        };
        match addr {
            Some(addr) => self.send_forward(now, p.forward, &p.hop, addr),
            None => {
                let reason = format!("Service Unavailable (DNS lookup of {} failed)", p.hop.host);
                self.forward_failed(now, p.forward.kind, 503, reason.into());
            }
        }
    }

    /// A transmit tagged with `tag` could not be delivered.
    pub fn handle_send_error(&mut self, now: Instant, tag: SendTag) {
        let Some(txn) = self.client_txns.get_mut(tag.0) else {
            return;
        };
        let step = match &mut txn.machine {
            ClientMachine::Invite(m) => m.handle_transport_error(),
            ClientMachine::NonInvite(m) => m.handle_transport_error(),
        };
        self.after_client_step(now, tag.0, step);
    }

    // ----- requests -------------------------------------------------------------

    fn on_request(&mut self, now: Instant, flow: Flow, msg: Message) {
        self.stats.requests_in += 1;
        let method = msg.method().unwrap_or(Method::Extension);
        let Some(via) = lenient_top_via(&msg) else {
            self.stats.dropped_malformed += 1;
            return;
        };
        if !self.source_accepted(flow.remote.ip()) {
            self.stats.refused_sources += 1;
            let top_via = stamp_via(&via, &flow);
            self.reject(
                &flow,
                &msg,
                &top_via,
                &Rejection::new(403, "Source Not Allowed"),
            );
            return;
        }
        // Match retransmissions, ACKs and CANCELs before validating again.
        let key = self.server_key_for(&msg, Some(&via), method);
        if method == Method::Ack {
            let invite = self.server_key_for(&msg, Some(&via), Method::Invite);
            if let Some(k) = self.servers.get(&invite).copied() {
                if let Some(ServerTxn {
                    machine: ServerMachine::Invite(m),
                    ..
                }) = self.server_txns.get_mut(k)
                {
                    if m.handle_ack(now) {
                        self.stats.retransmissions_absorbed += 1;
                        self.arm_server(k);
                        return;
                    }
                }
            }
        } else if let Some(&k) = self.servers.get(&key) {
            self.stats.retransmissions_absorbed += 1;
            self.server_retransmission(k);
            return;
        }
        let top_via = stamp_via(&via, &flow);
        if self.caller_auth.is_banned(flow.remote.ip(), now) {
            // Silence, like a firewall: an answer would tell a guesser to move
            // on to another address, and cost us more than the request did.
            self.stats.refused_banned += 1;
            return;
        }
        let checked = match check_request(&msg) {
            Ok(c) => c,
            Err(rej) => {
                self.reject(&flow, &msg, &top_via, &rej);
                return;
            }
        };
        let loop_hash = loop_hash(&msg, &checked);
        if self.is_loop(&checked.vias, loop_hash) {
            self.stats.loops_detected += 1;
            self.reject(&flow, &msg, &top_via, &Rejection::new(482, "Loop Detected"));
            return;
        }
        let inbound = self.inbound_listener(&flow);
        let plan = match self.preprocess_routes(&msg) {
            Ok(p) => p,
            Err(rej) => {
                self.reject(&flow, &msg, &top_via, &rej);
                return;
            }
        };
        let in_dialog = checked.to_tag.is_some();
        let ruri_is_local = match &plan.from_last_route {
            Some(_) => self.request_uri_is_local(&msg, &plan),
            None => self.uri_is_local(&checked.ruri),
        };
        drop(checked);
        if matches!(method, Method::Ack | Method::Cancel) {
            // An ACK in a shifted dialog carries its INVITE's shifted number,
            // and in a rewritten one the callee's view of the caller.
            let cseq = if method == Method::Ack && in_dialog {
                self.shifted_cseq(now, &msg, false)
            } else {
                None
            };
            let msg = match (method == Method::Ack && in_dialog)
                .then(|| self.identities.for_request(now, &msg, false))
                .flatten()
            {
                Some((name, value)) => {
                    identity::with_header_value(&msg, name, &value).unwrap_or(msg)
                }
                None => msg,
            };
            let (msg, after_ack) = if method == Method::Ack && in_dialog {
                self.media_ack(msg, flow.remote.ip())
            } else {
                (Some(msg), None)
            };
            let Some(msg) = msg else {
                return;
            };
            let stateless = Forward {
                uri: effective_ruri(&msg, &plan),
                request: Arc::new(msg),
                plan,
                inbound,
                record_route: false,
                loop_hash,
                top_via,
                kind: ForwardKind::Stateless,
                cseq,
                auth: None,
            };
            if method == Method::Ack {
                self.forward_stateless(now, stateless, ruri_is_local);
            } else {
                self.on_cancel(now, flow, stateless, ruri_is_local);
            }
            if let Some(then) = after_ack {
                self.after_ack(now, then);
            }
            return;
        }
        let peer = reply_peer(&via, &flow);
        let request = Arc::new(msg);
        let mut routed: Routed = if plan.next_route.is_some() {
            // A route set names the next hop; the Request-URI goes along unchanged.
            Decision::Forward(vec![Target::new(effective_ruri(&request, &plan))]).into()
        } else if ruri_is_local && method == Method::Options && !in_dialog {
            Decision::Reply {
                status: 200,
                reason: "OK".into(),
            }
            .into()
        } else if in_dialog {
            if ruri_is_local {
                Decision::Reply {
                    status: 481,
                    reason: "Call/Transaction Does Not Exist".into(),
                }
                .into()
            } else {
                Decision::Forward(vec![Target::new(effective_ruri(&request, &plan))]).into()
            }
        } else {
            self.route_initial(now, &request, &flow)
        };
        let decision = std::mem::replace(&mut routed.decision, Decision::Drop);
        if matches!(decision, Decision::Drop) {
            return;
        }
        // A new server transaction (§17.2.3 key), then the decision.
        let reliable = flow.transport.is_reliable();
        let machine = if method == Method::Invite {
            ServerMachine::Invite(ServerInvite::new(reliable, self.cfg.timers))
        } else {
            ServerMachine::NonInvite(ServerNonInvite::new(reliable, self.cfg.timers))
        };
        let mut to_tag = String::with_capacity(16);
        push_hex16(
            &mut to_tag,
            fnv(&[request.call_id().unwrap_or_default(), &key.to_be_bytes()]),
        );
        let skey = self.server_txns.insert(ServerTxn {
            key,
            machine,
            peer,
            request: Some(request.clone()),
            top_via: top_via.clone(),
            to_tag,
            context: None,
            armed: None,
        });
        self.servers.insert(key, skey);
        if method == Method::Invite {
            self.respond_local(now, skey, 100, "Trying", &[]);
        }
        match decision {
            Decision::Reply { status, reason } => {
                let extra: &[&str] = if status == 200 && method == Method::Options {
                    &[
                        "Allow: INVITE, ACK, CANCEL, BYE, OPTIONS, REGISTER, PRACK, SUBSCRIBE, NOTIFY, PUBLISH, INFO, REFER, MESSAGE, UPDATE",
                        "Accept: application/sdp",
                    ]
                } else {
                    &[]
                };
                if routed.reply_headers.is_empty() {
                    self.respond_local(now, skey, status, &reason, extra);
                } else {
                    let extra: Vec<&str> = extra
                        .iter()
                        .copied()
                        .chain(routed.reply_headers.iter().map(String::as_str))
                        .collect();
                    self.respond_local(now, skey, status, &reason, &extra);
                }
            }
            Decision::Forward(targets) if targets.is_empty() => {
                self.respond_local(now, skey, 500, "Server Internal Error (no target)", &[]);
            }
            Decision::Forward(targets) => {
                let dialog_creating = matches!(
                    method,
                    Method::Invite | Method::Subscribe | Method::Refer | Method::Notify
                );
                let record_route = !in_dialog
                    && routed.record_route.unwrap_or(
                        self.cfg.record_route == RecordRoute::Dialogs && dialog_creating,
                    );
                let received = request.clone();
                // An edited request is what goes out; its header lines may have moved,
                // so the route plan is worked out again on it.
                let (request, plan) = match routed.edited.take() {
                    Some(edited) => match self.preprocess_routes(&edited) {
                        Ok(p) => (Arc::new(edited), p),
                        Err(rej) => {
                            self.respond_local(now, skey, rej.status, &rej.reason, &[]);
                            return;
                        }
                    },
                    None => (request, plan),
                };
                let shifted = if in_dialog {
                    self.shifted_cseq(now, &request, method == Method::Bye)
                } else {
                    None
                };
                let (request, echo) = self.identity_out(now, &received, request, in_dialog, method);
                let (request, media) = match self.media_out(
                    &received,
                    request,
                    in_dialog,
                    method,
                    shifted,
                    routed.media,
                    &targets,
                    &flow,
                ) {
                    Ok(m) => m,
                    Err(rej) => {
                        self.respond_local(now, skey, rej.status, &rej.reason, &[]);
                        return;
                    }
                };
                // A relayed dialog's later requests must pass here: they
                // move its media, and its BYE releases it.
                let record_route = record_route || (media.is_some() && !in_dialog);
                let ctx = self.contexts.insert(Context {
                    server: skey,
                    request,
                    method,
                    plan,
                    current: Target::new(""),
                    challenged: false,
                    cseq: shifted,
                    auth: None,
                    pin: routed.pin.take(),
                    reply_headers: Vec::new(),
                    echo,
                    media,
                    responder_ip: None,
                    inbound,
                    loop_hash,
                    record_route,
                    targets: targets.into(),
                    branches: Vec::new(),
                    finals: Vec::new(),
                    answered: false,
                    cancelled: false,
                    armed: None,
                });
                if let Some(t) = self.server_txns.get_mut(skey) {
                    t.context = Some(ctx);
                }
                self.next_branch(now, ctx);
            }
            Decision::Challenge { .. } => {
                // `route_initial` resolves every challenge; a route set never makes one.
                self.respond_local(
                    now,
                    skey,
                    500,
                    "Server Internal Error (challenge left unresolved)",
                    &[],
                );
            }
            Decision::Drop => {}
        }
    }

    /// Asks the router about an initial request and carries out a challenge
    /// decision: a 401/407 (or an error) until the caller has authenticated,
    /// then the router again with the verified identity, on the request
    /// without the credentials this proxy consumed.
    fn route_initial(&mut self, now: Instant, request: &Arc<Message>, flow: &Flow) -> Routed {
        let routed = self.router.route(request, flow, None);
        let Decision::Challenge { realm } = &routed.decision else {
            return routed;
        };
        let salt = self.random();
        let reply = |rej: Rejection| Routed {
            reply_headers: rej.headers,
            ..Decision::Reply {
                status: rej.status,
                reason: rej.reason.into_owned(),
            }
            .into()
        };
        let (user, field) =
            match self
                .caller_auth
                .check(now, request, flow.remote.ip(), realm, salt)
            {
                caller_auth::Outcome::Verified { user, field } => (user, field),
                caller_auth::Outcome::Challenge(rej) => {
                    self.stats.challenges_sent += 1;
                    return reply(rej);
                }
                caller_auth::Outcome::Refuse(rej) => {
                    if rej.status == 403 && self.caller_auth.is_banned(flow.remote.ip(), now) {
                        let d = &self.cfg.digest;
                        self.events.push_back(Event::SourceBanned {
                            ip: flow.remote.ip().to_canonical(),
                            failures: d.ban_after,
                            for_: d.ban_time,
                        });
                    }
                    return reply(rej);
                }
            };
        self.stats.callers_verified += 1;
        let mut rw = Rewrite::new(request);
        rw.remove(field);
        let Ok(stripped) = Message::parse(rw.finish(), Framing::Exact) else {
            return reply(Rejection::new(
                500,
                "Server Internal Error (request unreadable without its credentials)",
            ));
        };
        let stripped = Arc::new(stripped);
        let mut routed = self.router.route(&stripped, flow, Some(&user));
        match routed.decision {
            // Authenticated, and still not let through: this identity may not.
            Decision::Challenge { .. } => reply(Rejection::new(403, "Forbidden")),
            _ => {
                if routed.edited.is_none() {
                    routed.edited = Some(Message::clone(&stripped));
                }
                routed
            }
        }
    }

    /// §16.10: a CANCEL for a request in progress is answered here and cancels
    /// its branches; one for nothing known is forwarded statelessly.
    fn on_cancel(&mut self, now: Instant, flow: Flow, cancel: Forward, ruri_is_local: bool) {
        let msg = cancel.request.clone();
        let via = lenient_top_via(&msg);
        let invite = self
            .servers
            .get(&self.server_key_for(&msg, via.as_ref(), Method::Invite))
            .copied();
        let (Some(invite), Some(via)) = (invite, via.as_ref()) else {
            self.forward_stateless(now, cancel, ruri_is_local);
            return;
        };
        let key = self.server_key_for(&msg, Some(via), Method::Cancel);
        let to_tag = self
            .server_txns
            .get(invite)
            .map(|t| t.to_tag.clone())
            .unwrap_or_default();
        let skey = self.server_txns.insert(ServerTxn {
            key,
            machine: ServerMachine::NonInvite(ServerNonInvite::new(
                flow.transport.is_reliable(),
                self.cfg.timers,
            )),
            peer: reply_peer(via, &flow),
            request: Some(msg.clone()),
            top_via: cancel.top_via,
            to_tag,
            context: None,
            armed: None,
        });
        self.servers.insert(key, skey);
        self.respond_local(now, skey, 200, "OK", &[]);
        let Some(ctx) = self.server_txns.get(invite).and_then(|t| t.context) else {
            return;
        };
        self.cancel_context(now, ctx);
    }

    /// Stops a context: no more targets, CANCEL to every branch still ringing.
    fn cancel_context(&mut self, now: Instant, ctx: Key) {
        let Some(c) = self.contexts.get_mut(ctx) else {
            return;
        };
        c.cancelled = true;
        c.targets.clear();
        let mut to_cancel = Vec::new();
        for b in c.branches.iter_mut().filter(|b| !b.finished) {
            if b.provisional {
                if let Some(k) = b.client {
                    to_cancel.push(k);
                }
            } else {
                b.cancel_pending = true;
            }
        }
        for k in to_cancel {
            self.send_cancel(now, k);
        }
    }

    /// The server transaction key of RFC 3261 §17.2.3 (branch, sent-by, method),
    /// or the RFC 2543 fallback when the branch lacks the magic cookie.
    fn server_key_for(&self, msg: &Message, via: Option<&Via<'_>>, method: Method) -> u128 {
        let m: &[u8] = match method {
            Method::Ack => b"INVITE",
            Method::Extension => msg.method_bytes(),
            _ if msg.method() == Some(method) => msg.method_bytes(),
            other => other.as_str().as_bytes(),
        };
        match via
            .and_then(|v| v.branch())
            .filter(|b| b.len() > 7 && b.starts_with(b"z9hG4bK"))
        {
            Some(branch) => {
                let (host, port) =
                    via.map_or(("", 5060), |v| (v.host_text, v.port.unwrap_or(5060)));
                let mut lower = [0u8; 64];
                let host = host.as_bytes();
                let n = host.len().min(64);
                for (d, s) in lower.iter_mut().zip(&host[..n]) {
                    *d = s.to_ascii_lowercase();
                }
                self.keys
                    .key(&[b"3", branch, &lower[..n], &port.to_be_bytes(), m])
            }
            None => {
                // RFC 2543 (§17.2.3 last paragraph): Request-URI, From tag, Call-ID,
                // CSeq number and top Via. The To tag is left out so the ACK, which
                // carries the response's tag, still matches its INVITE.
                let from_tag = msg
                    .from()
                    .and_then(Result::ok)
                    .and_then(|f| f.tag())
                    .unwrap_or_default();
                let seq = msg.cseq().and_then(Result::ok).map_or(0, |c| c.seq);
                let top = msg
                    .list(HeaderName::Via)
                    .next()
                    .map_or(&b""[..], |(_, v)| v);
                self.keys.key(&[
                    b"2",
                    msg.request_uri_bytes(),
                    from_tag,
                    msg.call_id().unwrap_or_default(),
                    &seq.to_be_bytes(),
                    top,
                    m,
                ])
            }
        }
    }

    fn server_retransmission(&mut self, k: Key) {
        let Some(t) = self.server_txns.get_mut(k) else {
            return;
        };
        let step = match &mut t.machine {
            ServerMachine::Invite(m) => m.handle_retransmission(),
            ServerMachine::NonInvite(m) => m.handle_retransmission(),
        };
        let peer = t.peer.clone();
        if let Some(bytes) = step.send {
            self.push_transmit(peer, bytes, None);
        }
    }

    /// §16.4: strips the Route values that name this proxy, and undoes what a
    /// strict router did.
    fn preprocess_routes(&self, msg: &Message) -> Result<RoutePlan, Rejection> {
        let mut plan = RoutePlan::default();
        let routes: Vec<(usize, &[u8])> = msg.list(HeaderName::Route).collect();
        let mut skip = 0;
        // Strict router before us: the Request-URI is a URI we put in Record-Route
        // and the real Request-URI is the last Route value.
        if !routes.is_empty() && self.uri_bytes_are_local(msg.request_uri_bytes()) {
            let (line, v) = routes[routes.len() - 1];
            let na = NameAddr::parse(v).map_err(|_| Rejection::new(400, "Bad Route header"))?;
            plan.from_last_route = Some((line, na.uri_text.to_string()));
        }
        let usable = routes.len() - usize::from(plan.from_last_route.is_some());
        while skip < usable {
            let (_, v) = routes[skip];
            let na = NameAddr::parse(v).map_err(|_| Rejection::new(400, "Bad Route header"))?;
            if !na.uri().is_ok_and(|u| self.uri_is_local(&u)) {
                plan.next_route = Some(na.uri_text.to_string());
                break;
            }
            skip += 1;
        }
        for &(line, _) in routes.iter().take(skip) {
            match plan.drop_front.last_mut() {
                Some((l, n)) if *l == line => *n += 1,
                _ => plan.drop_front.push((line, 1)),
            }
        }
        Ok(plan)
    }

    fn request_uri_is_local(&self, msg: &Message, plan: &RoutePlan) -> bool {
        match &plan.from_last_route {
            Some((_, uri)) => self.uri_bytes_are_local(uri.as_bytes()),
            None => self.uri_bytes_are_local(msg.request_uri_bytes()),
        }
    }

    fn uri_bytes_are_local(&self, uri: &[u8]) -> bool {
        std::str::from_utf8(uri)
            .ok()
            .and_then(|s| Uri::parse(s).ok())
            .is_some_and(|u| self.uri_is_local(&u))
    }

    fn uri_is_local(&self, uri: &Uri<'_>) -> bool {
        let Uri::Sip(u) = uri else {
            return false;
        };
        let host = match u
            .param("maddr")
            .and_then(|m| crate::uri::parse_host(m).ok())
        {
            Some(h) => h,
            None => u.host,
        };
        self.host_is_local(&host, u.port.unwrap_or(u.default_port()))
    }

    fn host_is_local(&self, host: &Host<'_>, port: u16) -> bool {
        self.local_names
            .iter()
            .any(|(h, p)| p.is_none_or(|p| p == port) && h.matches(host))
    }

    fn is_loop(&self, vias: &[Via<'_>], hash: u64) -> bool {
        let mut marker = [0u8; BRANCH_PREFIX.len() + 17];
        marker[..BRANCH_PREFIX.len()].copy_from_slice(BRANCH_PREFIX.as_bytes());
        hex16(
            hash,
            &mut marker[BRANCH_PREFIX.len()..BRANCH_PREFIX.len() + 16],
        );
        marker[BRANCH_PREFIX.len() + 16] = b'.';
        vias.iter().any(|via| {
            via.branch().is_some_and(|b| b.starts_with(&marker))
                && self.host_is_local(&via.host, via.port.unwrap_or(5060))
        })
    }

    fn inbound_listener(&self, flow: &Flow) -> usize {
        self.cfg
            .listeners
            .iter()
            .position(|l| l.transport == flow.transport && l.local == flow.local)
            .or_else(|| {
                self.cfg.listeners.iter().position(|l| {
                    l.transport == flow.transport && l.local.is_ipv4() == flow.local.is_ipv4()
                })
            })
            .unwrap_or(0)
    }

    fn listener_for(&self, transport: Transport, ip: IpAddr) -> Option<usize> {
        self.cfg
            .listeners
            .iter()
            .position(|l| l.transport == transport && l.local.is_ipv4() == ip.is_ipv4())
    }

    // ----- forwarding -------------------------------------------------------------

    /// Starts the next target of a context, or sends the best response when none is left.
    fn next_branch(&mut self, now: Instant, ctx: Key) {
        loop {
            let Some(c) = self.contexts.get_mut(ctx) else {
                return;
            };
            if c.active() {
                return;
            }
            let target = if c.cancelled || c.answered {
                None
            } else {
                c.targets.pop_front()
            };
            let Some(target) = target else {
                self.finish_context(now, ctx);
                return;
            };
            if !c.branches.is_empty() {
                self.stats.failovers += 1;
            }
            let idx = c.branches.len();
            c.branches.push(Branch {
                client: None,
                resolving: None,
                deadline: None,
                target_deadline: target.timeout.map(|t| now + t),
                provisional: false,
                cancel_pending: false,
                finished: false,
            });
            c.current = target.clone();
            let forward = Forward {
                request: c.request.clone(),
                plan: c.plan.clone(),
                uri: target.uri,
                inbound: c.inbound,
                record_route: c.record_route,
                loop_hash: c.loop_hash,
                top_via: self
                    .server_txns
                    .get(c.server)
                    .map(|t| t.top_via.clone())
                    .unwrap_or_default(),
                kind: ForwardKind::Branch(ctx, idx),
                cseq: c.cseq,
                auth: c.auth.clone(),
            };
            self.arm_context(ctx);
            self.start_forward(now, forward);
        }
    }

    /// ACK for a 2xx, or CANCEL with no context: forwarded without a transaction.
    fn forward_stateless(&mut self, now: Instant, forward: Forward, ruri_is_local: bool) {
        if forward.plan.next_route.is_none() && ruri_is_local {
            // An ACK or CANCEL for this proxy itself: nothing to forward.
            return;
        }
        self.start_forward(now, forward);
    }

    /// Works out the next hop (§16.6 steps 6–7) and sends, or asks for DNS first.
    fn start_forward(&mut self, now: Instant, forward: Forward) {
        let hop_uri = forward.plan.next_route.as_deref().unwrap_or(&forward.uri);
        let hop = match next_hop(hop_uri) {
            Ok(h) => h,
            Err(rej) => {
                self.forward_failed(now, forward.kind, rej.status, rej.reason);
                return;
            }
        };
        let port = hop.port.unwrap_or(if hop.sips { 5061 } else { 5060 });
        if let Some(ip) = hop.ip {
            // send_forward refuses a target that is this proxy.
            self.send_forward(now, forward, &hop, SocketAddr::new(ip, port));
            return;
        }
        let id = self.next_resolve;
        self.next_resolve += 1;
        let transport = self.pick_transport(&hop, forward.request.len());
        self.events.push_back(Event::Resolve {
            id,
            host: hop.host.clone(),
            port,
            transport,
        });
        if let ForwardKind::Branch(ctx, i) = forward.kind {
            if let Some(b) = self
                .contexts
                .get_mut(ctx)
                .and_then(|c| c.branches.get_mut(i))
            {
                b.resolving = Some(id);
            }
        }
        self.resolving.insert(id, Pending { forward, hop });
    }

    fn pick_transport(&self, hop: &NextHop, size: usize) -> Transport {
        match hop.transport {
            Some(t) => t,
            None if hop.sips => Transport::Tls,
            None if size + 300 > self.cfg.udp_max
                && self
                    .cfg
                    .listeners
                    .iter()
                    .any(|l| l.transport == Transport::Tcp) =>
            {
                Transport::Tcp
            }
            None => Transport::Udp,
        }
    }

    /// Builds the forwarded request for `addr` and sends it.
    fn send_forward(&mut self, now: Instant, forward: Forward, hop: &NextHop, addr: SocketAddr) {
        if self.host_is_local(&Host::Ip(addr.ip()), addr.port())
            && forward.plan.next_route.is_none()
        {
            self.forward_failed(
                now,
                forward.kind,
                404,
                "Not Found (the target names this proxy; add routing for it)".into(),
            );
            return;
        }
        let mut transport = self.pick_transport(hop, forward.request.len());
        let mut bytes = None;
        let mut branch = String::new();
        for _ in 0..2 {
            let Some(out) = self.listener_for(transport, addr.ip()) else {
                let reason = format!(
                    "Service Unavailable (no {} listener for {})",
                    transport.via_token(),
                    if addr.is_ipv4() { "IPv4" } else { "IPv6" }
                );
                self.forward_failed(now, forward.kind, 503, reason.into());
                return;
            };
            branch = match forward.kind {
                ForwardKind::Branch(..) | ForwardKind::Registration(_) | ForwardKind::Local => {
                    let r = self.random();
                    format!(
                        "{BRANCH_PREFIX}{:016x}.{:012x}",
                        forward.loop_hash,
                        r & 0xffff_ffff_ffff
                    )
                }
                ForwardKind::Stateless => {
                    let incoming = forward
                        .request
                        .top_via()
                        .and_then(Result::ok)
                        .and_then(|v| v.branch())
                        .unwrap_or_default();
                    format!(
                        "{BRANCH_PREFIX}{:016x}.s{:011x}",
                        forward.loop_hash,
                        fnv(&[incoming, forward.request.method_bytes()]) & 0xfff_ffff_ffff
                    )
                }
            };
            let b = self.build_forward(&forward, out, &branch);
            let implicit = hop.transport.is_none() && !hop.sips;
            if transport == Transport::Udp
                && implicit
                && b.len() > self.cfg.udp_max
                && self.listener_for(Transport::Tcp, addr.ip()).is_some()
            {
                // RFC 3261 §18.1.1: too big for UDP with an unknown MTU.
                transport = Transport::Tcp;
                continue;
            }
            bytes = Some((b, out));
            break;
        }
        let Some((bytes, out)) = bytes else {
            return;
        };
        let local = self.cfg.listeners[out].local;
        let peer = Peer {
            transport,
            local,
            remote: addr,
            conn: None,
            server_name: hop.ip.is_none().then(|| Arc::from(hop.host.as_str())),
        };
        match forward.kind {
            ForwardKind::Stateless => {
                self.stats.forwarded_requests += 1;
                self.push_transmit(peer, bytes, None);
            }
            ForwardKind::Registration(r) => {
                let ck =
                    self.start_client(now, false, bytes, &branch, peer, Owner::Registration(r));
                self.arm_client(ck);
            }
            ForwardKind::Local => {
                let ck = self.start_client(now, false, bytes, &branch, peer, Owner::Local);
                self.arm_client(ck);
            }
            ForwardKind::Branch(ctx, i) => {
                let Some(c) = self.contexts.get(ctx) else {
                    return;
                };
                let invite = c.method == Method::Invite;
                let ck =
                    self.start_client(now, invite, bytes, &branch, peer, Owner::Branch(ctx, i));
                if let Some(b) = self
                    .contexts
                    .get_mut(ctx)
                    .and_then(|c| c.branches.get_mut(i))
                {
                    b.client = Some(ck);
                }
                self.stats.forwarded_requests += 1;
                self.arm_client(ck);
            }
        }
    }

    /// A client transaction (§17.1) for `bytes` sent to `peer` under
    /// `branch`, working for `owner`: registered and sent, not yet armed.
    fn start_client(
        &mut self,
        now: Instant,
        invite: bool,
        bytes: Bytes,
        branch: &str,
        peer: Peer,
        owner: Owner,
    ) -> Key {
        let reliable = peer.transport.is_reliable();
        let machine = if invite {
            ClientMachine::Invite(ClientInvite::new(
                now,
                bytes.clone(),
                reliable,
                self.cfg.timers,
            ))
        } else {
            ClientMachine::NonInvite(ClientNonInvite::new(
                now,
                bytes.clone(),
                reliable,
                self.cfg.timers,
            ))
        };
        let key = self.keys.client(branch.as_bytes(), false);
        let ck = self.client_txns.insert(ClientTxn {
            key,
            machine,
            peer: peer.clone(),
            owner: Some(owner),
            expire: None,
            armed: None,
        });
        self.clients.insert(key, ck);
        self.push_transmit(peer, bytes, Some(SendTag(ck)));
        ck
    }

    /// §16.6 steps 1–8: copy, Request-URI, Max-Forwards, Record-Route, routes, Via.
    fn build_forward(&self, f: &Forward, out: usize, branch: &str) -> Bytes {
        let m = &f.request;
        let mut rw = Rewrite::new(m);
        let mut uri = f.uri.clone();
        for &(line, n) in &f.plan.drop_front {
            rw.drop_first_values(line, n);
        }
        if let Some((line, _)) = &f.plan.from_last_route {
            rw.drop_last_values(*line, 1);
        }
        // §16.6 step 6: a next hop without `lr` is a strict router: it becomes the
        // Request-URI and the Request-URI goes to the end of the route set.
        if let Some(next) = &f.plan.next_route {
            let strict = SipUri::parse(next).is_ok_and(|u| !u.has_lr());
            if strict {
                if let Some((line, _)) = m
                    .list(HeaderName::Route)
                    .nth(f.plan.drop_front.iter().map(|(_, n)| n).sum::<usize>())
                {
                    rw.drop_first_values(line, 1);
                }
                rw.append("Route", format!("<{uri}>").as_bytes());
                uri = next.clone();
            }
        }
        if uri.as_bytes() != m.request_uri_bytes() {
            rw.set_request_uri(uri.as_bytes());
        }
        if let Some((i, _)) = m
            .fields_all()
            .iter()
            .enumerate()
            .find(|(_, fl)| fl.name == HeaderName::MaxForwards)
        {
            let mf = m.max_forwards().and_then(Result::ok).unwrap_or(70);
            rw.replace_value(i, &mf.saturating_sub(1).to_string());
        } else {
            rw.append("Max-Forwards", b"70");
        }
        if let Some((via_line, v)) = m.list(HeaderName::Via).next() {
            if f.top_via.as_slice() != v {
                rw.replace_first_value(via_line, &f.top_via);
            }
        }
        if let Some(seq) = f.cseq {
            set_cseq(&mut rw, m, seq);
        }
        if let Some(a) = &f.auth {
            rw.append(a.name, a.value.as_bytes());
        }
        if f.record_route {
            if self.cfg.listeners[f.inbound] != self.cfg.listeners[out] {
                rw.prepend("Record-Route", &self.rr_value[f.inbound]);
            }
            rw.prepend("Record-Route", &self.rr_value[out]);
        }
        let mut via = String::with_capacity(self.via_prefix[out].len() + branch.len());
        via.push_str(&self.via_prefix[out]);
        via.push_str(branch);
        rw.prepend("Via", &via);
        rw.finish()
    }

    fn forward_failed(
        &mut self,
        now: Instant,
        kind: ForwardKind,
        status: u16,
        reason: Cow<'static, str>,
    ) {
        match kind {
            ForwardKind::Branch(ctx, i) => {
                self.branch_final(now, ctx, i, Final::Local { status, reason });
            }
            ForwardKind::Registration(r) => {
                self.registration_failed(now, r, format!("{status} {reason}"));
            }
            ForwardKind::Stateless | ForwardKind::Local => {}
        }
    }

    // ----- responses --------------------------------------------------------------

    fn on_response(&mut self, now: Instant, flow: Flow, msg: Message) {
        self.stats.responses_in += 1;
        if !check_response(&msg) {
            self.stats.dropped_malformed += 1;
            return;
        }
        let Some(Ok(via)) = msg.top_via() else {
            return;
        };
        // §18.1.2: the top Via must be ours.
        if !self.host_is_local(&via.host, via.port.unwrap_or(5060)) {
            self.stats.stray_responses_dropped += 1;
            return;
        }
        let is_cancel = msg
            .cseq()
            .and_then(Result::ok)
            .is_some_and(|c| c.method == b"CANCEL");
        let branch = via.branch().unwrap_or_default();
        let key = self.keys.client(branch, is_cancel);
        let Some(&ck) = self.clients.get(&key) else {
            self.forward_stray(msg, Some(flow.remote.ip()));
            return;
        };
        let Some(txn) = self.client_txns.get_mut(ck) else {
            return;
        };
        let step = match &mut txn.machine {
            ClientMachine::Invite(m) => m.handle_response(now, msg),
            ClientMachine::NonInvite(m) => m.handle_response(now, msg),
        };
        self.after_client_step(now, ck, step);
    }

    /// §16.11: a response no transaction knows goes to the next Via.
    fn forward_stray(&mut self, msg: Message, source: Option<IpAddr>) {
        if !self.cfg.forward_stray_responses || msg.status() == Some(100) {
            self.stats.stray_responses_dropped += 1;
            return;
        }
        let Some(peer) = msg
            .list(HeaderName::Via)
            .nth(1)
            .and_then(|(_, v)| via_peer(v))
        else {
            self.stats.stray_responses_dropped += 1;
            return;
        };
        let Some(out) = self.listener_for(peer.0, peer.1.ip()) else {
            self.stats.stray_responses_dropped += 1;
            return;
        };
        let Some((via_line, _)) = msg.list(HeaderName::Via).next() else {
            return;
        };
        let mut rw = Rewrite::new(&msg);
        rw.drop_first_values(via_line, 1);
        // A 2xx retransmission in a shifted dialog goes up with the caller's number.
        if let (Some(delta), Some(seq)) = (self.shifts.peek(&msg), cseq_number(&msg)) {
            set_cseq(&mut rw, &msg, seq.wrapping_sub(delta));
        }
        // …and with the caller's own From in a rewritten one.
        if let Some(from) = self.identities.caller_from(&msg) {
            identity::set_header_value(&mut rw, &msg, HeaderName::From, &from);
        }
        // A relayed dialog's SDP never goes on as it came: it would hand the
        // other party the address (and SRTP key) the relay stands in for.
        match self.media_stray(&msg, source) {
            StraySdp::Keep => {}
            StraySdp::Replace(body) => rw.set_body(body),
            StraySdp::Strip => relaying::strip_sdp(&mut rw, &msg),
            StraySdp::Drop => {
                self.stats.stray_responses_dropped += 1;
                return;
            }
        }
        let bytes = rw.finish();
        self.stats.stray_responses_forwarded += 1;
        let local = self.cfg.listeners[out].local;
        self.push_transmit(
            Peer {
                transport: peer.0,
                local,
                remote: peer.1,
                conn: None,
                server_name: None,
            },
            bytes,
            None,
        );
    }

    fn after_client_step(&mut self, now: Instant, ck: Key, step: Step) {
        let Some(txn) = self.client_txns.get(ck) else {
            return;
        };
        let peer = txn.peer.clone();
        let owner = txn.owner;
        if let Some(bytes) = step.send {
            self.push_transmit(peer, bytes, None);
        }
        if let (Some(event), Some(Owner::Registration(r))) = (&step.event, owner) {
            match event {
                TuEvent::Response(resp) => self.registration_response(now, r, resp),
                TuEvent::Timeout => self.registration_failed(now, r, "no answer (timeout)".into()),
                TuEvent::TransportError => {
                    self.registration_failed(now, r, "the registrar is unreachable".into());
                }
                TuEvent::AckTimeout => {}
            }
        }
        if let (Some(event), Some(Owner::Branch(ctx, i))) = (step.event, owner) {
            match event {
                TuEvent::Response(resp) => self.branch_response(now, ctx, i, resp),
                TuEvent::Timeout => self.branch_final(
                    now,
                    ctx,
                    i,
                    Final::Local {
                        status: 408,
                        reason: "Request Timeout".into(),
                    },
                ),
                TuEvent::TransportError => self.branch_final(
                    now,
                    ctx,
                    i,
                    Final::Local {
                        status: 503,
                        reason: "Service Unavailable (next hop unreachable)".into(),
                    },
                ),
                TuEvent::AckTimeout => {}
            }
        }
        self.reap_client(ck);
    }

    fn reap_client(&mut self, ck: Key) {
        match self.client_txns.get(ck) {
            Some(t) if t.is_terminated() => {
                if let Some(t) = self.client_txns.remove(ck) {
                    self.clients.remove(&t.key);
                }
            }
            Some(_) => self.arm_client(ck),
            None => {}
        }
    }

    /// §16.7 for one response from branch `i`.
    fn branch_response(&mut self, now: Instant, ctx: Key, i: usize, resp: Message) {
        let code = resp.status().unwrap_or(0);
        let responder_ip = self
            .contexts
            .get(ctx)
            .and_then(|c| c.branches.get(i))
            .and_then(|b| b.client)
            .and_then(|k| self.client_txns.get(k))
            .map(|t| t.peer.remote.ip());
        if let Some(c) = self.contexts.get_mut(ctx) {
            c.responder_ip = responder_ip;
        }
        let Some(c) = self.contexts.get_mut(ctx) else {
            // The context is gone (its server transaction ended); a late 2xx still
            // goes upstream by Via.
            // (Its SDP is taken only as a resend: where it came from does not
            // matter.)
            if (200..300).contains(&code) {
                self.forward_stray(resp, None);
            }
            return;
        };
        if code < 200 {
            let Some(b) = c.branches.get_mut(i) else {
                return;
            };
            b.provisional = true;
            if c.method == Method::Invite && !b.finished {
                b.deadline = Some(now + self.cfg.ring_timeout);
            }
            let cancel = std::mem::take(&mut b.cancel_pending)
                .then_some(b.client)
                .flatten();
            self.arm_context(ctx);
            if let Some(k) = cancel {
                self.send_cancel(now, k);
            }
            if code > 100 {
                self.forward_response(now, ctx, &resp);
            }
            return;
        }
        if (200..300).contains(&code) {
            c.answered = true;
            if let Some(b) = c.branches.get_mut(i) {
                b.finished = true;
            }
            self.forward_response(now, ctx, &resp);
            // A 2xx to INVITE ends the other branches (sequential: none are live).
            self.cancel_context(now, ctx);
            self.reap_context(ctx);
            return;
        }
        self.branch_final(now, ctx, i, Final::Received(resp));
    }

    /// A branch ended with a non-2xx final (received or local).
    fn branch_final(&mut self, now: Instant, ctx: Key, i: usize, fin: Final) {
        let Some(c) = self.contexts.get_mut(ctx) else {
            return;
        };
        let Some(b) = c.branches.get_mut(i) else {
            return;
        };
        if b.finished {
            return;
        }
        b.finished = true;
        let client = b.client;
        if let Final::Received(resp) = &fin {
            if self.answer_challenge(now, ctx, client, resp) {
                return;
            }
        }
        let Some(c) = self.contexts.get_mut(ctx) else {
            return;
        };
        let six = fin.status() >= 600;
        if !six && !c.cancelled && !c.answered {
            let failure = Failure {
                status: fin.status(),
                reason: fin.reason(),
                target: &c.current.uri,
                remaining: c.targets.len(),
            };
            match self.router.on_failure(c.pin.as_ref(), &c.request, &failure) {
                FailureAction::Proceed => {}
                FailureAction::Retarget(targets) => c.targets = targets.into(),
                FailureAction::Reply {
                    status,
                    reason,
                    headers,
                } => {
                    c.targets.clear();
                    c.finals.clear();
                    c.reply_headers = headers;
                    c.finals.push(Final::Local {
                        status,
                        reason: reason.into(),
                    });
                    self.next_branch(now, ctx);
                    return;
                }
            }
        }
        c.finals.push(fin);
        if six {
            // §16.7 step 5: a 6xx ends the search.
            c.targets.clear();
            self.cancel_context(now, ctx);
        }
        self.next_branch(now, ctx);
    }

    /// Answers a 401/407 from the target being tried when it names a configured
    /// credential: the same target again, with credentials and CSeq + 1. True
    /// when the retry is under way.
    fn answer_challenge(
        &mut self,
        now: Instant,
        ctx: Key,
        client: Option<Key>,
        resp: &Message,
    ) -> bool {
        if !matches!(resp.status(), Some(401 | 407)) {
            return false;
        }
        let Some(c) = self.contexts.get(ctx) else {
            return false;
        };
        if c.challenged || c.cancelled || c.answered || c.method == Method::Cancel {
            return false;
        }
        let Some(cred) = c
            .current
            .credential
            .as_ref()
            .and_then(|name| self.cfg.credentials.get(name))
            .cloned()
        else {
            return false;
        };
        let Some(sent) = client.and_then(|k| self.sent_request(k)) else {
            return false;
        };
        let Some(seq) = cseq_number(&sent) else {
            return false;
        };
        let cnonce = format!("{:016x}", self.random());
        let Some(answer) = upstream_auth::answer(resp, &sent, &cred, &cnonce) else {
            return false;
        };
        let Some(c) = self.contexts.get_mut(ctx) else {
            return false;
        };
        c.challenged = true;
        c.auth = Some(answer);
        c.cseq = Some(seq.wrapping_add(1));
        c.targets.push_front(c.current.clone());
        if c.method == Method::Invite {
            // From now on: early in-dialog requests (PRACK, UPDATE) need the
            // shift before any 2xx.
            let original = cseq_number(&c.request).unwrap_or(seq);
            let request = c.request.clone();
            self.shifts
                .insert(now, &request, seq.wrapping_add(1).wrapping_sub(original));
        }
        self.stats.challenges_answered += 1;
        self.next_branch(now, ctx);
        true
    }

    /// The request a client transaction sent, as it went out.
    fn sent_request(&self, client: Key) -> Option<Message> {
        let wire = match &self.client_txns.get(client)?.machine {
            ClientMachine::Invite(m) => m.wire().clone(),
            ClientMachine::NonInvite(m) => m.wire().clone(),
        };
        Message::parse(wire, Framing::Exact).ok()
    }

    /// Keeps a caller-ID rewrite consistent (see `identity`): an initial
    /// INVITE whose From the router changed starts it; an in-dialog request
    /// of such a dialog goes out with the other side's view. Returns the
    /// request to send and the values its responses must carry back.
    fn identity_out(
        &mut self,
        now: Instant,
        received: &Arc<Message>,
        request: Arc<Message>,
        in_dialog: bool,
        method: Method,
    ) -> (Arc<Message>, Vec<(HeaderName, Bytes)>) {
        if in_dialog {
            let Some((name, value)) =
                self.identities
                    .for_request(now, &request, method == Method::Bye)
            else {
                return (request, Vec::new());
            };
            let Some(had) = request.header(name).map(Bytes::copy_from_slice) else {
                return (request, Vec::new());
            };
            return match identity::with_header_value(&request, name, &value) {
                Some(m) => (Arc::new(m), vec![(name, had)]),
                None => (request, Vec::new()),
            };
        }
        if Arc::ptr_eq(received, &request) {
            // Not edited: nothing to compare, nothing copied.
            return (request, Vec::new());
        }
        match (
            received.header(HeaderName::From),
            request.header(HeaderName::From),
        ) {
            (Some(had), Some(sent)) if had != sent => {
                if method == Method::Invite {
                    self.identities.insert(now, &request, had, sent);
                }
                let had = Bytes::copy_from_slice(had);
                (request, vec![(HeaderName::From, had)])
            }
            _ => (request, Vec::new()),
        }
    }

    /// The CSeq number an in-dialog request from the caller goes out with, in
    /// a dialog whose numbering the proxy shifted.
    fn shifted_cseq(&mut self, now: Instant, request: &Message, ends: bool) -> Option<u32> {
        let delta = self.shifts.take_for(now, request, ends)?;
        Some(cseq_number(request)?.wrapping_add(delta))
    }

    /// Sends the best final response (§16.7 step 6) when nothing is pending.
    fn finish_context(&mut self, now: Instant, ctx: Key) {
        let Some(c) = self.contexts.get_mut(ctx) else {
            return;
        };
        if c.answered || c.active() {
            self.reap_context(ctx);
            return;
        }
        c.answered = true;
        let initial = c.method == Method::Invite
            && c.request
                .to()
                .and_then(Result::ok)
                .is_some_and(|t| t.tag().is_none());
        match (c.media, initial) {
            // The call failed: its relay goes too.
            (Some((id, _)), true) => self.release_media(id),
            // A re-INVITE or UPDATE failed: its offer goes too.
            (Some((id, responder)), false)
                if matches!(c.method, Method::Invite | Method::Update) =>
            {
                let request = c.request.clone();
                self.media_refused(id, responder, &request);
            }
            _ => {}
        }
        let Some(c) = self.contexts.get_mut(ctx) else {
            return;
        };
        if c.method == Method::Invite && (c.challenged || !c.echo.is_empty()) {
            // The call failed: no dialog goes on with the shifted numbering or
            // the rewritten caller-ID (a failed re-INVITE leaves its dialog be).
            let (request, challenged) = (c.request.clone(), c.challenged);
            if challenged {
                self.shifts.remove(&request);
            }
            if request
                .to()
                .and_then(Result::ok)
                .is_some_and(|t| t.tag().is_none())
            {
                self.identities.remove(&request);
            }
        }
        let Some(c) = self.contexts.get_mut(ctx) else {
            return;
        };
        let best = best_response(&mut c.finals);
        let cancelled = c.cancelled;
        let server = c.server;
        let reply_headers = std::mem::take(&mut c.reply_headers);
        match best {
            Some(Final::Received(resp)) => {
                if resp.status() == Some(503) {
                    // §16.7 step 6: 503 becomes 500 so upstream does not think the
                    // proxy itself is unavailable.
                    self.forward_response_as(now, ctx, &resp, Some(500));
                } else {
                    self.forward_response(now, ctx, &resp);
                }
            }
            Some(Final::Local { status, reason }) => {
                let (status, reason) = if cancelled && status == 408 {
                    (487, Cow::Borrowed("Request Terminated"))
                } else if status == 503 {
                    (
                        500,
                        Cow::Owned(reason.replacen(
                            "Service Unavailable",
                            "Server Internal Error",
                            1,
                        )),
                    )
                } else {
                    (status, reason)
                };
                let extra: Vec<&str> = reply_headers.iter().map(String::as_str).collect();
                self.respond_local(now, server, status, &reason, &extra);
            }
            None => {
                self.respond_local(now, server, 500, "Server Internal Error (no target)", &[]);
            }
        }
        self.reap_context(ctx);
    }

    fn forward_response(&mut self, now: Instant, ctx: Key, resp: &Message) {
        self.forward_response_as(now, ctx, resp, None);
    }

    /// Sends a branch's response upstream through the server transaction with our
    /// Via removed (§16.7 steps 7–9).
    fn forward_response_as(&mut self, now: Instant, ctx: Key, resp: &Message, status: Option<u16>) {
        // Only a request sent with another CSeq number has its own to restore.
        let Some((server, original, echo, media, initial, responder_ip)) =
            self.contexts.get(ctx).map(|c| {
                (
                    c.server,
                    c.cseq.and_then(|_| cseq_number(&c.request)),
                    c.echo.clone(),
                    c.media,
                    c.method == Method::Invite
                        && c.request
                            .to()
                            .and_then(Result::ok)
                            .is_some_and(|t| t.tag().is_none()),
                    c.responder_ip,
                )
            })
        else {
            return;
        };
        let Some((via_line, _)) = resp.list(HeaderName::Via).next() else {
            return;
        };
        if resp.list(HeaderName::Via).nth(1).is_none() {
            // No Via left: the response was meant for us. Nothing to forward.
            return;
        }
        let mut rw = Rewrite::new(resp);
        rw.drop_first_values(via_line, 1);
        if let Some(seq) = original {
            set_cseq(&mut rw, resp, seq);
        }
        for (name, value) in &echo {
            identity::set_header_value(&mut rw, resp, *name, value);
        }
        if let Some(s) = status {
            rw.set_start_line(format!("SIP/2.0 {s} Server Internal Error").as_bytes());
        }
        let relayed = media.filter(|_| status.is_none());
        let mut refused = None;
        if let Some((id, responder)) = relayed {
            match self.media_response(id, responder, resp, initial, responder_ip) {
                Ok(Some(body)) => rw.set_body(body),
                Ok(None) => {}
                // Never passed on as it came: its SDP names the address (and
                // SRTP key) the relay stands in for.
                Err(why) => {
                    relaying::strip_sdp(&mut rw, resp);
                    refused = Some(why);
                    // A re-INVITE's or UPDATE's 2xx without the answer it
                    // had: the offer is off, the call keeps its media.
                    let ok = resp.status().is_some_and(|s| (200..300).contains(&s));
                    if ok && !initial {
                        self.media.withdraw(id, responder.other());
                    }
                }
            }
        }
        let bytes = rw.finish();
        let code = status.or(resp.status()).unwrap_or(500);
        if let (Some((id, _)), true, true) = (relayed, initial, (200..300).contains(&code)) {
            self.media_confirmed(id, &bytes);
        }
        self.stats.forwarded_responses += 1;
        self.server_send(now, server, code, bytes);
        if let Some((id, _)) = relayed {
            self.media_sent(now, id, resp, code, initial, refused);
        }
    }

    fn respond_local(
        &mut self,
        now: Instant,
        server: Key,
        status: u16,
        reason: &str,
        extra: &[&str],
    ) {
        let Some(t) = self.server_txns.get(server) else {
            return;
        };
        let Some(req) = t.request.as_deref() else {
            return;
        };
        let mut lines: Vec<&str> = extra.to_vec();
        if let Some(s) = &self.server_line {
            if status > 100 {
                lines.push(s);
            }
        }
        let bytes = build::response(
            req,
            status,
            reason,
            Some(&t.top_via),
            Some(&t.to_tag),
            &lines,
        );
        self.server_send(now, server, status, bytes);
    }

    fn server_send(&mut self, now: Instant, server: Key, code: u16, bytes: Bytes) {
        let Some(t) = self.server_txns.get_mut(server) else {
            return;
        };
        let out = match &mut t.machine {
            ServerMachine::Invite(m) => m.send_response(now, code, bytes),
            ServerMachine::NonInvite(m) => m.send_response(now, code, bytes),
        };
        if code >= 200 {
            t.request = None;
        }
        let peer = t.peer.clone();
        if let Some(bytes) = out {
            self.push_transmit(peer, bytes, None);
        }
        self.reap_server(server);
    }

    fn reap_server(&mut self, k: Key) {
        let done = match self.server_txns.get(k) {
            Some(t) => match &t.machine {
                ServerMachine::Invite(m) => m.is_terminated(),
                ServerMachine::NonInvite(m) => m.is_terminated(),
            },
            None => return,
        };
        if done {
            if let Some(t) = self.server_txns.remove(k) {
                self.servers.remove(&t.key);
                if let Some(ctx) = t.context {
                    if let Some(c) = self.contexts.get_mut(ctx) {
                        c.answered = true;
                    }
                    self.drop_context(ctx);
                }
            }
        } else {
            self.arm_server(k);
        }
    }

    /// Removes a context once its final went upstream and no branch is live.
    /// Removes a context once its final went upstream and no branch is live.
    /// Later 2xx (retransmissions, or a cancelled branch that answered anyway)
    /// still reach the caller: they are forwarded by Via (§16.7, RFC 6026).
    fn reap_context(&mut self, ctx: Key) {
        if self
            .contexts
            .get(ctx)
            .is_some_and(|c| c.answered && !c.active())
        {
            self.drop_context(ctx);
        }
    }

    fn drop_context(&mut self, ctx: Key) {
        if let Some(c) = self.contexts.remove(ctx) {
            for b in &c.branches {
                if let Some(id) = b.resolving {
                    self.resolving.remove(&id);
                }
            }
        }
    }

    fn send_cancel(&mut self, now: Instant, invite: Key) {
        let Some(t) = self.client_txns.get_mut(invite) else {
            return;
        };
        let ClientMachine::Invite(m) = &t.machine else {
            return;
        };
        if !m.is_pending() {
            return;
        }
        // Forget the INVITE branch if no final comes within 64·T1 of the CANCEL.
        t.expire = Some(now + self.cfg.timers.t1x64());
        let Ok(req) = Message::parse(m.wire().clone(), Framing::Exact) else {
            return;
        };
        let bytes = build::cancel(&req);
        let peer = t.peer.clone();
        let branch = req
            .top_via()
            .and_then(Result::ok)
            .and_then(|v| v.branch())
            .unwrap_or_default();
        let key = self.keys.client(branch, true);
        if self.clients.contains_key(&key) {
            return;
        }
        let ck = self.client_txns.insert(ClientTxn {
            key,
            machine: ClientMachine::NonInvite(ClientNonInvite::new(
                now,
                bytes.clone(),
                peer.transport.is_reliable(),
                self.cfg.timers,
            )),
            peer: peer.clone(),
            owner: None,
            expire: None,
            armed: None,
        });
        self.clients.insert(key, ck);
        self.push_transmit(peer, bytes, Some(SendTag(ck)));
        self.arm_client(ck);
        self.arm_client(invite);
    }

    // ----- timers -----------------------------------------------------------------

    fn server_timer(&mut self, now: Instant, k: Key, at: Instant) {
        let Some(t) = self.server_txns.get_mut(k) else {
            return;
        };
        if !fired(&mut t.armed, at) {
            return;
        }
        let peer = t.peer.clone();
        let send = match &mut t.machine {
            ServerMachine::Invite(m) => m.handle_timeout(now).send,
            ServerMachine::NonInvite(m) => {
                m.handle_timeout(now);
                None
            }
        };
        if let Some(bytes) = send {
            self.push_transmit(peer, bytes, None);
        }
        self.reap_server(k);
    }

    fn client_timer(&mut self, now: Instant, k: Key, at: Instant) {
        let Some(t) = self.client_txns.get_mut(k) else {
            return;
        };
        if !fired(&mut t.armed, at) {
            return;
        }
        if t.expire.is_some_and(|e| now >= e) {
            if let Some(t) = self.client_txns.remove(k) {
                self.clients.remove(&t.key);
            }
            return;
        }
        let step = match &mut t.machine {
            ClientMachine::Invite(m) => m.handle_timeout(now),
            ClientMachine::NonInvite(m) => m.handle_timeout(now),
        };
        self.after_client_step(now, k, step);
    }

    /// Timer C and per-target timeouts (§16.6 step 11, §16.8).
    fn context_timer(&mut self, now: Instant, ctx: Key, at: Instant) {
        let Some(c) = self.contexts.get_mut(ctx) else {
            return;
        };
        if !fired(&mut c.armed, at) {
            return;
        }
        let expired: Vec<(usize, Option<Key>, bool)> = c
            .branches
            .iter()
            .enumerate()
            .filter(|(_, b)| !b.finished)
            .filter(|(_, b)| {
                b.deadline.is_some_and(|d| now >= d) || b.target_deadline.is_some_and(|d| now >= d)
            })
            .map(|(i, b)| (i, b.client, b.provisional))
            .collect();
        for (i, client, provisional) in expired {
            match (client, provisional) {
                (Some(k), true) => self.send_cancel(now, k),
                (Some(k), false) => {
                    if let Some(t) = self.client_txns.get_mut(k) {
                        match &mut t.machine {
                            ClientMachine::Invite(m) => m.terminate(),
                            ClientMachine::NonInvite(m) => m.terminate(),
                        }
                    }
                    self.reap_client(k);
                }
                (None, _) => {}
            }
            self.branch_final(
                now,
                ctx,
                i,
                Final::Local {
                    status: 408,
                    reason: "Request Timeout".into(),
                },
            );
        }
        self.arm_context(ctx);
    }

    fn arm_server(&mut self, k: Key) {
        let Some(t) = self.server_txns.get_mut(k) else {
            return;
        };
        let at = match &t.machine {
            ServerMachine::Invite(m) => m.poll_timeout(),
            ServerMachine::NonInvite(m) => m.poll_timeout(),
        };
        schedule(&mut self.timers, &mut t.armed, at, TimerRef::Server(k));
    }

    fn arm_client(&mut self, k: Key) {
        let Some(t) = self.client_txns.get_mut(k) else {
            return;
        };
        let at = t.poll_timeout();
        schedule(&mut self.timers, &mut t.armed, at, TimerRef::Client(k));
    }

    fn arm_context(&mut self, k: Key) {
        let Some(c) = self.contexts.get_mut(k) else {
            return;
        };
        let at = c.poll_timeout();
        schedule(&mut self.timers, &mut c.armed, at, TimerRef::Context(k));
    }

    // ----- upstream registrations (see `registration`) ---------------------------

    /// Starts the configured upstream registrations: each sends its first
    /// REGISTER now. Call once, after [`Proxy::new`].
    pub fn start_registrations(&mut self, now: Instant) {
        let configs = self.cfg.registrations.clone();
        for cfg in configs {
            let random = self.random();
            self.registrations
                .push((Registration::new(cfg, now, random), None));
            self.after_registration(self.registrations.len() - 1);
        }
    }

    /// Where each upstream registration stands.
    pub fn registrations(&self, now: Instant) -> Vec<RegistrationStatus> {
        self.registrations
            .iter()
            .map(|(r, _)| r.status(now))
            .collect()
    }

    fn registration_timer(&mut self, now: Instant, i: usize) {
        let contact = match self.registrations.get(i) {
            Some((r, _)) => self.default_contact(r.config()),
            None => return,
        };
        let Some((r, armed)) = self.registrations.get_mut(i) else {
            return;
        };
        *armed = None;
        if let Some(msg) = r.poll_request(now, &contact) {
            self.send_registration(now, i, msg);
        }
        self.after_registration(i);
    }

    fn registration_response(&mut self, now: Instant, i: usize, resp: &Message) {
        let cnonce = format!("{:016x}", self.random());
        let Some((r, _)) = self.registrations.get_mut(i) else {
            return;
        };
        if let Some(msg) = r.handle_response(now, resp, &cnonce) {
            self.send_registration(now, i, msg);
        }
        self.after_registration(i);
    }

    fn registration_failed(&mut self, now: Instant, i: usize, why: String) {
        if let Some((r, _)) = self.registrations.get_mut(i) {
            r.handle_failure(now, why);
        }
        self.after_registration(i);
    }

    /// Reports what came of a registration's step and arms its timer.
    fn after_registration(&mut self, i: usize) {
        if let Some((r, armed)) = self.registrations.get_mut(i) {
            if let Some((registered, detail)) = r.take_news() {
                self.events.push_back(Event::Registration {
                    name: r.config().name.clone(),
                    registered,
                    detail,
                });
            }
            let at = r.poll_timeout();
            schedule(&mut self.timers, armed, at, TimerRef::Registration(i));
        }
    }

    /// Sends a REGISTER like a forwarded request: to the registrar URI, with
    /// this proxy's Via and Max-Forwards added.
    fn send_registration(&mut self, now: Instant, i: usize, msg: Message) {
        let uri = String::from_utf8_lossy(msg.request_uri_bytes()).into_owned();
        let loop_hash = self.random();
        let forward = Forward {
            request: Arc::new(msg),
            plan: RoutePlan::default(),
            uri,
            inbound: 0,
            record_route: false,
            loop_hash,
            top_via: Vec::new(),
            kind: ForwardKind::Registration(i),
            cseq: None,
            auth: None,
        };
        self.start_forward(now, forward);
    }

    /// `sip:USER@LISTENER` for the registrar's transport (the AOR's user; the
    /// listener as written in Via, with `transport=` unless UDP).
    fn default_contact(&self, cfg: &RegistrationConfig) -> String {
        let user = match Uri::parse(&cfg.aor) {
            Ok(Uri::Sip(u)) => u.user.map(|u| u.to_string()),
            _ => None,
        };
        let transport = next_hop(&cfg.registrar)
            .map(|hop| self.pick_transport(&hop, 0))
            .unwrap_or(Transport::Udp);
        let listener = self
            .cfg
            .listeners
            .iter()
            .find(|l| l.transport == transport)
            .or(self.cfg.listeners.first());
        let Some(l) = listener else {
            return String::new();
        };
        let at = match user {
            Some(u) => format!("{u}@{}", l.sent_by()),
            None => l.sent_by(),
        };
        match l.transport {
            Transport::Udp => format!("sip:{at}"),
            t => format!("sip:{at};transport={}", t.param()),
        }
    }

    // ----- helpers ----------------------------------------------------------------

    fn push_transmit(&mut self, peer: Peer, bytes: Bytes, tag: Option<SendTag>) {
        self.transmits.push_back(Transmit {
            transport: peer.transport,
            local: peer.local,
            remote: peer.remote,
            conn: peer.conn,
            server_name: peer.server_name,
            bytes,
            on_error: tag,
        });
    }

    /// Answers an invalid request without a transaction (ACKs are never answered).
    fn source_accepted(&self, ip: IpAddr) -> bool {
        match &self.cfg.accept_from {
            None => true,
            Some(nets) => {
                let ip = ip.to_canonical();
                nets.iter().any(|n| n.contains(&ip))
            }
        }
    }

    fn reject(&mut self, flow: &Flow, msg: &Message, top_via: &[u8], rej: &Rejection) {
        self.stats.rejected += 1;
        if msg.method() == Some(Method::Ack) {
            return;
        }
        let Some(via) = lenient_top_via(msg) else {
            return;
        };
        let peer = reply_peer(&via, flow);
        let to_tag = format!(
            "{:016x}",
            fnv(&[msg.call_id().unwrap_or_default(), top_via])
        );
        let mut lines: Vec<&str> = rej.headers.iter().map(String::as_str).collect();
        let server_line = self.server_line.clone();
        if let Some(s) = &server_line {
            lines.push(s);
        }
        let bytes = build::response(
            msg,
            rej.status,
            &rej.reason,
            Some(top_via),
            Some(&to_tag),
            &lines,
        );
        self.push_transmit(peer, bytes, None);
    }

    fn reply_stateless(&mut self, flow: &Flow, msg: &Message, rej: &Rejection) {
        let Some(via) = lenient_top_via(msg) else {
            self.stats.dropped_malformed += 1;
            return;
        };
        let top = stamp_via(&via, flow);
        self.reject(flow, msg, &top, rej);
    }

    fn random(&mut self) -> u64 {
        // xorshift64*: branches need uniqueness, not secrecy.
        let mut x = self.rng;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.rng = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

fn cseq_number(m: &Message) -> Option<u32> {
    Some(m.cseq()?.ok()?.seq)
}

/// Rewrites the CSeq number of `m`, keeping its method.
fn set_cseq(rw: &mut Rewrite<'_>, m: &Message, seq: u32) {
    let Some(i) = m
        .fields_all()
        .iter()
        .position(|f| f.name == HeaderName::CSeq)
    else {
        return;
    };
    let method = m.cseq().and_then(Result::ok).map_or(&b""[..], |c| c.method);
    rw.replace_value(i, &format!("{seq} {}", String::from_utf8_lossy(method)));
}

/// True when a popped heap entry for `at` is the current deadline (not one left
/// behind by an earlier arming); disarms it.
fn fired(armed: &mut Option<Instant>, at: Instant) -> bool {
    if *armed == Some(at) {
        *armed = None;
        true
    } else {
        false
    }
}

/// Puts `r` on the timer heap for `at` unless it is already there for that
/// time. Entries left behind by an earlier deadline are skipped when popped
/// (their `armed` no longer matches).
fn schedule(
    timers: &mut BinaryHeap<Reverse<(Instant, TimerRef)>>,
    armed: &mut Option<Instant>,
    at: Option<Instant>,
    r: TimerRef,
) {
    if let Some(at) = at {
        if *armed != Some(at) {
            *armed = Some(at);
            timers.push(Reverse((at, r)));
        }
    }
}

/// The Request-URI after strict-router repair.
fn effective_ruri(msg: &Message, plan: &RoutePlan) -> String {
    match &plan.from_last_route {
        Some((_, uri)) => uri.clone(),
        None => String::from_utf8_lossy(msg.request_uri_bytes()).into_owned(),
    }
}

fn record_route_value(l: &Listener) -> String {
    match l.transport {
        Transport::Udp => format!("<sip:{};lr>", l.sent_by()),
        t => format!("<sip:{};transport={};lr>", l.sent_by(), t.param()),
    }
}

fn next_hop(uri: &str) -> Result<NextHop, Rejection> {
    let parsed = Uri::parse(uri).map_err(|_| Rejection::new(400, "Bad target URI"))?;
    let u = match parsed {
        Uri::Sip(u) => u,
        Uri::Tel(_) => {
            return Err(Rejection::new(
                404,
                "Not Found (no route for a tel: URI; add routing for it)",
            ))
        }
        Uri::Other { .. } => return Err(Rejection::new(416, "Unsupported URI Scheme")),
    };
    let host = u
        .param("maddr")
        .and_then(|m| crate::uri::parse_host(m).ok())
        .unwrap_or(u.host);
    let transport = match u.param("transport") {
        Some(t) => Some(Transport::from_token(t.as_bytes()).ok_or_else(|| {
            Rejection::new(
                503,
                format!("Service Unavailable (transport {t} not supported)"),
            )
        })?),
        None => None,
    };
    // Policy (RFC 5118 §4.9 leaves it to us): an IPv4-mapped IPv6 next hop is
    // reached over IPv4.
    let host = match host.ip() {
        Some(IpAddr::V6(v6)) => v6
            .to_ipv4_mapped()
            .map_or(host, |v4| Host::Ip(IpAddr::V4(v4))),
        _ => host,
    };
    Ok(NextHop {
        // Only names go to DNS; addresses need no text.
        host: match host {
            Host::Domain(d) => d.to_string(),
            Host::Ip(_) => String::new(),
        },
        ip: host.ip(),
        port: u.port,
        transport,
        sips: u.scheme == Scheme::Sips,
    })
}

/// The top Via, parsed leniently: enough to address a response even when its
/// parameters are broken (RFC 4475 `badinv01`).
fn lenient_top_via(msg: &Message) -> Option<Via<'_>> {
    let (_, v) = msg.list(HeaderName::Via).next()?;
    if let Ok(via) = Via::parse_any_version(v) {
        return Some(via);
    }
    let cut = v
        .iter()
        .position(|&b| b == b';' || b == b',')
        .unwrap_or(v.len());
    Via::parse_any_version(&v[..cut]).ok()
}

/// The top Via value with `received` (RFC 3261 §18.2.1) and `rport` (RFC 3581)
/// filled in from the source of the request.
fn stamp_via(via: &Via<'_>, flow: &Flow) -> Vec<u8> {
    let src = flow.remote;
    let mut out = Vec::with_capacity(96);
    out.extend_from_slice(b"SIP/2.0/");
    out.extend_from_slice(via.transport);
    out.push(b' ');
    out.extend_from_slice(via.host_text.as_bytes());
    if let Some(p) = via.port {
        out.push(b':');
        push_u16(&mut out, p);
    }
    let rport_asked = via.rport().is_some();
    for (name, value) in via.params.iter() {
        if name.eq_ignore_ascii_case(b"received")
            || (rport_asked && name.eq_ignore_ascii_case(b"rport"))
        {
            continue;
        }
        out.push(b';');
        out.extend_from_slice(name);
        if let Some(v) = value {
            out.push(b'=');
            out.extend_from_slice(v);
        }
    }
    let differs = via.host.ip() != Some(src.ip());
    if differs || rport_asked {
        out.extend_from_slice(b";received=");
        push_ip(&mut out, src.ip());
    } else if let Some(Some(v)) = via.params.get("received") {
        out.extend_from_slice(b";received=");
        out.extend_from_slice(v);
    }
    if rport_asked {
        out.extend_from_slice(b";rport=");
        push_u16(&mut out, src.port());
    }
    out
}

/// Where responses to a request received on `flow` go (§18.2.2, RFC 3581).
fn reply_peer(via: &Via<'_>, flow: &Flow) -> Peer {
    let remote = if flow.transport.is_reliable() || via.rport().is_some() {
        flow.remote
    } else {
        SocketAddr::new(flow.remote.ip(), via.port.unwrap_or(5060))
    };
    Peer {
        transport: flow.transport,
        local: flow.local,
        remote,
        conn: flow.conn,
        server_name: None,
    }
}

/// Where a response goes by a Via value that already carries received/rport.
fn via_peer(v: &[u8]) -> Option<(Transport, SocketAddr)> {
    let via = Via::parse(v).ok()?;
    let transport = Transport::from_token(via.transport)?;
    let ip = via.received().or(via.host.ip())?;
    if ip.is_unspecified() || ip.is_multicast() || ip == IpAddr::from([255, 255, 255, 255]) {
        return None;
    }
    let port = match via.rport() {
        Some(Some(p)) => p,
        _ => via.port.unwrap_or(5060),
    };
    Some((transport, SocketAddr::new(ip, port)))
}

/// The loop-detection hash (§16.6 step 8 with the RFC 5393 changes): the fields a
/// looping request keeps unchanged. The top Via is left out because on a loop it
/// is the previous hop's, not the original sender's.
fn loop_hash(msg: &Message, c: &Checked<'_>) -> u64 {
    let seq = c.cseq.seq.to_be_bytes();
    let mut parts: Vec<&[u8]> = Vec::with_capacity(8);
    parts.extend_from_slice(&[
        msg.request_uri_bytes(),
        c.from_tag,
        c.to_tag.unwrap_or_default(),
        msg.call_id().unwrap_or_default(),
        &seq,
    ]);
    for f in msg.fields_all() {
        if matches!(
            f.name,
            HeaderName::ProxyRequire | HeaderName::ProxyAuthorization | HeaderName::Route
        ) {
            parts.push(msg.value(f));
        }
    }
    fnv(&parts)
}

/// Writes an address the way Via parameters carry it (IPv6 without brackets),
/// without the formatting machinery (this is on every request's path).
fn push_ip(out: &mut Vec<u8>, ip: IpAddr) {
    match ip {
        IpAddr::V4(a) => {
            for (i, o) in a.octets().iter().enumerate() {
                if i > 0 {
                    out.push(b'.');
                }
                push_u16(out, u16::from(*o));
            }
        }
        IpAddr::V6(a) => {
            let _ = write!(out, "{a}");
        }
    }
}

fn push_u16(out: &mut Vec<u8>, v: u16) {
    let mut buf = [0u8; 5];
    let mut n = v;
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&buf[i..]);
}

fn push_hex16(out: &mut String, v: u64) {
    let mut buf = [0u8; 16];
    hex16(v, &mut buf);
    out.extend(buf.iter().map(|&b| b as char));
}

/// Writes `v` as 16 lower-case hex digits.
fn hex16(v: u64, out: &mut [u8]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for (i, o) in out.iter_mut().take(16).enumerate() {
        *o = HEX[((v >> (60 - 4 * i)) & 0xf) as usize];
    }
}

/// FNV-1a over several byte strings (with separators).
fn fnv(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for p in parts {
        for &b in p.iter().chain(std::iter::once(&0xff)) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    h
}

/// The best final response of §16.7 step 6: a 6xx if any; otherwise the lowest
/// class, preferring 401, 407, 415, 420 and 484 among 4xx.
fn best_response(finals: &mut Vec<Final>) -> Option<Final> {
    if finals.is_empty() {
        return None;
    }
    let rank = |f: &Final| -> (u16, u16) {
        let s = f.status();
        let class = if s >= 600 { 0 } else { s / 100 };
        let preferred = matches!(s, 401 | 407 | 415 | 420 | 484);
        (class, u16::from(!preferred))
    };
    let mut best = 0;
    for (i, f) in finals.iter().enumerate() {
        if rank(f) < rank(&finals[best]) {
            best = i;
        }
    }
    Some(finals.swap_remove(best))
}
