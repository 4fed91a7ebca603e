use fedfuse_protocol::{DecodeError, EncodeError};

#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("TLS configuration: {0}")]
    Tls(String),
    #[error("store bundle: {0}")]
    Bundle(String),
    #[error("cannot bind or configure the endpoint: {0}")]
    Io(#[from] std::io::Error),
    #[error("connecting failed: {0}")]
    Connect(#[from] quinn::ConnectError),
    #[error("connection lost: {0}")]
    Connection(#[from] quinn::ConnectionError),
    #[error("stream write failed: {0}")]
    Write(#[from] quinn::WriteError),
    #[error("stream read failed: {0}")]
    Read(String),
    #[error("peer sent bad bytes: {0}")]
    Decode(#[from] DecodeError),
    #[error("cannot encode: {0}")]
    Encode(#[from] EncodeError),
    #[error("peer certificate: {0}")]
    PeerIdentity(String),
    #[error("model transfer: {0}")]
    Model(String),
    #[error("unexpected message: expected {expected}, got {got:?}")]
    Unexpected {
        expected: &'static str,
        got: fedfuse_protocol::MessageKind,
    },
}

impl From<quinn::ReadExactError> for TransportError {
    fn from(e: quinn::ReadExactError) -> Self {
        match e {
            quinn::ReadExactError::FinishedEarly(n) => TransportError::Read(format!("stream ended early after {n} bytes")),
            quinn::ReadExactError::ReadError(e) => TransportError::Read(e.to_string()),
        }
    }
}

impl From<quinn::ReadToEndError> for TransportError {
    fn from(e: quinn::ReadToEndError) -> Self {
        TransportError::Read(e.to_string())
    }
}
