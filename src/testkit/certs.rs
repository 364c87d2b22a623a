//! Certificates for TLS tests, made at run time: no private key is ever committed. Every
//! failure here is a broken test setup, and panics.

use std::path::PathBuf;

use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};

use crate::config::Config;

/// An authority and the certificates it signs, written under a temporary folder.
pub struct Authority {
    dir: tempfile::TempDir,
    cert: rcgen::Certificate,
    key: KeyPair,
}

impl Default for Authority {
    fn default() -> Self {
        Self::new()
    }
}

impl Authority {
    /// A new authority, its certificate written to a temporary folder.
    pub fn new() -> Authority {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let cert = params.self_signed(&key).unwrap();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ca.pem"), cert.pem()).unwrap();
        Authority { dir, cert, key }
    }

    /// The authority's certificate.
    pub fn ca_file(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    /// A certificate naming `name`, saved as `<file>.pem` and `<file>.key`.
    pub fn issue(&self, name: &str, file: &str) -> (PathBuf, PathBuf) {
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(vec![name.to_string()])
            .unwrap()
            .signed_by(&key, &self.cert, &self.key)
            .unwrap();
        let (cert_file, key_file) = (
            self.dir.path().join(format!("{file}.pem")),
            self.dir.path().join(format!("{file}.key")),
        );
        std::fs::write(&cert_file, cert.pem()).unwrap();
        std::fs::write(&key_file, key.serialize_pem()).unwrap();
        (cert_file, key_file)
    }

    /// Sets `config`'s `[tls]` with a certificate naming `name`.
    pub fn configure(&self, config: &mut Config, name: &str) {
        let (cert, key) = self.issue(name, &config.node_id);
        config.tls.cert_file = Some(cert);
        config.tls.key_file = Some(key);
        config.tls.ca_file = Some(self.ca_file());
        config.tls.require_client_cert = true;
    }
}
