//! rustls configurations for both ends of a fedfuse connection.
//!
//! Only TLS 1.3 (QUIC requires it) with the ring provider; only the platform CA is trusted on
//! either side, never the system roots: a fedfuse federation is a closed PKI.

use std::sync::Arc;

use rustls::RootCertStore;
use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};

use crate::error::TransportError;

fn tls(e: impl std::fmt::Display) -> TransportError {
    TransportError::Tls(e.to_string())
}

/// A certificate chain and its private key: the aggregator's or a store's.
#[derive(Debug)]
pub struct Identity {
    pub cert_chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
}

impl Clone for Identity {
    fn clone(&self) -> Self {
        Self {
            cert_chain: self.cert_chain.clone(),
            key: self.key.clone_key(),
        }
    }
}

impl Identity {
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Self, TransportError> {
        let cert_chain = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| tls(format!("certificate PEM: {e}")))?;
        if cert_chain.is_empty() {
            return Err(tls("no certificate in PEM"));
        }
        let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|e| tls(format!("private key PEM: {e}")))?;
        Ok(Self { cert_chain, key })
    }
}

/// What a peer trusts: the platform CA, and the CA's revocation lists (aggregator side).
#[derive(Debug, Clone)]
pub struct TrustAnchors {
    pub ca: CertificateDer<'static>,
    pub crls: Vec<CertificateRevocationListDer<'static>>,
}

impl TrustAnchors {
    pub fn from_pem(ca_pem: &str, crl_pems: &[&str]) -> Result<Self, TransportError> {
        let ca = CertificateDer::from_pem_slice(ca_pem.as_bytes()).map_err(|e| tls(format!("CA PEM: {e}")))?;
        let crls = crl_pems
            .iter()
            .map(|p| CertificateRevocationListDer::from_pem_slice(p.as_bytes()).map_err(|e| tls(format!("CRL PEM: {e}"))))
            .collect::<Result<_, _>>()?;
        Ok(Self { ca, crls })
    }

    fn roots(&self) -> Result<Arc<RootCertStore>, TransportError> {
        let mut roots = RootCertStore::empty();
        roots.add(self.ca.clone()).map_err(tls)?;
        Ok(Arc::new(roots))
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The aggregator's TLS: client certificates are mandatory, must chain to the platform CA,
/// and must not be revoked. With no CRL loaded, revocation cannot be checked, so a missing CRL
/// is refused here rather than silently accepting every certificate.
pub fn server_config(identity: &Identity, trust: &TrustAnchors) -> Result<rustls::ServerConfig, TransportError> {
    if trust.crls.is_empty() {
        return Err(tls("the aggregator needs the platform CA's revocation list (crl.pem)"));
    }
    let verifier = WebPkiClientVerifier::builder_with_provider(trust.roots()?, provider())
        .with_crls(trust.crls.iter().cloned())
        .build()
        .map_err(tls)?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(tls)?
        .with_client_cert_verifier(verifier)
        .with_single_cert(identity.cert_chain.clone(), identity.key.clone_key())
        .map_err(tls)?;
    config.alpn_protocols = vec![crate::ALPN.to_vec()];
    Ok(config)
}

/// A store's TLS: trusts only the platform CA; presents its certificate when it has one (a
/// store without one is only useful for testing that the aggregator refuses it).
pub fn client_config(identity: Option<&Identity>, trust: &TrustAnchors) -> Result<rustls::ClientConfig, TransportError> {
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(tls)?
        .with_root_certificates(trust.roots()?);
    let mut config = match identity {
        Some(id) => builder
            .with_client_auth_cert(id.cert_chain.clone(), id.key.clone_key())
            .map_err(tls)?,
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![crate::ALPN.to_vec()];
    Ok(config)
}

/// The store's name: the common name of the certificate the peer proved it holds. Never taken
/// from anything the peer says in a message.
pub fn peer_common_name(cert: &CertificateDer<'_>) -> Result<String, TransportError> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref())
        .map_err(|e| TransportError::PeerIdentity(format!("unparsable certificate: {e}")))?;
    let cn = parsed
        .subject()
        .iter_common_name()
        .next()
        .ok_or_else(|| TransportError::PeerIdentity("certificate has no common name".into()))?;
    cn.as_str()
        .map(str::to_owned)
        .map_err(|e| TransportError::PeerIdentity(format!("common name is not a string: {e}")))
}
