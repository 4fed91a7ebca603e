//! Endpoints: the aggregator listens, stores connect.

use std::net::SocketAddr;
use std::sync::Arc;

use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};

use crate::connection::{HANDSHAKE_MAX_MESSAGE_BYTES, PeerConnection};
use crate::error::TransportError;
use crate::tls::{self, Identity, TrustAnchors};
use crate::tuning::TransportTuning;

fn quic_server_config(
    identity: &Identity,
    trust: &TrustAnchors,
    tuning: &TransportTuning,
) -> Result<quinn::ServerConfig, TransportError> {
    let crypto =
        QuicServerConfig::try_from(tls::server_config(identity, trust)?).map_err(|e| TransportError::Tls(e.to_string()))?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    config.transport_config(tuning.transport_config());
    Ok(config)
}

fn endpoint_config(tuning: &TransportTuning) -> quinn::EndpointConfig {
    let mut config = quinn::EndpointConfig::default();
    // Let MTU discovery reach what the tuning allows; quinn rejects datagrams above this.
    let _ = config.max_udp_payload_size(tuning.mtu_discovery_upper_bound.max(1200));
    config
}

fn new_endpoint(
    tuning: &TransportTuning,
    addr: SocketAddr,
    server: Option<quinn::ServerConfig>,
) -> Result<quinn::Endpoint, TransportError> {
    use quinn::Runtime;
    let runtime = Arc::new(quinn::TokioRuntime);
    let socket = crate::gso::GsoSafeSocket::wrap(runtime.wrap_udp_socket(tuning.bind_udp(addr)?)?);
    Ok(quinn::Endpoint::new_with_abstract_socket(
        endpoint_config(tuning),
        server,
        socket,
        runtime,
    )?)
}

/// The aggregator's QUIC endpoint.
pub struct AggregatorEndpoint {
    endpoint: quinn::Endpoint,
    identity: Identity,
    tuning: TransportTuning,
}

impl AggregatorEndpoint {
    pub fn bind(
        addr: SocketAddr,
        identity: Identity,
        trust: &TrustAnchors,
        tuning: TransportTuning,
    ) -> Result<Self, TransportError> {
        let config = quic_server_config(&identity, trust, &tuning)?;
        let endpoint = new_endpoint(&tuning, addr, Some(config))?;
        Ok(Self {
            endpoint,
            identity,
            tuning,
        })
    }

    pub fn local_addr(&self) -> Result<SocketAddr, TransportError> {
        Ok(self.endpoint.local_addr()?)
    }

    /// Swaps in new trust anchors (after `revoke-store` wrote a new CRL) without a restart.
    /// New handshakes use them; connections already open are the caller's to close.
    pub fn reload_trust(&self, trust: &TrustAnchors) -> Result<(), TransportError> {
        self.endpoint
            .set_server_config(Some(quic_server_config(&self.identity, trust, &self.tuning)?));
        Ok(())
    }

    /// Waits for the next connection attempt and completes its handshake. `None` once the
    /// endpoint is closed; `Some(Err)` for an attempt that failed (bad or missing
    /// certificate, revoked store): log it and keep accepting.
    pub async fn accept(&self) -> Option<Result<PeerConnection, TransportError>> {
        let incoming = self.endpoint.accept().await?;
        Some(self.complete(incoming).await)
    }

    async fn complete(&self, incoming: quinn::Incoming) -> Result<PeerConnection, TransportError> {
        let conn = incoming.await?;
        let certs = conn
            .peer_identity()
            .and_then(|id| id.downcast::<Vec<rustls_pki_types::CertificateDer<'static>>>().ok())
            .ok_or_else(|| TransportError::PeerIdentity("no client certificate".into()))?;
        let leaf = certs
            .first()
            .ok_or_else(|| TransportError::PeerIdentity("empty certificate chain".into()))?;
        let store_id = tls::peer_common_name(leaf)?;
        Ok(PeerConnection::new(conn, store_id, HANDSHAKE_MAX_MESSAGE_BYTES))
    }

    pub fn close(&self) {
        self.endpoint.close(0u32.into(), b"aggregator shutting down");
    }

    pub async fn wait_idle(&self) {
        self.endpoint.wait_idle().await;
    }
}

/// A store's QUIC endpoint.
pub struct StoreEndpoint {
    endpoint: quinn::Endpoint,
}

impl StoreEndpoint {
    /// `identity` is `None` only to test that an aggregator refuses certificate-less peers.
    pub fn new(identity: Option<&Identity>, trust: &TrustAnchors, tuning: &TransportTuning) -> Result<Self, TransportError> {
        let crypto =
            QuicClientConfig::try_from(tls::client_config(identity, trust)?).map_err(|e| TransportError::Tls(e.to_string()))?;
        let mut config = quinn::ClientConfig::new(Arc::new(crypto));
        config.transport_config(tuning.transport_config());
        let mut endpoint = new_endpoint(tuning, SocketAddr::from(([0, 0, 0, 0], 0)), None)?;
        endpoint.set_default_client_config(config);
        Ok(Self { endpoint })
    }

    /// Connects and verifies the aggregator's certificate against the pinned CA and
    /// `server_name`.
    pub async fn connect(&self, addr: SocketAddr, server_name: &str) -> Result<PeerConnection, TransportError> {
        let conn = self.endpoint.connect(addr, server_name)?.await?;
        Ok(PeerConnection::new(conn, server_name.to_owned(), HANDSHAKE_MAX_MESSAGE_BYTES))
    }

    pub async fn wait_idle(&self) {
        self.endpoint.wait_idle().await;
    }
}
