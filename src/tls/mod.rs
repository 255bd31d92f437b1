//! TLS toward clients and toward the backend, and the stream type that is
//! either (`stream.rs`).
//!
//! Only the aws-lc-rs rustls provider is compiled in; `main` installs it as
//! the process default before anything builds a config (with two providers
//! enabled, `ClientConfig::builder()` panics at run time).

use std::path::Path;
use std::sync::{Arc, OnceLock};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use tokio::net::TcpStream;

use crate::config::{BackendConfig, BackendTls};

mod stream;

pub use stream::{BackendStream, ClientStream, Detached, MaybeTls, Socket};

/// ALPN protocol name PostgreSQL 17 requires for direct TLS connections.
pub const ALPN_POSTGRESQL: &[u8] = b"postgresql";

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}: {message}")]
    Pem { path: String, message: String },
    #[error("{0}")]
    Config(String),
}

/// Sets up a TCP connection for the splice: no Nagle delay (the protocol is
/// request/response with small messages) and keepalive probes, so that a
/// peer that vanished without a FIN (a crashed host, a dropped NAT entry)
/// is noticed within minutes instead of holding its session, its backend and
/// its role forever.
pub fn tune_tcp(tcp: &TcpStream) {
    let keepalive = socket2::TcpKeepalive::new()
        .with_time(std::time::Duration::from_secs(60))
        .with_interval(std::time::Duration::from_secs(10))
        .with_retries(6);
    let sock = socket2::SockRef::from(tcp);
    // Failing to tune a socket is not a reason to refuse the connection.
    let _ = sock.set_tcp_nodelay(true);
    let _ = sock.set_tcp_keepalive(&keepalive);
}

/// Installs aws-lc-rs as the process-wide rustls provider. Idempotent, so
/// tests and `main` can both call it.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}

/// Stateful TLS sessions remembered for resumption by clients that do not
/// take tickets (TLS 1.2 without the ticket extension). About 200 bytes
/// each: a bounded ~1 MiB at most.
const SESSION_CACHE_ENTRIES: usize = 4096;
/// TLS 1.3 tickets sent after each full handshake. A client that resumes
/// needs one per reconnect and gets a fresh one each time; libpq never
/// resumes, so every ticket beyond the first is an encryption and a write
/// wasted on every connection (rustls sends 2 by default).
const TLS13_TICKETS: usize = 1;
/// The most plaintext one TLS record to a client carries: 8 KiB, as
/// PostgreSQL's own records (it encrypts its 8 KiB send buffer a write at a
/// time). libpq 18.0 (bundled by psycopg 3.3.4) reads into 8 KiB of free
/// buffer and then waits on the socket; a 16 KiB record (rustls's default)
/// leaves its tail inside OpenSSL, unseen by a client that polls the socket,
/// which then waits forever for the end of a response that already arrived.
pub const MAX_RECORD_PLAINTEXT: usize = 8 * 1024;
/// A TLS record's header (type, version, length), which rustls counts in
/// `max_fragment_size`.
const RECORD_HEADER: usize = 5;

/// The key that seals session tickets: one per process, so reloading the
/// certificate (SIGHUP) does not invalidate the tickets clients hold.
/// aws-lc-rs's ticketer rotates its own keys (every 6 hours).
fn ticketer() -> Result<Arc<dyn rustls::server::ProducesTickets>, TlsError> {
    static TICKETER: OnceLock<Arc<dyn rustls::server::ProducesTickets>> = OnceLock::new();
    if let Some(t) = TICKETER.get() {
        return Ok(t.clone());
    }
    let made = rustls::crypto::aws_lc_rs::Ticketer::new()
        .map_err(|e| TlsError::Config(format!("cannot make a session ticket key: {e}")))?;
    Ok(TICKETER.get_or_init(|| made).clone())
}

