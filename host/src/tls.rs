//! Certificates for SIP over TLS (RFC 3261 §26.2, RFC 5630): a PEM chain and
//! key, served to every new handshake and replaced when the files change. A
//! pair that does not load (unreadable, no certificate, no key, a key that
//! does not match) leaves the previous pair serving and says why; live
//! connections keep the keys they shook hands with.
//!
//! Only TLS 1.2 and 1.3 are offered (rustls implements nothing older), so a
//! TLS 1.0/1.1 client is refused at the handshake.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use arc_swap::ArcSwap;
use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// Why a certificate pair did not load.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {error}")]
    Read { path: PathBuf, error: String },
    #[error("{0}: no PEM certificate in it")]
    NoCertificate(PathBuf),
    #[error("{path}: not a usable private key: {error}")]
    Key { path: PathBuf, error: String },
    #[error("{key} does not belong to the certificate in {cert}")]
    Mismatch { cert: PathBuf, key: PathBuf },
    #[error("TLS settings refused: {0}")]
    Config(String),
    #[error("{0}: no usable CA certificate in it")]
    NoCa(PathBuf),
}

/// The certificate pair of a `tls:` listener, swapped atomically on reload.
#[derive(Debug)]
pub struct CertStore {
    cert_path: PathBuf,
    key_path: PathBuf,
    provider: Arc<CryptoProvider>,
    current: ArcSwap<CertifiedKey>,
    /// What the files were when last loaded.
    loaded: std::sync::Mutex<(Option<Stamp>, Option<Stamp>)>,
}

/// A file's identity and version: modification time, size and inode, so a
/// replacement by rename (as certificate tools do) is seen even when it keeps
/// an older modification time.
type Stamp = (SystemTime, u64, u64);

fn modified(path: &Path) -> Option<Stamp> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.len(), m.ino()))
}

fn load_pair(
    provider: &CryptoProvider,
    cert_path: &Path,
    key_path: &Path,
) -> Result<CertifiedKey, TlsError> {
    let read = |path: &Path| {
        std::fs::read(path).map_err(|e| TlsError::Read {
            path: path.to_path_buf(),
            error: e.to_string(),
        })
    };
    let cert_pem = read(cert_path)?;
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| TlsError::Read {
            path: cert_path.to_path_buf(),
            error: format!("not PEM: {e}"),
        })?;
    if chain.is_empty() {
        return Err(TlsError::NoCertificate(cert_path.to_path_buf()));
    }
    let key_pem = read(key_path)?;
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| TlsError::Key {
        path: key_path.to_path_buf(),
        error: e.to_string(),
    })?;
    let signing = provider
        .key_provider
        .load_private_key(key)
        .map_err(|e| TlsError::Key {
            path: key_path.to_path_buf(),
            error: e.to_string(),
        })?;
    let pair = CertifiedKey::new(chain, signing);
    pair.keys_match().map_err(|_| TlsError::Mismatch {
        cert: cert_path.to_path_buf(),
        key: key_path.to_path_buf(),
    })?;
    Ok(pair)
}

impl CertStore {
    /// Loads the pair; an error here is a configuration error (nothing serves yet).
    pub fn load(cert_path: &Path, key_path: &Path) -> Result<CertStore, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let pair = load_pair(&provider, cert_path, key_path)?;
        Ok(CertStore {
            cert_path: cert_path.to_path_buf(),
            key_path: key_path.to_path_buf(),
            current: ArcSwap::from_pointee(pair),
            loaded: std::sync::Mutex::new((modified(cert_path), modified(key_path))),
            provider,
        })
    }

    /// Loads the files again if either changed since the last load. `Ok(true)`:
    /// new handshakes get the new pair; `Err`: the old pair keeps serving.
    pub fn reload_if_changed(&self) -> Result<bool, TlsError> {
        let now = (modified(&self.cert_path), modified(&self.key_path));
        let mut loaded = self.loaded.lock().unwrap_or_else(|p| p.into_inner());
        if *loaded == now {
            return Ok(false);
        }
        // Remember the attempt either way: a broken pair is reported once,
        // not on every check, and a fixed one is picked up when it changes.
        *loaded = now;
        let pair = load_pair(&self.provider, &self.cert_path, &self.key_path)?;
        self.current.store(Arc::new(pair));
        Ok(true)
    }

    /// Server settings for a `tls:` listener: TLS 1.2 or 1.3, no client
    /// certificates, this store's pair for every handshake.
    pub fn server_config(self: &Arc<Self>) -> Result<Arc<ServerConfig>, TlsError> {
        let config = ServerConfig::builder_with_provider(self.provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|e| TlsError::Config(e.to_string()))?
            .with_no_client_auth()
            .with_cert_resolver(self.clone());
        Ok(Arc::new(config))
    }
}

