//! A store's credentials as the platform hands them over: its key and certificate, the CA to
//! pin and the name the aggregator's certificate must carry. `fedfuse-server issue-store`
//! writes it; the store agent reads it.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::{Identity, TransportError, TrustAnchors};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoreBundle {
    pub store: String,
    pub aggregator_name: String,
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
}

impl StoreBundle {
    pub fn from_toml(text: &str) -> Result<Self, TransportError> {
        toml::from_str(text).map_err(|e| TransportError::Bundle(e.to_string()))
    }

    pub fn to_toml(&self) -> String {
        toml::to_string(self).expect("a bundle serialises")
    }

    /// Reads a bundle file; the error names the file.
    pub fn load(path: &Path) -> Result<Self, TransportError> {
        let text = std::fs::read_to_string(path).map_err(|e| TransportError::Bundle(format!("{}: {e}", path.display())))?;
        Self::from_toml(&text).map_err(|e| TransportError::Bundle(format!("{}: {e}", path.display())))
    }

    /// The store's identity and trust anchor (the platform CA only).
    pub fn tls(&self) -> Result<(Identity, TrustAnchors), TransportError> {
        Ok((
            Identity::from_pem(&self.cert_pem, &self.key_pem)?,
            TrustAnchors::from_pem(&self.ca_pem, &[])?,
        ))
    }
}
