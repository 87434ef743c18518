//! The media relay's sockets: the shell around `weir-media`'s sans-IO
//! sessions, as the proxy loop is around the SIP core.
//!
//! Each relayed call holds an RTP and an RTCP socket per media line facing
//! each party. A worker thread ([`pump`], `[media] workers` of them) reads
//! what arrives, checks it (RTP or RTCP, well formed), asks the call's
//! session where it goes (latched source, strict afterwards) and sends it
//! from the socket facing the other party; packets never wait behind SIP
//! work. The proxy core asks for sessions through [`MediaRelay`] from its own
//! thread; a sweeper ends calls whose media stopped by telling the core,
//! which sends the BYEs.

mod pump;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use rand::rngs::OsRng;
use rand::RngCore;
use std::net::UdpSocket;
use tokio::sync::mpsc;
use tracing::{debug, info, warn};
use weir_media::ports::PortPool;
use weir_media::relay::{Refused, Session, Side, StreamReport};
use weir_media::stats::Report;
use weir_sip::proxy::{MediaCall, MediaMode, MediaRefusal, MediaRelay, Party};

use crate::config::MediaSettings;
use crate::transport::Input;

/// A call that never got an answer is let go after this long (the core ends
/// every INVITE sooner: Timer C and the transaction timers).
const UNANSWERED_LIMIT: Duration = Duration::from_secs(15 * 60);

/// What the relay did, for `/metrics`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MediaStats {
    pub sessions: usize,
    pub ports_in_use: usize,
    pub packets: u64,
    pub bytes: u64,
    /// From a source other than the latched one (or before the other party's
    /// address was known).
    pub dropped_source: u64,
    /// Not RTP or RTCP.
    pub malformed: u64,
    pub send_errors: u64,
    /// SRTP/SRTCP that failed authentication or was replayed.
    pub srtp_refused: u64,
    /// In calls that ended (so the counts only grow: a late packet can still
    /// lower a live call's loss): RTP packets lost on the way to the relay
    /// (by sequence numbers), and packets whose payload type was renumbered.
    pub lost: u64,
    pub payload_types_mapped: u64,
}

impl MediaStats {
    fn add_streams(&mut self, streams: &[StreamReport]) {
        for r in streams.iter().flat_map(|s| [s.from_a, s.from_b]) {
            self.lost += r.lost;
            self.payload_types_mapped += r.payload_types_mapped;
        }
    }
}

/// One relayed call as the admin API shows it.
#[derive(Debug, Clone)]
pub struct CallReport {
    /// The relayed dialog's id and its SIP Call-ID.
    pub id: u64,
    pub call_id: String,
    pub answered: bool,
    pub on_hold: bool,
    /// The leg whose SRTP the relay terminates.
    pub srtp_leg: Option<&'static str>,
    pub age: Duration,
    /// Since the last packet relayed (to within the sweeper's second).
    pub quiet: Duration,
    pub dropped_source: u64,
    pub malformed: u64,
    pub srtp_refused: u64,
    pub streams: Vec<StreamReport>,
}

impl CallReport {
    /// As JSON: per stream, each party's address and what it sent.
    pub fn to_json(&self) -> serde_json::Value {
        use serde_json::json;
        let party = |addr: Option<SocketAddr>, port: u16, r: &Report| {
            json!({
                "address": addr.map(|a| a.to_string()),
                "relay_port": port,
                "sent": {
                    "packets": r.packets,
                    "bytes": r.bytes,
                    "rtcp_packets": r.rtcp_packets,
                    "dtmf_packets": r.dtmf_packets,
                    "ssrc": r.ssrc,
                    "ssrc_changes": r.ssrc_changes,
                    "expected": r.expected,
                    "lost": r.lost,
                    "jitter_ms": (r.jitter_ms * 1000.0).round() / 1000.0,
                    "payload_types_mapped": r.payload_types_mapped,
                },
            })
        };
        let streams: Vec<serde_json::Value> = self
            .streams
            .iter()
            .map(|s| {
                json!({
                    "kind": s.kind,
                    "caller": party(s.a, s.facing_a, &s.from_a),
                    "callee": party(s.b, s.facing_b, &s.from_b),
                })
            })
            .collect();
        json!({
            "id": self.id,
            "call_id": self.call_id,
            "answered": self.answered,
            "on_hold": self.on_hold,
            "srtp_leg": self.srtp_leg,
            "age_s": self.age.as_secs(),
            "quiet_s": self.quiet.as_secs(),
            "dropped_source": self.dropped_source,
            "malformed": self.malformed,
            "srtp_refused": self.srtp_refused,
            "streams": streams,
        })
    }
}

