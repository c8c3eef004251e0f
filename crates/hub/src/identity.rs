//! The hub's TLS identity: a self-signed certificate made on first start
//! (agents pin it through their tokens), or one the operator configured.

use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use palisade_wire::tls;

/// Where the hub's certificate and key are, and the pin tokens carry.
#[derive(Debug, Clone)]
pub struct Identity {
    /// The certificate (PEM).
    pub cert: PathBuf,
    /// Its private key (PEM).
    pub key: PathBuf,
    /// SHA-256 of the certificate; `None` for an operator's certificate from
    /// a real CA (agents then check it against the system's CAs, so it can
    /// be renewed without new tokens).
    pub pin: Option<[u8; 32]>,
}

/// Uses the configured certificate, or the hub's own (made on first start
/// in `dir`, valid for `names`).
pub fn ensure(
    dir: &Path,
    configured: Option<(PathBuf, PathBuf)>,
    names: &[String],
) -> Result<Identity> {
    if let Some((cert, key)) = configured {
        tls::server_config(&cert, &key).with_context(|| {
            format!(
                "the configured certificate {} is not usable",
                cert.display()
            )
        })?;
        return Ok(Identity {
            cert,
            key,
            pin: None,
        });
    }
    let cert = dir.join("hub.crt");
    let key = dir.join("hub.key");
    if !cert.exists() || !key.exists() {
        let mut sans = vec!["palisade-hub".to_string(), "localhost".to_string()];
        sans.extend(names.iter().cloned());
        sans.dedup();
        let pair = rcgen::KeyPair::generate().context("generating the hub's key")?;
        let mut params = rcgen::CertificateParams::new(sans).context("certificate names")?;
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "palisade hub");
        // Pinned certificates never need renewing; make it outlive the hub.
        params.not_before = rcgen::date_time_ymd(2024, 1, 1);
        params.not_after = rcgen::date_time_ymd(2124, 1, 1);
        let c = params
            .self_signed(&pair)
            .context("signing the hub's certificate")?;
        write_private(&key, pair.serialize_pem().as_bytes())?;
        std::fs::write(&cert, c.pem()).with_context(|| format!("writing {}", cert.display()))?;
        tracing::info!(cert = %cert.display(), "created the hub's certificate");
    }
    let leaf = tls::load_certs(&cert)?.remove(0);
    Ok(Identity {
        pin: Some(tls::fingerprint(&leaf)),
        cert,
        key,
    })
}

/// Writes a file readable by root only.
pub fn write_private(path: &Path, data: &[u8]) -> Result<()> {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    f.write_all(data)?;
    Ok(())
}
