//! TLS on the forwarding connections (rustls with the `ring` provider): the settings read from
//! `[tls]`, and the check of a peer's certificate against its node id.
//!
//! Every node has a certificate that names its node id as a DNS subject alternative name,
//! signed by an authority in `ca_file`. A dialer checks the listener's certificate against the
//! node id it means to reach (rustls does, with the node id as the server name); a listener
//! checks the dialer's certificate, when there is one (always, with `require_client_cert`),
//! against the node id of its hello.

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use tokio_rustls::{TlsAcceptor, TlsConnector};

use crate::config::TlsConfig;
use crate::error::ConfigError;

/// The TLS side of a forwarder: an acceptor for inbound connections, a connector for outbound
/// ones. Cheap to clone.
#[derive(Clone)]
pub struct Tls {
    /// Accepts inbound connections.
    pub acceptor: TlsAcceptor,
    /// Dials outbound connections.
    pub connector: TlsConnector,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Tls(..)")
    }
}

fn certificates(key: &str, path: &Path) -> Result<Vec<CertificateDer<'static>>, ConfigError> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|err| {
            ConfigError::invalid(key, format!("cannot read {}: {err}", path.display()))
        })?;
    if certs.is_empty() {
        return Err(ConfigError::invalid(
            key,
            format!("{} holds no PEM certificate", path.display()),
        ));
    }
    Ok(certs)
}

fn private_key(path: &Path) -> Result<PrivateKeyDer<'static>, ConfigError> {
    PrivateKeyDer::from_pem_file(path).map_err(|err| {
        ConfigError::invalid(
            "tls.key_file",
            format!("cannot read a private key from {}: {err}", path.display()),
        )
    })
}

impl Tls {
    /// Reads the files of a validated `config` (the node does, as it starts); `None` when
    /// TLS is not configured. Every error names the key whose file is wrong.
    pub fn load(config: &TlsConfig) -> Result<Option<Tls>, ConfigError> {
        let (Some(cert_file), Some(key_file), Some(ca_file)) =
            (&config.cert_file, &config.key_file, &config.ca_file)
        else {
            return Ok(None);
        };
        let chain = certificates("tls.cert_file", cert_file)?;
        let key = private_key(key_file)?;
        let mut roots = RootCertStore::empty();
        for ca in certificates("tls.ca_file", ca_file)? {
            roots.add(ca).map_err(|err| {
                ConfigError::invalid("tls.ca_file", format!("{}: {err}", ca_file.display()))
            })?;
        }
        let roots = Arc::new(roots);
        let provider = Arc::new(rustls::crypto::ring::default_provider());

        let verifier = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone());
        let verifier = if config.require_client_cert {
            verifier.build()
        } else {
            verifier.allow_unauthenticated().build()
        }
        .map_err(|err| ConfigError::invalid("tls.ca_file", err.to_string()))?;
        let server = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|err| ConfigError::invalid("tls.cert_file", err.to_string()))?
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain.clone(), key.clone_key())
            .map_err(|err| {
                ConfigError::invalid(
                    "tls.key_file",
                    format!("does not match tls.cert_file: {err}"),
                )
            })?;
        let client = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|err| ConfigError::invalid("tls.cert_file", err.to_string()))?
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)
            .map_err(|err| {
                ConfigError::invalid(
                    "tls.key_file",
                    format!("does not match tls.cert_file: {err}"),
                )
            })?;
        Ok(Some(Tls {
            acceptor: TlsAcceptor::from(Arc::new(server)),
            connector: TlsConnector::from(Arc::new(client)),
        }))
    }
}

/// A TLS acceptor for a node's client-facing listeners (a router's wss:// and RawSocket over
/// TLS): it presents the node's `[tls]` certificate and asks clients for none. `None` when
/// `cert_file` and `key_file` are not both set. Errors name the key whose file is wrong.
pub fn client_acceptor(config: &TlsConfig) -> Result<Option<TlsAcceptor>, ConfigError> {
    let (Some(cert_file), Some(key_file)) = (&config.cert_file, &config.key_file) else {
        return Ok(None);
    };
    let chain = certificates("tls.cert_file", cert_file)?;
    let key = private_key(key_file)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let server = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|err| ConfigError::invalid("tls.cert_file", err.to_string()))?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|err| {
            ConfigError::invalid(
                "tls.key_file",
                format!("does not match tls.cert_file: {err}"),
            )
        })?;
    Ok(Some(TlsAcceptor::from(Arc::new(server))))
}

/// Whether `certificate` (already verified against the authorities) names `node_id`.
pub(crate) fn names(certificate: &CertificateDer<'_>, node_id: &str) -> bool {
    let Ok(name) = crate::node_id::dns_name(node_id) else {
        return false;
    };
    webpki::EndEntityCert::try_from(certificate)
        .is_ok_and(|cert| cert.verify_is_valid_for_subject_name(&name).is_ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_files_are_read_at_load_and_a_missing_or_bad_one_is_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let path = |name: &str| Some(dir.path().join(name));
        assert!(Tls::load(&TlsConfig::default()).unwrap().is_none());
        let config = TlsConfig {
            cert_file: path("cert.pem"),
            key_file: path("key.pem"),
            ca_file: path("ca.pem"),
            require_client_cert: true,
        };
        let missing = Tls::load(&config).unwrap_err().to_string();
        assert!(missing.contains("`tls.cert_file`") && missing.contains("cannot read"));
        std::fs::write(dir.path().join("cert.pem"), "not a certificate").unwrap();
        let empty = Tls::load(&config).unwrap_err().to_string();
        assert!(
            empty.contains("`tls.cert_file`") && empty.contains("no PEM"),
            "{empty}"
        );
    }
}
