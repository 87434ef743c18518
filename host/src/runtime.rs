//! The proxy loop: the one task that owns the sans-IO [`Proxy`], feeds it socket
//! input, DNS answers and the clock, and carries out what it asks for.
//!
//! UDP is read here, in the loop itself, until the sockets run dry: no task or
//! channel hop per datagram. Stream connections and DNS run as tasks that send
//! their results over a channel.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tracing::{debug, info, warn};
use weir_sip::proxy::{ConnId, Event, Flow, Proxy, Router, Transmit, Transport};

use crate::config::Config;
use crate::transport::{self, ConnHandle, Input, Limits, Out, StreamSettings, TlsClient};
use rustls_pki_types::ServerName;

/// Open connections, by id and by transport and peer address (for reuse: a
/// request to a peer goes on the connection already open to it, whichever
/// side opened it).
#[derive(Debug, Default)]
struct Conns {
    by_id: HashMap<ConnId, ConnHandle>,
    by_remote: HashMap<(Transport, SocketAddr), ConnId>,
}

/// Binds every listener and runs the proxy until `shutdown` resolves.
/// The proxy's counters as last published by the loop (about once a second),
/// for `/metrics`.
pub type SharedStats = Arc<std::sync::Mutex<Published>>;

/// What the loop publishes for the admin API about once a second.
#[derive(Debug, Default)]
pub struct Published {
    pub stats: weir_sip::proxy::Stats,
    pub registrations: Vec<weir_sip::proxy::RegistrationStatus>,
    /// None when the relay is off.
    pub media: Option<crate::media::MediaStats>,
    /// The relay itself, for per-call reports (None when off).
    pub relay: Option<crate::media::Relay>,
}