/// One call's packet counters (read by the sweeper, written by the pumps).
#[derive(Debug, Default)]
struct Counters {
    packets: AtomicU64,
    bytes: AtomicU64,
    dropped: AtomicU64,
    malformed: AtomicU64,
    send_errors: AtomicU64,
    srtp_refused: AtomicU64,
}

impl Counters {
    fn add_to(&self, s: &mut MediaStats) {
        s.packets += self.packets.load(Relaxed);
        s.bytes += self.bytes.load(Relaxed);
        s.dropped_source += self.dropped.load(Relaxed);
        s.malformed += self.malformed.load(Relaxed);
        s.send_errors += self.send_errors.load(Relaxed);
        s.srtp_refused += self.srtp_refused.load(Relaxed);
    }
}

struct Call {
    /// The SIP Call-ID, for logs and the admin API.
    call_id: String,
    /// The worker thread its sockets are read on.
    worker: usize,
    state: Mutex<CallState>,
    counters: Counters,
}

struct CallState {
    session: Session,
    /// Each relay port's socket and its registration with the worker.
    sockets: HashMap<u16, (Arc<UdpSocket>, pump::Token)>,
    created: Instant,
    answered_at: Option<Instant>,
    /// Packets counted at the last sweep, and since when that count stood.
    seen: u64,
    quiet_since: Instant,
    /// Reported to the core as timed out; its release is on the way.
    ending: bool,
}

struct Table {
    pool: PortPool,
    calls: HashMap<u64, Arc<Call>>,
    /// Counters of calls already released.
    retired: MediaStats,
}

/// Sockets of pairs the pool handed out, bound and waiting to be opened.
type Bound = Arc<Mutex<HashMap<u16, (std::net::UdpSocket, std::net::UdpSocket)>>>;

struct Shared {
    settings: MediaSettings,
    bound: Bound,
    workers: pump::Workers,
    table: Mutex<Table>,
}

/// The relay the proxy core uses (see the module doc).
#[derive(Clone)]
pub struct Relay {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Relay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Relay").finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn refusal(status: u16, reason: impl Into<String>) -> MediaRefusal {
    MediaRefusal {
        status,
        reason: reason.into(),
    }
}

impl Relay {
    /// A relay whose packets move on `[media] workers` threads of its own;
    /// calls whose media stops are reported on `timeouts` (by a task of the
    /// calling tokio runtime).
    pub fn start(settings: MediaSettings, timeouts: mpsc::Sender<Input>) -> Result<Relay, String> {
        let (first, last) = settings.port_range;
        let mut pool =
            PortPool::new(first, last).map_err(|e| format!("[media] port_range: {e}"))?;
        // A pair is handed out only once both of its sockets are bound here
        // (another program may hold a port of the range); they wait in
        // `bound` until the call opens them.
        let bound: Bound = Arc::default();
        let address = settings.address;
        let stash = bound.clone();
        pool.set_probe(Box::new(move |rtp_port| {
            let mut stash = lock(&stash);
            if stash.contains_key(&rtp_port) {
                return true;
            }
            let bind = |p: u16| std::net::UdpSocket::bind(SocketAddr::new(address, p));
            match (bind(rtp_port), bind(rtp_port + 1)) {
                (Ok(rtp), Ok(rtcp)) => {
                    stash.insert(rtp_port, (rtp, rtcp));
                    true
                }
                (Err(e), _) | (_, Err(e)) => {
                    debug!(port = rtp_port, error = %e, "relay port pair skipped: in use");
                    false
                }
            }
        }));
        let workers = pump::Workers::start(settings.workers)
            .map_err(|e| format!("cannot start the media workers: {e}"))?;
        let shared = Arc::new(Shared {
            settings,
            bound,
            workers,
            table: Mutex::new(Table {
                pool,
                calls: HashMap::new(),
                retired: MediaStats::default(),
            }),
        });
        tokio::spawn(sweep(Arc::downgrade(&shared), timeouts));
        Ok(Relay { shared })
    }