/// Server config for client connections: certificate chain and key from PEM
/// files, ALPN `postgresql` offered (direct TLS needs it; SSLRequest clients
/// may send none).
///
/// Session resumption is on, for reconnect storms: a client that kept a
/// ticket (or a TLS 1.2 session id) skips the certificate signature and the
/// key exchange's public-key work on its next connection.
pub fn server_config(cert: &Path, key: &Path) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    install_crypto_provider();
    let pem_err = |path: &Path, e: &dyn std::fmt::Display| TlsError::Pem {
        path: path.display().to_string(),
        message: e.to_string(),
    };
    let certs = CertificateDer::pem_file_iter(cert)
        .map_err(|e| pem_err(cert, &e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_err(cert, &e))?;
    if certs.is_empty() {
        return Err(pem_err(cert, &"no certificate in file"));
    }
    let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| pem_err(key, &e))?;
    let mut config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(certs, key_der)
        .map_err(|e| TlsError::Config(format!("certificate and key do not fit: {e}")))?;
    config.alpn_protocols = vec![ALPN_POSTGRESQL.to_vec()];
    config.ticketer = ticketer()?;
    config.send_tls13_tickets = TLS13_TICKETS;
    config.max_fragment_size = Some(MAX_RECORD_PLAINTEXT + RECORD_HEADER);
    config.session_storage = rustls::server::ServerSessionMemoryCache::new(SESSION_CACHE_ENTRIES);
    Ok(Arc::new(config))
}

/// The certificates of the PEM file `ca`, as roots to trust.
pub fn root_store(ca: &Path) -> Result<rustls::RootCertStore, TlsError> {
    let pem = |e: &dyn std::fmt::Display| TlsError::Pem {
        path: ca.display().to_string(),
        message: e.to_string(),
    };
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).map_err(|e| pem(&e))? {
        roots
            .add(cert.map_err(|e| pem(&e))?)
            .map_err(|e| TlsError::Config(format!("bad CA certificate: {e}")))?;
    }
    Ok(roots)
}

/// rustls client config for connections to the backend (admin pool and
/// minted-role sessions), per `[backend] tls` / `tls_ca_file`. `None` when
/// the backend is reached in plaintext.
pub fn backend_client_config(
    backend: &BackendConfig,
) -> Result<Option<Arc<rustls::ClientConfig>>, TlsError> {
    install_crypto_provider();
    let mut config = match backend.tls() {
        BackendTls::Disable => return Ok(None),
        BackendTls::Require => rustls::ClientConfig::builder()
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoCertificateVerification::new()))
            .with_no_client_auth(),
        BackendTls::VerifyFull => {
            let Some(ca) = &backend.tls_ca_file else {
                return Err(TlsError::Config(
                    "backend tls = \"verify-full\" needs tls_ca_file".into(),
                ));
            };
            rustls::ClientConfig::builder()
                .with_root_certificates(root_store(ca)?)
                .with_no_client_auth()
        }
    };
    if backend.sslnegotiation == crate::config::SslNegotiation::Direct {
        // PostgreSQL 17 accepts TLS without an SSLRequest only with this
        // ALPN protocol (it refuses the connection otherwise).
        config.alpn_protocols = vec![ALPN_POSTGRESQL.to_vec()];
    }
    Ok(Some(Arc::new(config)))
}

/// The server name to present to the backend.
pub fn backend_server_name(host: &str) -> Result<ServerName<'static>, TlsError> {
    ServerName::try_from(host.to_owned())
        .map_err(|_| TlsError::Config(format!("backend host {host:?} is not a valid TLS name")))
}

/// A loud warning when the admin password and the minted roles' SCRAM
/// exchanges cross a network without a verified TLS connection; `None` for
/// a loopback backend or `verify-full`.
pub fn backend_tls_warning(backend: &BackendConfig) -> Option<String> {
    let how = match backend.tls() {
        _ if backend.is_local() => return None,
        BackendTls::VerifyFull => return None,
        BackendTls::Disable => "without TLS",
        BackendTls::Require => "with TLS but without verifying its certificate",
    };
    Some(format!(
        "backend {} is not on this machine and is reached {how}: anyone on the path can read \
         the sessions, and pose as the server to the admin connection; set backend.tls = \"verify-full\" \
         with backend.tls_ca_file (the default off this machine)",
        backend.host
    ))
}