pub async fn run(
    cfg: Config,
    router: Box<dyn Router>,
    stats_out: SharedStats,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), String> {
    let (tx, mut rx) = mpsc::channel::<Input>(16 * 1024);
    let settings = StreamSettings {
        max_message: cfg.max_message_size,
        idle_timeout: cfg.tcp_idle_timeout,
        connect_timeout: cfg.tcp_connect_timeout,
        max_connections: cfg.max_connections,
        max_per_source: cfg.max_connections_per_source,
        handshake_timeout: cfg.tls.handshake_timeout,
    };
    let (tls_client, roots) = crate::tls::client_config(cfg.tls.ca_file.as_deref())
        .map_err(|e| format!("[tls] ca_file: {e}"))?;
    if roots == 0 {
        warn!("no trusted CA found (system roots empty, no [tls] ca_file): outbound TLS will fail");
    }
    let tls_acceptor = match &cfg.tls.certificate {
        Some((cert, key)) if cfg.listen.iter().any(|(t, _)| *t == Transport::Tls) => {
            let store = Arc::new(
                crate::tls::CertStore::load(cert, key)
                    .map_err(|e| format!("[tls] certificate: {e}"))?,
            );
            let server = store
                .server_config()
                .map_err(|e| format!("[tls] certificate: {e}"))?;
            tokio::spawn(watch_certificate(store));
            Some(tokio_rustls::TlsAcceptor::from(server))
        }
        _ => None,
    };
    let limits = Arc::new(Limits::default());
    let mut udp: HashMap<SocketAddr, Arc<UdpSocket>> = HashMap::new();
    for &(t, addr) in &cfg.listen {
        match t {
            Transport::Udp => {
                let sock = transport::bind_udp(addr, cfg.udp_receive_buffer)
                    .map_err(|e| format!("cannot listen on udp:{addr}: {e}"))?;
                udp.insert(addr, Arc::new(sock));
            }
            Transport::Tcp | Transport::Tls => {
                let l = transport::bind_tcp(addr)
                    .map_err(|e| format!("cannot listen on {}:{addr}: {e}", t.param()))?;
                let tls = match t {
                    Transport::Tls => {
                        Some(tls_acceptor.clone().ok_or("[tls] certificate is not set")?)
                    }
                    _ => None,
                };
                tokio::spawn(transport::stream_acceptor(
                    l,
                    tls,
                    tx.clone(),
                    limits.clone(),
                    settings.clone(),
                ));
            }
        }
        info!(transport = t.param(), %addr, "listening");
    }
    let seed = rand::random::<u64>();
    let mut proxy = Proxy::new(cfg.proxy_config(), router, seed);
    let relay = match &cfg.media {
        Some(m) => {
            info!(
                address = %m.address,
                advertise = %m.advertise,
                ports = %format!("{}-{}", m.port_range.0, m.port_range.1),
                mode = ?m.policy,
                "media relay ready"
            );
            let relay = crate::media::Relay::start(m.clone(), tx.clone())?;
            proxy.set_media(Box::new(relay.clone()));
            Some(relay)
        }
        None => {
            info!("media relay off: SDP passes untouched");
            None
        }
    };
    proxy.start_registrations(std::time::Instant::now());
    let mut conns = Conns::default();
    let mut shell = Shell {
        udp,
        tx,
        limits,
        settings,
        tls: tokio_rustls::TlsConnector::from(tls_client),
    };
    // The signal is watched by its own task so that a loop that is never idle
    // (sustained load) still sees it: the loop yields now and then and checks.
    let stop = Arc::new(tokio::sync::Notify::new());
    let stopped = Arc::new(std::sync::atomic::AtomicBool::new(false));
    {
        let (stop, stopped) = (stop.clone(), stopped.clone());
        tokio::spawn(async move {
            shutdown.await;
            stopped.store(true, std::sync::atomic::Ordering::Relaxed);
            stop.notify_one();
        });
    }
    let sockets: Vec<(SocketAddr, Arc<UdpSocket>)> =
        shell.udp.iter().map(|(a, s)| (*a, s.clone())).collect();
    let mut buf = vec![0u8; 65_536];
    let mut last_report = std::time::Instant::now();
    // Published on the first round, then every second.
    let mut last_publish = std::time::Instant::now()
        .checked_sub(Duration::from_secs(2))
        .unwrap_or_else(std::time::Instant::now);
    let mut last_stats = proxy.stats();
    let mut busy_rounds = 0u32;
    loop {
        if stopped.load(std::sync::atomic::Ordering::Relaxed) {
            info!("shutting down");
            log_stats(&proxy.stats());
            break;
        }
        if last_publish.elapsed() >= Duration::from_secs(1) {
            last_publish = std::time::Instant::now();
            let published = Published {
                stats: proxy.stats(),
                registrations: proxy.registrations(last_publish),
                media: relay.as_ref().map(crate::media::Relay::stats),
                relay: relay.clone(),
            };
            *stats_out.lock().unwrap_or_else(|p| p.into_inner()) = published;
        }
        if last_report.elapsed() >= Duration::from_secs(60) {
            last_report = std::time::Instant::now();
            let stats = proxy.stats();
            if stats != last_stats {
                log_stats(&stats);
                last_stats = stats;
            }
        }
        // Take everything that is ready, a bounded batch at a time, then flush.
        let mut took = 0;
        for (local, sock) in &sockets {
            while took < 512 {
                match sock.try_recv_from(&mut buf) {
                    Ok((n, remote)) => {
                        took += 1;
                        let flow = Flow {
                            transport: Transport::Udp,
                            local: *local,
                            remote,
                            conn: None,
                        };
                        proxy.handle_input(
                            std::time::Instant::now(),
                            flow,
                            Bytes::copy_from_slice(&buf[..n]),
                        );
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    // ICMP errors from earlier sends surface here on Linux.
                    Err(e) => debug!(%local, error = %e, "udp receive error"),
                }
            }
        }
        while took < 1024 {
            match rx.try_recv() {
                Ok(input) => {
                    took += 1;
                    shell.handle(&mut proxy, &mut conns, input);
                }
                Err(_) => break,
            }
        }
        if proxy
            .poll_timeout()
            .is_some_and(|d| d <= std::time::Instant::now())
        {
            proxy.handle_timeout(std::time::Instant::now());
        }
        shell.flush(&mut proxy, &mut conns);
        if took > 0 {
            busy_rounds += 1;
            if busy_rounds % 64 == 0 {
                // Let connection, DNS and signal tasks run.
                tokio::task::yield_now().await;
            }
            continue;
        }
        let deadline = proxy.poll_timeout();
        tokio::select! {
            () = any_readable(&sockets) => {}
            input = rx.recv() => {
                let Some(input) = input else { break };
                shell.handle(&mut proxy, &mut conns, input);
            }
            () = sleep_until(deadline) => {
                proxy.handle_timeout(std::time::Instant::now());
            }
            () = stop.notified() => {}
        }
        shell.flush(&mut proxy, &mut conns);
    }
    Ok(())
}

/// Checks the listeners' certificate files every second (new handshakes get a
/// new pair within about a second of it appearing; a broken one is reported
/// once and the old pair serves on).
async fn watch_certificate(store: Arc<crate::tls::CertStore>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        match store.reload_if_changed() {
            Ok(true) => info!("TLS certificate reloaded: new connections get the new one"),
            Ok(false) => {}
            Err(e) => {
                warn!(error = %e, "TLS certificate not reloaded: the previous one keeps serving")
            }
        }
    }
}