    /// Totals so far and what is live now.
    pub fn stats(&self) -> MediaStats {
        let (mut s, calls) = {
            let t = lock(&self.shared.table);
            let mut s = t.retired;
            s.sessions = t.calls.len();
            s.ports_in_use = t.pool.in_use() * 2;
            (s, t.calls.values().cloned().collect::<Vec<_>>())
        };
        for c in calls {
            c.counters.add_to(&mut s);
        }
        s
    }

    /// The relayed calls, oldest first (at most `limit`), or those of one
    /// SIP Call-ID.
    pub fn calls(&self, call_id: Option<&str>, limit: usize) -> Vec<CallReport> {
        let calls: Vec<(u64, Arc<Call>)> = lock(&self.shared.table)
            .calls
            .iter()
            .filter(|(_, c)| call_id.is_none_or(|id| c.call_id == id))
            .map(|(id, c)| (*id, c.clone()))
            .collect();
        let now = Instant::now();
        let mut out: Vec<CallReport> = calls
            .into_iter()
            .map(|(id, c)| report(id, &c, now))
            .collect();
        out.sort_by_key(|r| std::cmp::Reverse(r.age));
        out.truncate(limit);
        out
    }

    /// Has the call's worker read every port its session needs, and closes
    /// the sockets of ports it no longer needs (a released or withdrawn line,
    /// RTCP now multiplexed: see `Session::sockets`). A pair the pool has
    /// just handed out comes bound (see `bound`); a port opened again is
    /// bound anew. On an error, the port that failed.
    fn sync_sockets(
        &self,
        call: &Arc<Call>,
        st: &mut CallState,
    ) -> Result<(), (u16, std::io::Error)> {
        let wanted = st.session.sockets();
        st.sockets.retain(|port, (_, token)| {
            let keep = wanted.contains(port);
            if !keep {
                self.shared.workers.remove(*token);
            }
            keep
        });
        let bind = |p: u16| UdpSocket::bind(SocketAddr::new(self.shared.settings.address, p));
        for &port in &wanted {
            if st.sockets.contains_key(&port) {
                continue;
            }
            let sock = match lock(&self.shared.bound).remove(&(port & !1)) {
                Some((rtp, rtcp)) if port % 2 == 0 => {
                    // Its RTCP partner, when needed, is opened next.
                    if wanted.contains(&(port + 1)) && !st.sockets.contains_key(&(port + 1)) {
                        self.register(call, st, port + 1, rtcp)
                            .map_err(|e| (port + 1, e))?;
                    }
                    rtp
                }
                Some((_, rtcp)) => rtcp,
                None => match bind(port) {
                    Ok(sock) => sock,
                    // An RTCP port opened again (RTCP no longer
                    // multiplexed) that another program took meanwhile:
                    // that leg's RTCP is lost, its call goes on.
                    Err(e) if port % 2 == 1 => {
                        warn!(call_id = %call.call_id, port, error = %e, "relay RTCP port cannot be bound again: its RTCP is lost");
                        continue;
                    }
                    Err(e) => return Err((port, e)),
                },
            };
            self.register(call, st, port, sock).map_err(|e| (port, e))?;
        }
        Ok(())
    }

