//! Sockets: UDP listeners, TCP and TLS listeners and connections (in and out).
//!
//! Each socket task turns bytes into [`Input`]s for the proxy loop; framing of
//! streams is the SIP core's [`StreamFramer`], the same over TCP and TLS.
//! Connection limits (total and per source address), handshake and idle
//! timeouts are enforced here.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::mpsc;
use tokio_rustls::{TlsAcceptor, TlsConnector};
use tracing::{debug, info, warn};
use weir_sip::framing::{FrameError, StreamFramer, StreamItem, PONG};
use weir_sip::proxy::{ConnId, Flow, SendTag, Transport};

/// What the socket tasks tell the proxy loop.
#[derive(Debug)]
pub enum Input {
    Message {
        flow: Flow,
        bytes: Bytes,
    },
    Resolved {
        id: u64,
        result: Result<Vec<SocketAddr>, String>,
    },
    ConnOpened(ConnHandle),
    /// A connection ended; `failed` are the tagged sends it could not deliver.
    ConnClosed {
        id: ConnId,
        failed: Vec<SendTag>,
    },
    /// Relayed call `id` had no media for too long (the relay's sweeper).
    MediaTimeout {
        id: u64,
    },
}

/// Bytes for a connection to write.
#[derive(Debug)]
pub struct Out {
    pub bytes: Bytes,
    pub tag: Option<SendTag>,
}

/// The proxy loop's handle on one connection.
#[derive(Debug, Clone)]
pub struct ConnHandle {
    pub id: ConnId,
    /// TCP or TLS.
    pub transport: Transport,
    /// For a TLS connection this proxy opened: the name (or address) the
    /// peer's certificate was checked against. None for inbound connections.
    pub verified_name: Option<Arc<str>>,
    pub local: SocketAddr,
    pub remote: SocketAddr,
    pub tx: mpsc::UnboundedSender<Out>,
}

/// Settings shared by every connection task.
#[derive(Debug, Clone)]
pub struct StreamSettings {
    pub max_message: usize,
    pub idle_timeout: Duration,
    pub connect_timeout: Duration,
    pub max_connections: usize,
    pub max_per_source: usize,
    /// How long a TLS handshake may take, either way.
    pub handshake_timeout: Duration,
}

/// What a new outbound TLS connection needs: the client settings (trusted
/// roots, TLS 1.2+) and the name to send as SNI and check the certificate
/// against.
#[derive(Clone)]
pub struct TlsClient {
    pub connector: TlsConnector,
    pub name: ServerName<'static>,
}

impl std::fmt::Debug for TlsClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsClient")
            .field("name", &self.name)
            .finish()
    }
}

/// Counts open connections, in total and per source address.
#[derive(Debug, Default)]
pub struct Limits {
    next_id: AtomicU64,
    open: Mutex<(usize, HashMap<IpAddr, usize>)>,
}

/// Releases a connection's place in [`Limits`] when dropped.
#[derive(Debug)]
pub struct Slot {
    limits: Arc<Limits>,
    ip: IpAddr,
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Ok(mut open) = self.limits.open.lock() {
            open.0 = open.0.saturating_sub(1);
            if let Some(n) = open.1.get_mut(&self.ip) {
                *n -= 1;
                if *n == 0 {
                    open.1.remove(&self.ip);
                }
            }
        }
    }
}

impl Limits {
    pub fn next_id(&self) -> ConnId {
        self.next_id.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Takes a place for a connection with `ip`, or says which limit is reached.
    pub fn acquire(
        self: &Arc<Self>,
        ip: IpAddr,
        s: &StreamSettings,
        inbound: bool,
    ) -> Result<Slot, &'static str> {
        let mut open = self.open.lock().map_err(|_| "limits poisoned")?;
        if open.0 >= s.max_connections {
            return Err("max_connections reached");
        }
        let per = open.1.entry(ip).or_insert(0);
        if inbound && *per >= s.max_per_source {
            return Err("max_connections_per_source reached");
        }
        *per += 1;
        open.0 += 1;
        Ok(Slot {
            limits: self.clone(),
            ip,
        })
    }
}