/// One line of counters: what was handled, dropped, rejected, and what is live.
fn log_stats(s: &weir_sip::proxy::Stats) {
    info!(
        requests = s.requests_in,
        responses = s.responses_in,
        dropped_malformed = s.dropped_malformed,
        rejected = s.rejected,
        retransmissions_absorbed = s.retransmissions_absorbed,
        forwarded_requests = s.forwarded_requests,
        forwarded_responses = s.forwarded_responses,
        stray_forwarded = s.stray_responses_forwarded,
        stray_dropped = s.stray_responses_dropped,
        failovers = s.failovers,
        loops = s.loops_detected,
        refused_sources = s.refused_sources,
        refused_banned = s.refused_banned,
        challenges_sent = s.challenges_sent,
        callers_verified = s.callers_verified,
        caller_auth_failures = s.caller_auth_failures,
        challenges_answered = s.challenges_answered,
        live_server_transactions = s.live_server_transactions,
        live_client_transactions = s.live_client_transactions,
        live_contexts = s.live_contexts,
        "stats"
    );
}

/// Resolves when any UDP socket has something to read.
async fn any_readable(sockets: &[(SocketAddr, Arc<UdpSocket>)]) {
    std::future::poll_fn(|cx| {
        for (_, s) in sockets {
            if s.poll_recv_ready(cx).is_ready() {
                return std::task::Poll::Ready(());
            }
        }
        std::task::Poll::Pending
    })
    .await
}

async fn sleep_until(deadline: Option<std::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(tokio::time::Instant::from_std(d)).await,
        None => std::future::pending().await,
    }
}

struct Shell {
    udp: HashMap<SocketAddr, Arc<UdpSocket>>,
    tx: mpsc::Sender<Input>,
    limits: Arc<Limits>,
    settings: StreamSettings,
    /// Outbound TLS (roots from `[tls] ca_file` or the system).
    tls: tokio_rustls::TlsConnector,
}

impl Shell {
    fn handle(&mut self, proxy: &mut Proxy, conns: &mut Conns, input: Input) {
        let now = std::time::Instant::now();
        match input {
            Input::Message { flow, bytes } => proxy.handle_input(now, flow, bytes),
            Input::Resolved { id, result } => proxy.handle_resolved(now, id, result),
            Input::MediaTimeout { id } => proxy.handle_media_timeout(now, id),
            Input::ConnOpened(h) => {
                conns.by_remote.insert((h.transport, h.remote), h.id);
                conns.by_id.insert(h.id, h);
            }
            Input::ConnClosed { id, failed } => {
                if let Some(h) = conns.by_id.remove(&id) {
                    let key = (h.transport, h.remote);
                    if conns.by_remote.get(&key) == Some(&id) {
                        conns.by_remote.remove(&key);
                    }
                }
                for tag in failed {
                    proxy.handle_send_error(now, tag);
                }
            }
        }
    }

    /// Carries out every transmit and event the proxy produced.
    fn flush(&mut self, proxy: &mut Proxy, conns: &mut Conns) {
        loop {
            let mut progressed = false;
            while let Some(t) = proxy.poll_transmit() {
                progressed = true;
                self.transmit(proxy, conns, t);
            }
            while let Some(ev) = proxy.poll_event() {
                progressed = true;
                let (id, host, port) = match ev {
                    Event::Resolve { id, host, port, .. } => (id, host, port),
                    Event::Registration {
                        name,
                        registered: true,
                        detail,
                    } => {
                        info!(registration = %name, answer = %detail, "registered upstream");
                        continue;
                    }
                    Event::Registration { name, detail, .. } => {
                        warn!(registration = %name, reason = %detail, "upstream registration failed; retrying later");
                        continue;
                    }
                    Event::SourceBanned { ip, failures, for_ } => {
                        tracing::warn!(
                            %ip,
                            failures,
                            ban = %humantime::format_duration(for_),
                            "source banned after failed authentications: its requests are dropped"
                        );
                        continue;
                    }
                    Event::MediaAutoRelay { call_id, why } => {
                        info!(%call_id, %why, "media relayed: without the relay this call would have no audio");
                        continue;
                    }
                    Event::MediaFailed { call_id, why, byes } => {
                        if byes > 0 {
                            warn!(%call_id, %why, byes, "an answer could not be relayed: passed on without its SDP; the call is ended with a BYE to each party");
                        } else {
                            warn!(%call_id, %why, "a description could not be relayed: passed on without its SDP");
                        }
                        continue;
                    }
                    Event::MediaTimeout { call_id, byes } => {
                        info!(%call_id, byes, "no media: call ended, BYE sent to each party");
                        continue;
                    }
                };
                let tx = self.tx.clone();
                tokio::spawn(async move {
                    let lookup = tokio::net::lookup_host((host.as_str(), port));
                    let result = match tokio::time::timeout(Duration::from_secs(5), lookup).await {
                        Ok(Ok(addrs)) => Ok(addrs.collect::<Vec<_>>()),
                        Ok(Err(e)) => Err(e.to_string()),
                        Err(_) => Err("DNS timeout".to_string()),
                    };
                    if let Err(e) = &result {
                        debug!(%host, error = %e, "DNS lookup failed");
                    }
                    let _ = tx.send(Input::Resolved { id, result }).await;
                });
            }
            if !progressed {
                break;
            }
        }
    }