    fn register(
        &self,
        call: &Arc<Call>,
        st: &mut CallState,
        port: u16,
        sock: UdpSocket,
    ) -> std::io::Result<()> {
        sock.set_nonblocking(true)?;
        let sock = Arc::new(sock);
        let token =
            self.shared
                .workers
                .add(call.worker, sock.clone(), port, Arc::downgrade(call))?;
        st.sockets.insert(port, (sock, token));
        Ok(())
    }
}

impl MediaRelay for Relay {
    fn describe(&mut self, call: &MediaCall<'_>, sdp: &[u8]) -> Result<Vec<u8>, MediaRefusal> {
        let side = match call.from {
            Party::Caller => Side::A,
            Party::Callee => Side::B,
        };
        let mut table = lock(&self.shared.table);
        let (entry, new) = match table.calls.get(&call.id) {
            Some(c) => (c.clone(), false),
            None => {
                if table.calls.len() >= self.shared.settings.max_sessions {
                    return Err(refusal(
                        503,
                        "Service Unavailable (relayed calls at their limit)",
                    ));
                }
                let now = Instant::now();
                let mut session = Session::new(self.shared.settings.advertise);
                let srtp_leg = match call.mode {
                    MediaMode::RelaySrtpCaller => Some(Side::A),
                    MediaMode::RelaySrtpCallee => Some(Side::B),
                    MediaMode::Relay | MediaMode::Pass => None,
                };
                if let Some(side) = srtp_leg {
                    // The relay's SDES keys come from the OS's CSPRNG.
                    session.terminate_srtp(side, Box::new(|b| OsRng.fill_bytes(b)));
                    session.offer_srtp_suite(self.shared.settings.srtp_suite);
                }
                let c = Arc::new(Call {
                    call_id: String::from_utf8_lossy(call.call_id).into_owned(),
                    worker: self.shared.workers.pick(),
                    state: Mutex::new(CallState {
                        session,
                        sockets: HashMap::new(),
                        created: now,
                        answered_at: None,
                        seen: 0,
                        quiet_since: now,
                        ending: false,
                    }),
                    counters: Counters::default(),
                });
                (c, true)
            }
        };
        let mut st = lock(&entry.state);
        let out = st
            .session
            .describe(&mut table.pool, side, sdp, call.signalled_from, call.repeat)
            .map_err(|e| {
                let (status, reason) = e.sip_status();
                refusal(status, reason)
            })?;
        if let Err((port, e)) = self.sync_sockets(&entry, &mut st) {
            warn!(port, error = %e, "relay port cannot be bound");
            // Nothing of the refused description stays: a new call is gone,
            // a re-offer withdrawn (its new ports back; on glare the first
            // offer goes too: the second was refused, so both will be). An
            // answer's (RTCP no longer multiplexed) leaves the call as it is:
            // its RTCP port stays closed.
            if new {
                st.session.release(&mut table.pool);
            } else {
                st.session.withdraw(&mut table.pool, side);
            }
            let _ = self.sync_sockets(&entry, &mut st);
            return Err(refusal(
                503,
                format!("Service Unavailable (relay port {port}: {e})"),
            ));
        }
        if st.session.answered && st.answered_at.is_none() {
            st.answered_at = Some(Instant::now());
        }
        drop(st);
        if new {
            table.calls.insert(call.id, entry);
        }
        Ok(out)
    }

    fn release(&mut self, id: u64) {
        let mut table = lock(&self.shared.table);
        let Some(call) = table.calls.remove(&id) else {
            return;
        };
        let mut st = lock(&call.state);
        let streams = st.session.report();
        st.session.release(&mut table.pool);
        let _ = self.sync_sockets(&call, &mut st);
        drop(st);
        call.counters.add_to(&mut table.retired);
        table.retired.add_streams(&streams);
        drop(table);
        log_ended(&call, &streams);
    }