/// Binds a UDP socket with a large receive buffer.
pub fn bind_udp(addr: SocketAddr, recv_buffer: usize) -> std::io::Result<UdpSocket> {
    let domain = socket2::Domain::for_address(addr);
    let sock = socket2::Socket::new(domain, socket2::Type::DGRAM, Some(socket2::Protocol::UDP))?;
    if addr.is_ipv6() {
        sock.set_only_v6(true)?;
    }
    // Best effort: the kernel caps these at net.core.{r,w}mem_max.
    let _ = sock.set_recv_buffer_size(recv_buffer);
    let _ = sock.set_send_buffer_size(recv_buffer);
    sock.set_nonblocking(true)?;
    sock.bind(&addr.into())?;
    UdpSocket::from_std(sock.into())
}

pub fn bind_tcp(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let domain = socket2::Domain::for_address(addr);
    let sock = socket2::Socket::new(domain, socket2::Type::STREAM, Some(socket2::Protocol::TCP))?;
    if addr.is_ipv6() {
        sock.set_only_v6(true)?;
    }
    sock.set_reuse_address(true)?;
    sock.set_nonblocking(true)?;
    sock.bind(&addr.into())?;
    sock.listen(1024)?;
    TcpListener::from_std(sock.into())
}

/// Accepts TCP connections within the limits; with `tls`, each one must
/// complete a TLS handshake within the handshake timeout first.
pub async fn stream_acceptor(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    tx: mpsc::Sender<Input>,
    limits: Arc<Limits>,
    s: StreamSettings,
) {
    let local = match listener.local_addr() {
        Ok(a) => a,
        Err(_) => return,
    };
    loop {
        let (stream, remote) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                warn!(%local, error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let slot = match limits.acquire(remote.ip(), &s, true) {
            Ok(slot) => slot,
            Err(why) => {
                info!(%remote, why, "connection refused");
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        // The address this connection arrived on (a wildcard listener's is 0.0.0.0).
        let here = stream.local_addr().unwrap_or(local);
        let (out_tx, out_rx) = mpsc::unbounded_channel();
        let handle = ConnHandle {
            id: limits.next_id(),
            transport: if tls.is_some() {
                Transport::Tls
            } else {
                Transport::Tcp
            },
            local,
            remote,
            verified_name: None,
            tx: out_tx,
        };
        let Some(acceptor) = tls.clone() else {
            if tx.send(Input::ConnOpened(handle.clone())).await.is_err() {
                return;
            }
            tokio::spawn(connection(
                stream,
                here,
                handle,
                out_rx,
                tx.clone(),
                s.clone(),
                slot,
            ));
            continue;
        };
        // The handshake runs in the connection's own task: a slow or silent
        // client holds up nobody else.
        let (tx, s) = (tx.clone(), s.clone());
        tokio::spawn(async move {
            let stream =
                match tokio::time::timeout(s.handshake_timeout, acceptor.accept(stream)).await {
                    Ok(Ok(stream)) => stream,
                    Ok(Err(e)) => {
                        info!(%remote, error = %e, "TLS handshake refused");
                        return;
                    }
                    Err(_) => {
                        info!(%remote, "TLS handshake timed out");
                        return;
                    }
                };
            if tx.send(Input::ConnOpened(handle.clone())).await.is_err() {
                return;
            }
            connection(stream, here, handle, out_rx, tx, s, slot).await;
        });
    }
}

/// Opens a connection to a next hop (with `tls`, a TLS session on it); sends
/// queue up until it is established and fail together if it cannot be.
pub fn connect(
    handle: ConnHandle,
    tls: Option<TlsClient>,
    out_rx: mpsc::UnboundedReceiver<Out>,
    tx: mpsc::Sender<Input>,
    limits: Arc<Limits>,
    s: StreamSettings,
) {
    tokio::spawn(async move {
        let slot = match limits.acquire(handle.remote.ip(), &s, false) {
            Ok(slot) => slot,
            Err(why) => {
                warn!(remote = %handle.remote, why, "cannot open connection");
                fail_all(handle.id, out_rx, tx).await;
                return;
            }
        };
        let stream = match connect_from(handle.local, handle.remote, s.connect_timeout).await {
            Ok(stream) => stream,
            Err(e) => {
                info!(remote = %handle.remote, error = %e, "connect failed");
                fail_all(handle.id, out_rx, tx).await;
                return;
            }
        };
        let here = stream.local_addr().unwrap_or(handle.local);
        let Some(tls) = tls else {
            connection(stream, here, handle, out_rx, tx, s, slot).await;
            return;
        };
        let handshake = tls.connector.connect(tls.name.clone(), stream);
        let stream = match tokio::time::timeout(s.handshake_timeout, handshake).await {
            Ok(Ok(stream)) => stream,
            Ok(Err(e)) => {
                // Usually a certificate the configured roots do not vouch for
                // this name: worth an operator's attention.
                warn!(remote = %handle.remote, name = ?tls.name, error = %e, "TLS handshake failed");
                fail_all(handle.id, out_rx, tx).await;
                return;
            }
            Err(_) => {
                warn!(remote = %handle.remote, name = ?tls.name, "TLS handshake timed out");
                fail_all(handle.id, out_rx, tx).await;
                return;
            }
        };
        connection(stream, here, handle, out_rx, tx, s, slot).await;
    });
}

async fn connect_from(
    local: SocketAddr,
    remote: SocketAddr,
    timeout: Duration,
) -> std::io::Result<TcpStream> {
    let sock = if remote.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    // Bind to the listener's address (not its port) so the peer sees the address
    // we advertise.
    if local.ip().is_loopback() == remote.ip().is_loopback() && !local.ip().is_unspecified() {
        let _ = sock.bind(SocketAddr::new(local.ip(), 0));
    }
    let stream = tokio::time::timeout(timeout, sock.connect(remote))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out"))??;
    let _ = stream.set_nodelay(true);
    Ok(stream)
}

async fn fail_all(id: ConnId, mut out_rx: mpsc::UnboundedReceiver<Out>, tx: mpsc::Sender<Input>) {
    out_rx.close();
    let mut failed = Vec::new();
    while let Ok(out) = out_rx.try_recv() {
        failed.extend(out.tag);
    }
    let _ = tx.send(Input::ConnClosed { id, failed }).await;
}

/// Reads and frames one connection, writes what the proxy sends on it, and
/// closes it when idle, broken or unframeable.
async fn connection<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    local: SocketAddr,
    handle: ConnHandle,
    mut out_rx: mpsc::UnboundedReceiver<Out>,
    tx: mpsc::Sender<Input>,
    s: StreamSettings,
    _slot: Slot,
) {
    let flow = Flow {
        transport: handle.transport,
        local,
        remote: handle.remote,
        conn: Some(handle.id),
    };
    let mut framer = StreamFramer::new(s.max_message);
    let mut buf = vec![0u8; 16 * 1024];
    let mut failed = Vec::new();
    let idle = tokio::time::sleep(s.idle_timeout);
    tokio::pin!(idle);
    loop {
        tokio::select! {
            read = stream.read(&mut buf) => {
                let n = match read {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
                idle.as_mut().reset(tokio::time::Instant::now() + s.idle_timeout);
                framer.push(&buf[..n]);
                let mut close = false;
                loop {
                    match framer.poll() {
                        Ok(Some(StreamItem::Message(bytes))) => {
                            if tx.send(Input::Message { flow, bytes }).await.is_err() {
                                return;
                            }
                        }
                        Ok(Some(StreamItem::Ping)) => {
                            let pong = async {
                                stream.write_all(PONG).await?;
                                stream.flush().await
                            };
                            if !matches!(tokio::time::timeout(s.idle_timeout, pong).await, Ok(Ok(()))) {
                                close = true;
                                break;
                            }
                        }
                        Ok(None) => break,
                        Err(e @ (FrameError::TooLarge(_) | FrameError::BadContentLength)) => {
                            info!(remote = %handle.remote, error = %e, "closing connection");
                            close = true;
                            break;
                        }
                    }
                }
                if close {
                    break;
                }
            }
            out = out_rx.recv() => {
                let Some(out) = out else { break };
                idle.as_mut().reset(tokio::time::Instant::now() + s.idle_timeout);
                // TLS buffers records until flushed (a no-op for plain TCP). A
                // peer that stops reading must not hold the connection forever.
                let write = async {
                    stream.write_all(&out.bytes).await?;
                    stream.flush().await
                };
                if !matches!(tokio::time::timeout(s.idle_timeout, write).await, Ok(Ok(()))) {
                    failed.extend(out.tag);
                    break;
                }
            }
            () = &mut idle => {
                debug!(remote = %handle.remote, "closing idle connection");
                break;
            }
        }
    }
    out_rx.close();
    while let Ok(out) = out_rx.try_recv() {
        failed.extend(out.tag);
    }
    let _ = tx
        .send(Input::ConnClosed {
            id: handle.id,
            failed,
        })
        .await;
}