/// The `tls-server-end-point` channel binding of a server certificate
/// (RFC 5929 §4.1): its hash by the hash function of its signature
/// algorithm, SHA-256 for MD5 or SHA-1. `None` when the certificate cannot
/// be read or its algorithm names no such hash (Ed25519, RSA-PSS), which
/// PostgreSQL cannot bind to either: then SCRAM goes unbound.
pub fn tls_server_end_point(cert_der: &[u8]) -> Option<Vec<u8>> {
    use aws_lc_rs::digest;
    // Certificate ::= SEQUENCE { tbsCertificate, signatureAlgorithm, .. }
    let (cert, _) = der_sequence(cert_der)?;
    let (_tbs, rest) = der_sequence(cert)?;
    let (algorithm, _) = der_sequence(rest)?;
    let (0x06, oid, _) = der_element(algorithm)? else {
        return None;
    };
    const RSA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01];
    const ECDSA_SHA2: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03];
    const ECDSA_SHA1: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x01];
    let hash = match oid {
        _ if oid == ECDSA_SHA1 => &digest::SHA256,
        [prefix @ .., last] if prefix == RSA => match last {
            // md5WithRSA, sha1WithRSA, sha256WithRSA
            0x04 | 0x05 | 0x0b => &digest::SHA256,
            0x0c => &digest::SHA384,
            0x0d => &digest::SHA512,
            _ => return None,
        },
        [prefix @ .., last] if prefix == ECDSA_SHA2 => match last {
            0x02 => &digest::SHA256,
            0x03 => &digest::SHA384,
            0x04 => &digest::SHA512,
            _ => return None,
        },
        _ => return None,
    };
    Some(digest::digest(hash, cert_der).as_ref().to_vec())
}

/// The contents of the DER SEQUENCE at the start of `der`, and what follows.
fn der_sequence(der: &[u8]) -> Option<(&[u8], &[u8])> {
    match der_element(der)? {
        (0x30, contents, rest) => Some((contents, rest)),
        _ => None,
    }
}

/// One DER element: tag, contents, rest. Lengths of up to four bytes (a
/// certificate is far smaller), never past the input.
fn der_element(der: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = der.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |len, b| (len << 8) | usize::from(*b));
        (len, &rest[n..])
    };
    (rest.len() >= len).then(|| (tag, &rest[..len], &rest[len..]))
}

/// `sslmode=require` semantics: encrypt, but accept any certificate. The
/// handshake signature is still checked, so the session key is bound to the
/// certificate the server presented.
#[derive(Debug)]
struct NoCertificateVerification(Arc<rustls::crypto::CryptoProvider>);

impl NoCertificateVerification {
    fn new() -> Self {
        NoCertificateVerification(Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
    }
}

impl ServerCertVerifier for NoCertificateVerification {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use std::io;
    use std::pin::Pin;
    use std::task::{Context, Poll};

    use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};

    use super::*;

    #[test]
    fn remote_backends_without_verified_tls_are_warned_about() {
        let mut backend: BackendConfig =
            toml::from_str("host = \"db.example.com\"\nadmin_user = \"a\"").unwrap();
        // Unset, the default off this machine is verify-full: no warning.
        assert_eq!(backend.tls(), BackendTls::VerifyFull);
        assert!(backend_tls_warning(&backend).is_none());
        backend.tls_setting = Some(BackendTls::Require);
        assert!(backend_tls_warning(&backend).is_some());
        backend.tls_setting = Some(BackendTls::Disable);
        assert!(backend_tls_warning(&backend).is_some());
        backend.tls_setting = Some(BackendTls::VerifyFull);
        assert!(backend_tls_warning(&backend).is_none());
        backend.tls_setting = Some(BackendTls::Disable);
        backend.host = "127.0.0.1".into();
        assert!(backend_tls_warning(&backend).is_none());
    }