    fn withdraw(&mut self, id: u64, from: Party) {
        let side = match from {
            Party::Caller => Side::A,
            Party::Callee => Side::B,
        };
        let mut table = lock(&self.shared.table);
        let Some(call) = table.calls.get(&id).cloned() else {
            return;
        };
        let mut st = lock(&call.state);
        if st.session.withdraw(&mut table.pool, side) {
            if let Err((port, e)) = self.sync_sockets(&call, &mut st) {
                warn!(call_id = %call.call_id, port, error = %e, "relay port cannot be bound again");
            }
            debug!(call_id = %call.call_id, "relayed media: a refused offer withdrawn");
        }
    }
}

fn report(id: u64, call: &Call, now: Instant) -> CallReport {
    let c = &call.counters;
    let st = lock(&call.state);
    CallReport {
        id,
        call_id: call.call_id.clone(),
        answered: st.session.answered,
        on_hold: st.session.on_hold(),
        srtp_leg: st.session.srtp_leg().map(|s| match s {
            Side::A => "caller",
            Side::B => "callee",
        }),
        age: now.saturating_duration_since(st.created),
        quiet: now.saturating_duration_since(st.quiet_since),
        dropped_source: c.dropped.load(Relaxed),
        malformed: c.malformed.load(Relaxed),
        srtp_refused: c.srtp_refused.load(Relaxed),
        streams: st.session.report(),
    }
}

/// One line per stream when a relayed call ends: what each way carried.
fn log_ended(call: &Call, streams: &[StreamReport]) {
    let c = &call.counters;
    for (i, s) in streams.iter().enumerate() {
        let (a, b) = (&s.from_a, &s.from_b);
        info!(
            call_id = %call.call_id,
            stream = i,
            kind = %s.kind,
            caller_packets = a.packets,
            caller_lost = a.lost,
            caller_jitter_ms = format_args!("{:.2}", a.jitter_ms),
            caller_dtmf = a.dtmf_packets,
            caller_renumbered = a.payload_types_mapped,
            callee_packets = b.packets,
            callee_lost = b.lost,
            callee_jitter_ms = format_args!("{:.2}", b.jitter_ms),
            callee_dtmf = b.dtmf_packets,
            callee_renumbered = b.payload_types_mapped,
            dropped_source = c.dropped.load(Relaxed),
            "relayed media ended"
        );
    }
}

/// Relays `packet`, which arrived on relay port `port` from `from`; `buf` is
/// the worker's, for the packet as it leaves (SRTP added or removed in place).
fn forward(call: &Call, port: u16, packet: &[u8], from: SocketAddr, buf: &mut Vec<u8>) {
    let c = &call.counters;
    let now = Instant::now();
    buf.clear();
    buf.extend_from_slice(packet);
    let (route, out) = {
        let mut st = lock(&call.state);
        match st.session.forward(now, port, from, buf) {
            Ok(route) => {
                let out = st.sockets.get(&route.from_port).map(|s| s.0.clone());
                (route, out)
            }
            Err(Refused::Source) => {
                drop(st);
                c.dropped.fetch_add(1, Relaxed);
                return;
            }
            Err(Refused::Malformed(_)) => {
                drop(st);
                c.malformed.fetch_add(1, Relaxed);
                return;
            }
            Err(Refused::Srtp(e)) => {
                drop(st);
                if c.srtp_refused.fetch_add(1, Relaxed) == 0 {
                    debug!(port, %from, error = %e, len = packet.len(), "SRTP refused (the call's first)");
                }
                return;
            }
        }
    };
    let Some(out) = out else {
        c.send_errors.fetch_add(1, Relaxed);
        return;
    };
    match out.send_to(buf, route.to) {
        Ok(_) => {
            c.packets.fetch_add(1, Relaxed);
            c.bytes.fetch_add(buf.len() as u64, Relaxed);
        }
        Err(_) => {
            c.send_errors.fetch_add(1, Relaxed);
        }
    }
}