/// Client settings for outbound TLS: TLS 1.2 or 1.3, the peer's certificate
/// checked against `ca_file` when given, else against the system's roots.
/// Also returns how many roots were loaded (none means nothing can verify).
pub fn client_config(ca_file: Option<&Path>) -> Result<(Arc<ClientConfig>, usize), TlsError> {
    let mut roots = RootCertStore::empty();
    match ca_file {
        Some(path) => {
            let pem = std::fs::read(path).map_err(|e| TlsError::Read {
                path: path.to_path_buf(),
                error: e.to_string(),
            })?;
            for cert in CertificateDer::pem_slice_iter(&pem) {
                let cert = cert.map_err(|e| TlsError::Read {
                    path: path.to_path_buf(),
                    error: format!("not PEM: {e}"),
                })?;
                // A certificate webpki cannot use is skipped, as for system roots.
                let _ = roots.add(cert);
            }
            if roots.is_empty() {
                return Err(TlsError::NoCa(path.to_path_buf()));
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            roots.add_parsable_certificates(found.certs);
        }
    }
    let count = roots.len();
    let config =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|e| TlsError::Config(e.to_string()))?
            .with_root_certificates(roots)
            .with_no_client_auth();
    Ok((Arc::new(config), count))
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use rustls::pki_types::ServerName;
    use rustls::{ClientConfig, ClientConnection, RootCertStore, ServerConnection};

    struct Pair {
        pem: String,
        key: String,
        der: CertificateDer<'static>,
    }

    fn pair(name: &str) -> Pair {
        let c = rcgen::generate_simple_self_signed(vec![name.to_string()]).unwrap();
        Pair {
            pem: c.cert.pem(),
            key: c.key_pair.serialize_pem(),
            der: c.cert.der().clone(),
        }
    }

    fn dir() -> PathBuf {
        let d = std::env::temp_dir().join(format!(
            "weir-tls-{}-{}",
            std::process::id(),
            rand::random::<u32>()
        ));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    /// A whole handshake in memory; the certificate the client was shown.
    fn handshake(server: Arc<ServerConfig>, trust: &Pair, name: &str) -> CertificateDer<'static> {
        let mut roots = RootCertStore::empty();
        roots.add(trust.der.clone()).unwrap();
        let client_config =
            ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_root_certificates(roots)
                .with_no_client_auth();
        let mut client = ClientConnection::new(
            Arc::new(client_config),
            ServerName::try_from(name.to_string()).unwrap(),
        )
        .unwrap();
        let mut server = ServerConnection::new(server).unwrap();
        for _ in 0..10 {
            let mut buf = Vec::new();
            client.write_tls(&mut buf).unwrap();
            server.read_tls(&mut buf.as_slice()).unwrap();
            server.process_new_packets().unwrap();
            let mut buf = Vec::new();
            server.write_tls(&mut buf).unwrap();
            client.read_tls(&mut buf.as_slice()).unwrap();
            client.process_new_packets().unwrap();
            if !client.is_handshaking() && !server.is_handshaking() {
                break;
            }
        }
        assert!(!client.is_handshaking(), "handshake did not finish");
        client.peer_certificates().unwrap()[0].clone()
    }

    #[test]
    fn a_replaced_pair_serves_new_handshakes_and_a_broken_one_keeps_the_old() {
        let d = dir();
        let (cert, key) = (d.join("cert.pem"), d.join("key.pem"));
        let first = pair("sip.weir.test");
        std::fs::write(&cert, &first.pem).unwrap();
        std::fs::write(&key, &first.key).unwrap();
        let store = Arc::new(CertStore::load(&cert, &key).unwrap());
        let config = store.server_config().unwrap();
        assert_eq!(
            handshake(config.clone(), &first, "sip.weir.test"),
            first.der
        );
        assert!(!store.reload_if_changed().unwrap(), "nothing changed");

        // A new pair on disk: the same server settings now hand it out.
        let second = pair("sip.weir.test");
        std::thread::sleep(std::time::Duration::from_millis(20));
        std::fs::write(&cert, &second.pem).unwrap();
        std::fs::write(&key, &second.key).unwrap();
        assert!(store.reload_if_changed().unwrap());
        assert_eq!(
            handshake(config.clone(), &second, "sip.weir.test"),
            second.der
        );

        // A key of another certificate: refused, the second pair serves on.
        let third = pair("sip.weir.test");
        std::thread::sleep(std::time::Duration::from_millis(20));
        std::fs::write(&key, &third.key).unwrap();
        let e = store.reload_if_changed().unwrap_err();
        assert!(matches!(e, TlsError::Mismatch { .. }), "{e}");
        assert_eq!(
            handshake(config.clone(), &second, "sip.weir.test"),
            second.der
        );
        // Garbage for a certificate: the same.
        std::thread::sleep(std::time::Duration::from_millis(20));
        std::fs::write(&cert, "not a certificate").unwrap();
        let e = store.reload_if_changed().unwrap_err();
        assert!(matches!(e, TlsError::NoCertificate(_)), "{e}");
        assert_eq!(handshake(config, &second, "sip.weir.test"), second.der);
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn bad_files_are_named() {
        let d = dir();
        let good = pair("a.test");
        let (cert, key) = (d.join("c.pem"), d.join("k.pem"));
        std::fs::write(&cert, &good.pem).unwrap();
        std::fs::write(
            &key,
            "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
        )
        .unwrap();
        let e = CertStore::load(&cert, &key).unwrap_err();
        assert!(matches!(e, TlsError::Key { .. }), "{e}");
        assert!(e.to_string().contains("k.pem"), "{e}");
        let e = CertStore::load(&d.join("missing.pem"), &key).unwrap_err();
        assert!(e.to_string().contains("missing.pem"), "{e}");
        std::fs::remove_dir_all(&d).unwrap();
    }
}
