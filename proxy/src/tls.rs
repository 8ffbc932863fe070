//! TLS for both sides: the server certificate engineers' clients see (from
//! files, or a self-signed pair made once and kept in `data_dir`), and the
//! client configuration for upstream servers per libpq-style `sslmode`.

use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};

use crate::ProxyError;
use crate::settings::{TlsFiles, UpstreamTls};

/// Where the self-signed pair lives inside `data_dir`.
const SELF_SIGNED_CERT: &str = "tls/cert.pem";
const SELF_SIGNED_KEY: &str = "tls/key.pem";

/// The acceptor for client TLS: configured files, or the self-signed pair in `data_dir`.
pub fn acceptor(files: &Option<TlsFiles>, data_dir: &Path) -> Result<tokio_rustls::TlsAcceptor, ProxyError> {
    let (cert_path, key_path) = match files {
        Some(f) => (f.cert.clone(), f.key.clone()),
        None => {
            let cert = data_dir.join(SELF_SIGNED_CERT);
            let key = data_dir.join(SELF_SIGNED_KEY);
            if !cert.exists() || !key.exists() {
                write_self_signed(&cert, &key)?;
            }
            (cert, key)
        }
    };
    let tls_err =
        |what: &str, path: &Path, e: &dyn std::fmt::Display| ProxyError::Tls(format!("{what} {}: {e}", path.display()));
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&cert_path)
        .map_err(|e| tls_err("cannot read certificate", &cert_path, &e))?
        .collect::<Result<_, _>>()
        .map_err(|e| tls_err("bad certificate in", &cert_path, &e))?;
    let key = PrivateKeyDer::from_pem_file(&key_path).map_err(|e| tls_err("cannot read key", &key_path, &e))?;
    let config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| tls_err("certificate and key do not fit", &cert_path, &e))?;
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

fn write_self_signed(cert: &Path, key: &Path) -> Result<(), ProxyError> {
    let names = vec!["localhost".to_owned(), "127.0.0.1".to_owned()];
    let pair = rcgen::generate_simple_self_signed(names).map_err(|e| ProxyError::Tls(e.to_string()))?;
    if let Some(dir) = cert.parent() {
        std::fs::create_dir_all(dir).map_err(|e| ProxyError::Tls(format!("{}: {e}", dir.display())))?;
    }
    write_private(key, pair.signing_key.serialize_pem().as_bytes())?;
    std::fs::write(cert, pair.cert.pem()).map_err(|e| ProxyError::Tls(format!("{}: {e}", cert.display())))?;
    tracing::info!(cert = %cert.display(), "created a self-signed TLS certificate for clients");
    Ok(())
}

fn write_private(path: &Path, bytes: &[u8]) -> Result<(), ProxyError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| ProxyError::Tls(format!("{}: {e}", path.display())))?;
    f.write_all(bytes)
        .map_err(|e| ProxyError::Tls(format!("{}: {e}", path.display())))
}

/// The client configuration for an upstream server in `mode`.
pub fn upstream_config(mode: UpstreamTls, ca_file: Option<&Path>) -> Result<Arc<rustls::ClientConfig>, ProxyError> {
    let builder = rustls::ClientConfig::builder();
    let config = match mode {
        UpstreamTls::VerifyFull => {
            let path = ca_file.unwrap_or(Path::new("/etc/ssl/certs/ca-certificates.crt"));
            let mut roots = rustls::RootCertStore::empty();
            for cert in CertificateDer::pem_file_iter(path)
                .map_err(|e| ProxyError::Tls(format!("cannot read CA file {}: {e}", path.display())))?
            {
                let cert = cert.map_err(|e| ProxyError::Tls(format!("bad CA file {}: {e}", path.display())))?;
                roots
                    .add(cert)
                    .map_err(|e| ProxyError::Tls(format!("bad CA in {}: {e}", path.display())))?;
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        }
        _ => {
            let provider = CryptoProvider::get_default()
                .cloned()
                .unwrap_or_else(|| Arc::new(rustls::crypto::aws_lc_rs::default_provider()));
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(Unverified(provider)))
                .with_no_client_auth()
        }
    };
    Ok(Arc::new(config))
}

/// The server name to present upstream.
pub fn server_name(host: &str) -> Result<ServerName<'static>, ProxyError> {
    ServerName::try_from(host.to_owned()).map_err(|e| ProxyError::Tls(format!("bad host name {host}: {e}")))
}

/// `sslmode=require` semantics: encrypt, but do not check who the server is.
/// Signatures are still verified so the handshake itself is sound.
#[derive(Debug)]
struct Unverified(Arc<CryptoProvider>);

impl ServerCertVerifier for Unverified {
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
        verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
