//! TLS with mutual certificates between engines (rustls, ring provider).
//!
//! Both engines of a pair hold a certificate signed by the same CA (`understudy certs init`
//! makes one). The target requires the source's certificate; the source checks the target's
//! against the CA and the address it connects to. The versioned handshake (and the shared
//! secret, if one is also configured) then runs inside the encrypted stream.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};

/// An engine's TLS files.
#[derive(Clone, Debug)]
pub struct TlsFiles {
    /// Its certificate (PEM), signed by the CA.
    pub cert: PathBuf,
    /// Its private key (PEM).
    pub key: PathBuf,
    /// The CA certificate both engines trust (PEM).
    pub ca: PathBuf,
}

/// Loaded TLS configuration, for both directions.
#[derive(Clone, Debug)]
pub struct Tls {
    /// For accepting replication connections.
    pub server: Arc<ServerConfig>,
    /// For connecting to targets.
    pub client: Arc<ClientConfig>,
}

/// TLS could not be set up.
#[derive(Debug, thiserror::Error)]
#[error("TLS: {0}")]
pub struct TlsError(String);

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs: Result<Vec<_>, _> = CertificateDer::pem_file_iter(path)
        .map_err(|e| TlsError(format!("cannot read {}: {e}", path.display())))?
        .collect();
    let certs =
        certs.map_err(|e| TlsError(format!("{} is not a PEM certificate: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(TlsError(format!("{} holds no certificate", path.display())));
    }
    Ok(certs)
}

impl Tls {
    /// Loads the files.
    ///
    /// # Errors
    ///
    /// A file is missing or not what it should be, with which and why.
    pub fn load(files: &TlsFiles) -> Result<Tls, TlsError> {
        let chain = certificates(&files.cert)?;
        let key = PrivateKeyDer::from_pem_file(&files.key).map_err(|e| {
            TlsError(format!("cannot read the private key {}: {e}", files.key.display()))
        })?;
        let mut roots = RootCertStore::empty();
        for ca in certificates(&files.ca)? {
            roots.add(ca).map_err(|e| {
                TlsError(format!("{} is not a usable CA certificate: {e}", files.ca.display()))
            })?;
        }
        let roots = Arc::new(roots);
        let verifier = WebPkiClientVerifier::builder_with_provider(Arc::clone(&roots), provider())
            .build()
            .map_err(|e| {
                TlsError(format!("cannot verify peers with {}: {e}", files.ca.display()))
            })?;
        let mismatched = |e: rustls::Error| {
            TlsError(format!(
                "{} does not go with {}: {e}",
                files.cert.display(),
                files.key.display()
            ))
        };
        let server = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError(e.to_string()))?
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain.clone(), key.clone_key())
            .map_err(mismatched)?;
        let client = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError(e.to_string()))?
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)
            .map_err(mismatched)?;
        Ok(Tls { server: Arc::new(server), client: Arc::new(client) })
    }
}

/// The name a target's certificate must carry for a connection to `address` (`host:port`).
///
/// # Errors
///
/// The host part is neither an IP address nor a DNS name.
pub fn server_name(address: &str) -> Result<ServerName<'static>, TlsError> {
    let host = address.rsplit_once(':').map_or(address, |(host, _)| host);
    let host = host.trim_start_matches('[').trim_end_matches(']');
    ServerName::try_from(host.to_string())
        .map_err(|e| TlsError(format!("{host:?} cannot be checked against a certificate: {e}")))
}