    #[test]
    fn tls_defaults_to_verify_full_off_this_machine_only() {
        let mut backend: BackendConfig =
            toml::from_str("host = \"h\"\nadmin_user = \"a\"").unwrap();
        let local = [
            "127.0.0.1",
            "127.5.6.7",
            "localhost",
            "LOCALHOST",
            "::1",
            "[::1]",
            "::ffff:127.0.0.1",
            "/var/run/postgresql",
        ];
        for host in local {
            backend.host = host.into();
            assert_eq!(backend.tls(), BackendTls::Disable, "{host}");
        }
        let remote = [
            "db.example.com",
            "postgres",
            "10.0.0.5",
            "::ffff:10.0.0.1",
            "fe80::1",
            "localhost.example.com",
            "127.0.0.1.nip.io",
        ];
        for host in remote {
            backend.host = host.into();
            assert_eq!(backend.tls(), BackendTls::VerifyFull, "{host}");
        }
        // What is set is kept, wherever the backend is.
        backend.tls_setting = Some(BackendTls::Require);
        assert_eq!(backend.tls(), BackendTls::Require);
    }

    #[test]
    fn the_end_point_hash_follows_the_certificate_signature() {
        use rcgen::{CertificateParams, KeyPair};
        let sha256 = |d: &[u8]| aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, d);
        let sha384 = |d: &[u8]| aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA384, d);
        for (alg, expect) in [
            (&rcgen::PKCS_ECDSA_P256_SHA256, 256),
            (&rcgen::PKCS_ECDSA_P384_SHA384, 384),
            (&rcgen::PKCS_ED25519, 0),
        ] {
            let key = KeyPair::generate_for(alg).unwrap();
            let cert = CertificateParams::new(vec!["db".to_owned()])
                .unwrap()
                .self_signed(&key)
                .unwrap();
            let der = cert.der().as_ref();
            let hash = tls_server_end_point(der);
            match expect {
                256 => assert_eq!(hash.as_deref(), Some(sha256(der).as_ref())),
                384 => assert_eq!(hash.as_deref(), Some(sha384(der).as_ref())),
                // PostgreSQL cannot bind to an Ed25519 certificate either.
                _ => assert_eq!(hash, None),
            }
        }
        for junk in [
            &b""[..],
            b"\x30",
            b"\x30\x84\xff\xff\xff\xff",
            b"\x30\x03\x30\x01\x00",
        ] {
            assert_eq!(tls_server_end_point(junk), None);
        }
    }

    /// One TLS connection over an in-memory pipe; how its handshake went.
    async fn connect(
        server: Arc<rustls::ServerConfig>,
        client: Arc<rustls::ClientConfig>,
    ) -> rustls::HandshakeKind {
        let (client_io, server_io) = tokio::io::duplex(64 * 1024);
        let accept = async move {
            let mut tls = tokio_rustls::TlsAcceptor::from(server)
                .accept(server_io)
                .await
                .unwrap();
            // Application data after the tickets, so the client reads them.
            tls.write_all(b"x").await.unwrap();
            tls.flush().await.unwrap();
            tls
        };
        let connect = async move {
            let name = ServerName::try_from("localhost").unwrap();
            let mut tls = tokio_rustls::TlsConnector::from(client)
                .connect(name, client_io)
                .await
                .unwrap();
            let mut byte = [0; 1];
            tls.read_exact(&mut byte).await.unwrap();
            tls.get_ref().1.handshake_kind().unwrap()
        };
        let (_server, kind) = tokio::join!(accept, connect);
        kind
    }

    /// A server config over a fresh self-signed certificate (in the
    /// returned directory) and a client config that accepts it.
    pub(super) fn configs() -> (
        tempfile::TempDir,
        Arc<rustls::ServerConfig>,
        Arc<rustls::ClientConfig>,
    ) {
        install_crypto_provider();
        let dir = tempfile::tempdir().unwrap();
        crate::cli::dev::write_self_signed_cert(dir.path()).unwrap();
        let server =
            server_config(&dir.path().join("cert.pem"), &dir.path().join("key.pem")).unwrap();
        let client = Arc::new(
            rustls::ClientConfig::builder()
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(NoCertificateVerification::new()))
                .with_no_client_auth(),
        );
        (dir, server, client)
    }

    /// Records every byte written through it.
    struct Tap<T> {
        inner: T,
        written: Arc<std::sync::Mutex<Vec<u8>>>,
    }

    impl<T: AsyncRead + Unpin> AsyncRead for Tap<T> {
        fn poll_read(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            Pin::new(&mut self.inner).poll_read(cx, buf)
        }
    }

    impl<T: AsyncWrite + Unpin> AsyncWrite for Tap<T> {
        fn poll_write(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            let n = std::task::ready!(Pin::new(&mut self.inner).poll_write(cx, buf))?;
            self.written.lock().unwrap().extend_from_slice(&buf[..n]);
            Poll::Ready(Ok(n))
        }

        fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.inner).poll_flush(cx)
        }

        fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.inner).poll_shutdown(cx)
        }
    }

    /// The lengths of the TLS records in `wire`, in order.
    fn record_lengths(mut wire: &[u8]) -> Vec<usize> {
        let mut lengths = Vec::new();
        while wire.len() >= RECORD_HEADER {
            let len = u16::from_be_bytes([wire[3], wire[4]]) as usize;
            lengths.push(len);
            wire = &wire[(RECORD_HEADER + len).min(wire.len())..];
        }
        lengths
    }

    /// libpq 18.0 reads a TLS record into 8 KiB of free buffer and then
    /// waits on the socket, so a larger record's tail stays inside OpenSSL
    /// and psycopg 3.3.4 waits forever for a response that has arrived.
    /// What the relay writes in 16 KiB bursts must leave in records of at
    /// most 8 KiB of plaintext, as PostgreSQL's own do.
    #[tokio::test]
    async fn records_to_clients_carry_at_most_8_kib_of_plaintext() {
        let (_dir, server, client) = configs();
        let (client_io, server_io) = tokio::io::duplex(1 << 20);
        let written = Arc::new(std::sync::Mutex::new(Vec::new()));
        let tapped = Tap {
            inner: server_io,
            written: Arc::clone(&written),
        };
        let response: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        let serve = async {
            let mut tls = tokio_rustls::TlsAcceptor::from(server)
                .accept(tapped)
                .await
                .unwrap();
            let handshake_bytes = written.lock().unwrap().len();
            for chunk in response.chunks(16 * 1024) {
                tls.write_all(chunk).await.unwrap();
            }
            tls.flush().await.unwrap();
            (tls, handshake_bytes)
        };
        let read = async {
            let name = ServerName::try_from("localhost").unwrap();
            let mut tls = tokio_rustls::TlsConnector::from(client)
                .connect(name, client_io)
                .await
                .unwrap();
            let mut got = vec![0; response.len()];
            tls.read_exact(&mut got).await.unwrap();
            got
        };
        let ((_tls, handshake_bytes), got) = tokio::join!(serve, read);
        assert_eq!(got, response);
        let written = written.lock().unwrap();
        let lengths = record_lengths(&written[handshake_bytes..]);
        // Ciphertext is the plaintext plus at most 256 bytes (RFC 8446 5.2).
        let largest = lengths.iter().copied().max().unwrap();
        assert!(
            largest <= MAX_RECORD_PLAINTEXT + 256,
            "a record of {largest} bytes: {lengths:?}"
        );
        assert!(lengths.len() >= response.len() / MAX_RECORD_PLAINTEXT);
    }

    #[tokio::test]
    async fn a_returning_client_resumes_its_session() {
        let (dir, server, client) = configs();
        assert_eq!(
            connect(server.clone(), client.clone()).await,
            rustls::HandshakeKind::Full
        );
        assert_eq!(
            connect(server.clone(), client.clone()).await,
            rustls::HandshakeKind::Resumed
        );
        // A reloaded certificate keeps the ticket key.
        let reloaded =
            server_config(&dir.path().join("cert.pem"), &dir.path().join("key.pem")).unwrap();
        assert_eq!(
            connect(reloaded, client).await,
            rustls::HandshakeKind::Resumed
        );
    }
}
