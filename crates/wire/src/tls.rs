//! TLS for agent-to-hub and broker connections (rustls, ring).
//!
//! The client trusts either exactly the certificate whose SHA-256 is pinned
//! in its token (a self-signed hub: no CA needed, and no other certificate
//! is accepted, whoever signed it), or, without a pin, the system's CA
//! store (a hub with a certificate from a real CA).
//!
//! A broker (NATS, MQTT) is reached with [`TlsOptions`]: the configured CA
//! or the system's, and optionally a client certificate.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};

/// Why TLS could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A certificate, key or CA file could not be read.
    #[error("cannot read {path}: {detail}")]
    Read {
        /// The file.
        path: String,
        /// The I/O or parse error.
        detail: String,
    },
    /// A file holds no PEM object of the kind it should.
    #[error("{path} holds no {what}")]
    Empty {
        /// The file.
        path: String,
        /// What was looked for, such as `certificate`.
        what: &'static str,
    },
    /// A CA file holds a certificate that cannot serve as a trust anchor.
    #[error(
        "{path}: a certificate that cannot be trusted as a CA ({detail}); give a PEM file of CA certificates"
    )]
    BadCa {
        /// The CA file.
        path: String,
        /// Why the certificate was refused.
        detail: String,
    },
    /// rustls refused the configuration (a key that does not match its
    /// certificate, for example).
    #[error("TLS setup failed: {0}")]
    Rustls(#[from] rustls::Error),
}

/// The crypto provider palisade uses everywhere (ring).
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// SHA-256 of a certificate's DER encoding: what tokens pin.
pub fn fingerprint(cert: &CertificateDer<'_>) -> [u8; 32] {
    crate::sha256(cert.as_ref())
}

/// A client configuration trusting exactly the pinned certificate, or the
/// system CA store when there is no pin.
pub fn client_config(pin: Option<[u8; 32]>) -> Result<rustls::ClientConfig, TlsError> {
    let provider = provider();
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?;
    let config = match pin {
        Some(pin) => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(Pinned { pin, provider }))
            .with_no_client_auth(),
        None => {
            let mut roots = rustls::RootCertStore::empty();
            for cert in rustls_native_certs::load_native_certs().certs {
                let _ = roots.add(cert);
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        }
    };
    Ok(config)
}

/// How to reach a broker over TLS: which CAs to trust and which client
/// certificate to present.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct TlsOptions {
    /// CA certificates (PEM) to trust instead of the system's.
    pub ca: Option<PathBuf>,
    /// A client certificate and key (PEM), for servers that verify clients.
    pub client: Option<(PathBuf, PathBuf)>,
}

impl TlsOptions {
    /// A client configuration trusting the configured CA, else the system's
    /// CAs, and presenting the client certificate if there is one.
    pub fn client_config(&self) -> Result<rustls::ClientConfig, TlsError> {
        let mut roots = rustls::RootCertStore::empty();
        match &self.ca {
            Some(ca) => {
                for cert in load_certs(ca)? {
                    roots.add(cert).map_err(|e| TlsError::BadCa {
                        path: ca.display().to_string(),
                        detail: e.to_string(),
                    })?;
                }
            }
            None => {
                for cert in rustls_native_certs::load_native_certs().certs {
                    let _ = roots.add(cert);
                }
            }
        }
        let builder = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots);
        match &self.client {
            None => Ok(builder.with_no_client_auth()),
            Some((cert, key)) => {
                let chain = load_certs(cert)?;
                let key = load_key(key)?;
                Ok(builder.with_client_auth_cert(chain, key)?)
            }
        }
    }
}

/// A server configuration from PEM files (certificate chain, private key).
pub fn server_config(cert_pem: &Path, key_pem: &Path) -> Result<rustls::ServerConfig, TlsError> {
    let chain = load_certs(cert_pem)?;
    let key = load_key(key_pem)?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(chain, key)?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

/// The private key of a PEM file.
fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| TlsError::Read {
        path: path.display().to_string(),
        detail: e.to_string(),
    })
}

/// The certificates of a PEM file, leaf first.
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
        .and_then(|it| it.collect())
        .map_err(|e| TlsError::Read {
            path: path.display().to_string(),
            detail: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::Empty {
            path: path.display().to_string(),
            what: "certificate",
        });
    }
    Ok(certs)
}

/// Accepts exactly one certificate, by its SHA-256, and still checks that
/// the server proves it holds that certificate's key.
#[derive(Debug)]
struct Pinned {
    pin: [u8; 32],
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        // A pin is not a secret (it hashes a public certificate): plain
        // comparison is fine.
        if fingerprint(end_entity) == self.pin {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::General(format!(
                "the hub's certificate ({}) is not the one pinned in the token ({}); the token belongs to another hub, or someone is in the middle",
                crate::token::show_pin(&fingerprint(end_entity)),
                crate::token::show_pin(&self.pin)
            )))
        }
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
            &self.provider.signature_verification_algorithms,
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
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}