    fn transmit(&mut self, proxy: &mut Proxy, conns: &mut Conns, t: Transmit) {
        match t.transport {
            Transport::Udp => {
                let sock = self.udp.get(&t.local).or_else(|| {
                    self.udp
                        .iter()
                        .find(|(a, _)| a.is_ipv4() == t.remote.is_ipv4())
                        .map(|(_, s)| s)
                });
                let Some(sock) = sock else {
                    warn!(remote = %t.remote, "no UDP socket for this address family");
                    return;
                };
                if let Err(e) = sock.try_send_to(&t.bytes, t.remote) {
                    // UDP is lossy by design: the transaction layer retransmits.
                    debug!(remote = %t.remote, error = %e, "udp send failed");
                }
            }
            Transport::Tcp | Transport::Tls => {
                // A request for a hop named by a domain goes only on a
                // connection whose certificate was checked for that name
                // (not an inbound one, not one opened for another name).
                let fits = |h: &ConnHandle| match &t.server_name {
                    Some(name) if t.transport == Transport::Tls => {
                        h.verified_name.as_deref() == Some(&**name)
                    }
                    _ => true,
                };
                let id = t
                    .conn
                    .filter(|id| conns.by_id.contains_key(id))
                    .or_else(|| conns.by_remote.get(&(t.transport, t.remote)).copied())
                    .filter(|id| conns.by_id.get(id).is_some_and(fits));
                let out = Out {
                    bytes: t.bytes,
                    tag: t.on_error,
                };
                if let Some(h) = id.and_then(|id| conns.by_id.get(&id)) {
                    if let Err(e) = h.tx.send(out) {
                        if let Some(tag) = e.0.tag {
                            proxy.handle_send_error(std::time::Instant::now(), tag);
                        }
                    }
                    return;
                }
                let tls = match t.transport {
                    Transport::Tls => {
                        // The domain the hop was named by, else its address
                        // (RFC 5922 §4: the certificate must name what we dialled).
                        let name = match t.server_name.as_deref() {
                            None => ServerName::IpAddress(t.remote.ip().into()),
                            Some(n) => match ServerName::try_from(n.to_string()) {
                                Ok(name) => name,
                                Err(_) => {
                                    warn!(
                                        name = n,
                                        "not a name TLS can check a certificate against"
                                    );
                                    if let Some(tag) = out.tag {
                                        proxy.handle_send_error(std::time::Instant::now(), tag);
                                    }
                                    return;
                                }
                            },
                        };
                        Some(TlsClient {
                            connector: self.tls.clone(),
                            name,
                        })
                    }
                    _ => None,
                };
                let (out_tx, out_rx) = mpsc::unbounded_channel();
                let handle = ConnHandle {
                    id: self.limits.next_id(),
                    transport: t.transport,
                    local: t.local,
                    remote: t.remote,
                    verified_name: match t.transport {
                        Transport::Tls => Some(
                            t.server_name
                                .clone()
                                .unwrap_or_else(|| t.remote.ip().to_string().into()),
                        ),
                        _ => None,
                    },
                    tx: out_tx,
                };
                let _ = handle.tx.send(out);
                conns
                    .by_remote
                    .insert((handle.transport, handle.remote), handle.id);
                conns.by_id.insert(handle.id, handle.clone());
                transport::connect(
                    handle,
                    tls,
                    out_rx,
                    self.tx.clone(),
                    self.limits.clone(),
                    self.settings.clone(),
                );
            }
        }
    }
}