/// Once a second: calls whose media stopped (answered, no packet for
/// `[media] timeout`, or `hold_timeout` on hold) or that were never answered
/// are reported to the core.
async fn sweep(shared: std::sync::Weak<Shared>, timeouts: mpsc::Sender<Input>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(shared) = shared.upgrade() else {
            return;
        };
        let (timeout, hold_timeout) = (shared.settings.timeout, shared.settings.hold_timeout);
        let calls: Vec<(u64, Arc<Call>)> = lock(&shared.table)
            .calls
            .iter()
            .map(|(id, c)| (*id, c.clone()))
            .collect();
        drop(shared);
        let now = Instant::now();
        let mut ended = Vec::new();
        for (id, call) in calls {
            // Relayed packets only: injected ones must not keep a call alive.
            let n = call.counters.packets.load(Relaxed);
            let mut st = lock(&call.state);
            if n != st.seen {
                st.seen = n;
                st.quiet_since = now;
            }
            if st.ending {
                continue;
            }
            // On hold silence is expected: a longer wait.
            let limit = if st.session.on_hold() {
                hold_timeout
            } else {
                timeout
            };
            let over = match st.answered_at {
                Some(at) => now.saturating_duration_since(st.quiet_since.max(at)) >= limit,
                None => now.saturating_duration_since(st.created) >= UNANSWERED_LIMIT,
            };
            if over {
                st.ending = true;
                ended.push(id);
            }
        }
        for id in ended {
            if timeouts.send(Input::MediaTimeout { id }).await.is_err() {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use weir_media::relay::Repeat;
    use weir_sip::proxy::MediaPolicy;

    fn sdp(port: u16, video: Option<u16>) -> Vec<u8> {
        let mut s = format!(
            "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n\
m=audio {port} RTP/AVP 0\r\n"
        );
        if let Some(v) = video {
            s.push_str(&format!(
                "m=video {v} RTP/AVP 96\r\na=rtpmap:96 VP8/90000\r\n"
            ));
        }
        s.into_bytes()
    }

    fn call(from: Party, repeat: Repeat) -> MediaCall<'static> {
        MediaCall {
            id: 1,
            call_id: b"withdrawn",
            from,
            mode: MediaMode::Relay,
            signalled_from: None,
            repeat,
        }
    }

    fn bindable(port: u16) -> bool {
        UdpSocket::bind(("127.0.0.1", port)).is_ok()
    }

    /// A relay on `ports` of 127.0.0.1 with one worker, and Alice's and
    /// Bob's media sockets (Bob's reads time out after 2 s).
    fn relay_between(ports: (u16, u16)) -> (Relay, UdpSocket, UdpSocket) {
        let settings = MediaSettings {
            policy: MediaPolicy::Always,
            port_range: ports,
            address: "127.0.0.1".parse().unwrap(),
            advertise: "127.0.0.1".parse().unwrap(),
            timeout: Duration::from_secs(60),
            hold_timeout: Duration::from_secs(600),
            max_sessions: 10,
            workers: 1,
            srtp_over_plain_sip: false,
            srtp_suite: weir_media::crypto::Suite::AesCm128HmacSha1_80,
        };
        let (tx, _rx) = mpsc::channel(4);
        let relay = Relay::start(settings, tx).unwrap();
        let alice = UdpSocket::bind("127.0.0.1:0").unwrap();
        let bob = UdpSocket::bind("127.0.0.1:0").unwrap();
        bob.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        (relay, alice, bob)
    }

    #[tokio::test]
    async fn a_withdrawn_offer_closes_the_sockets_it_opened_and_media_goes_on() {
        let (mut relay, alice, bob) = relay_between((41_200, 41_239));
        let (a, b) = (alice.local_addr().unwrap(), bob.local_addr().unwrap());
        relay
            .describe(&call(Party::Caller, Repeat::Offer), &sdp(a.port(), None))
            .unwrap();
        let to_alice = relay
            .describe(&call(Party::Callee, Repeat::Maybe), &sdp(b.port(), None))
            .unwrap();
        let facing_a = weir_media::sdp::inspect(&to_alice).unwrap().media[0].port;
        assert_eq!(relay.stats().ports_in_use, 4);

        // Alice adds video; Bob refuses (488).
        let to_bob = relay
            .describe(
                &call(Party::Caller, Repeat::Offer),
                &sdp(a.port(), Some(a.port() + 2)),
            )
            .unwrap();
        let video = weir_media::sdp::inspect(&to_bob).unwrap().media[1].port;
        assert_eq!(relay.stats().ports_in_use, 8);
        assert!(!bindable(video), "the video port is open");
        relay.withdraw(1, Party::Callee);
        assert_eq!(relay.stats().ports_in_use, 8, "Bob made no offer");
        relay.withdraw(1, Party::Caller);
        assert_eq!(relay.stats().ports_in_use, 4);
        assert!(
            bindable(video) && bindable(video + 1),
            "its sockets are closed"
        );

        // The audio still flows, Alice to Bob.
        let mut rtp = vec![0x80, 0, 0, 1, 0, 0, 0, 160, 0, 0, 0, 9];
        rtp.extend_from_slice(&[0xff; 160]);
        alice.send_to(&rtp, ("127.0.0.1", facing_a)).unwrap();
        let mut buf = [0u8; 512];
        let (n, _) = bob.recv_from(&mut buf).unwrap();
        assert_eq!(&buf[..n], &rtp[..]);
        relay.release(1);
        assert_eq!(relay.stats().ports_in_use, 0);
    }

    #[tokio::test]
    async fn rtcp_sockets_close_once_both_parties_multiplex() {
        let (mut relay, alice, bob) = relay_between((41_240, 41_279));
        let (a, b) = (alice.local_addr().unwrap(), bob.local_addr().unwrap());
        let mux = |port: u16| {
            let mut s = sdp(port, None);
            s.extend_from_slice(b"a=rtcp-mux\r\n");
            s
        };
        let to_bob = relay
            .describe(&call(Party::Caller, Repeat::Offer), &mux(a.port()))
            .unwrap();
        let facing_b = weir_media::sdp::inspect(&to_bob).unwrap().media[0].port;
        assert!(!bindable(facing_b + 1), "open until the answer");
        let to_alice = relay
            .describe(&call(Party::Callee, Repeat::Maybe), &mux(b.port()))
            .unwrap();
        let facing_a = weir_media::sdp::inspect(&to_alice).unwrap().media[0].port;
        assert!(bindable(facing_a + 1) && bindable(facing_b + 1), "closed");
        assert_eq!(relay.stats().ports_in_use, 4, "still reserved");
        // RTP, then RTCP on the RTP port, reach Bob.
        let mut rtp = vec![0x80, 0, 0, 1, 0, 0, 0, 160, 0, 0, 0, 9];
        rtp.extend_from_slice(&[0xff; 160]);
        let rr = [0x80u8, 201, 0, 1, 0, 0, 0, 9];
        let mut buf = [0u8; 512];
        for p in [&rtp[..], &rr[..]] {
            alice.send_to(p, ("127.0.0.1", facing_a)).unwrap();
            let (n, from) = bob.recv_from(&mut buf).unwrap();
            assert_eq!((&buf[..n], from.port()), (p, facing_b));
        }
        // A re-offer without rtcp-mux opens them again.
        relay
            .describe(&call(Party::Caller, Repeat::Offer), &sdp(a.port(), None))
            .unwrap();
        assert!(!bindable(facing_a + 1) && !bindable(facing_b + 1));
        relay.release(1);
        // (The worker drops its handle on the last packet's socket a moment
        // after sending it.)
        let closed = |p: u16| {
            (0..100).any(|_| {
                std::thread::sleep(Duration::from_millis(10));
                bindable(p)
            })
        };
        assert!(closed(facing_a) && closed(facing_a + 1));
    }
}
