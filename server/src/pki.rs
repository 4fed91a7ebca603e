//! The platform's certificate authority, as files in one directory.
//!
//! `init` makes the CA, the aggregator's certificate, an empty revocation list and a commented
//! `config.toml`; `issue-store` makes a store bundle; `revoke-store` adds a store's serial to
//! the CRL. A registry (`stores.toml`) remembers each store's serial, so revocation needs
//! nothing but the store's name. Private keys are written with mode 0600, and every file is
//! replaced atomically so a crash never leaves half a key or half a CRL.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use rand::{RngCore, SeedableRng};
use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose,
    IsCa, Issuer, KeyPair, KeyUsagePurpose, RevocationReason, RevokedCertParams, SanType, SerialNumber,
};
use serde::{Deserialize, Serialize};
use time::{Duration, OffsetDateTime};

/// File names inside a platform directory.
pub const CA_CERT: &str = "ca.pem";
pub const CA_KEY: &str = "ca.key";
pub const AGGREGATOR_CERT: &str = "aggregator.pem";
pub const AGGREGATOR_KEY: &str = "aggregator.key";
pub const CRL: &str = "crl.pem";
pub const REGISTRY: &str = "stores.toml";
pub const CONFIG: &str = "config.toml";

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("certificate generation: {0}")]
    Rcgen(#[from] rcgen::Error),
    #[error("{path}: {detail}")]
    Corrupt { path: PathBuf, detail: String },
    #[error("{0} already holds a platform CA; pass --force to replace it (every store bundle becomes useless)")]
    AlreadyInitialised(PathBuf),
    #[error("invalid store name {0:?}: use 1 to 64 of a-z, 0-9, '-' and '_'")]
    InvalidStoreName(String),
    #[error("store {0:?} already has a valid certificate; revoke it first to issue a new one")]
    AlreadyIssued(String),
    #[error("no store named {0:?} was ever issued a certificate")]
    UnknownStore(String),
    #[error("store {0:?} is already revoked")]
    AlreadyRevoked(String),
    #[error("a certificate valid for {0} days: use at most {MAX_VALIDITY_DAYS} (negative only to test expiry)")]
    InvalidValidity(i64),
    #[error("{path}: CRL number {number} cannot be raised")]
    CrlNumberExhausted { path: PathBuf, number: u64 },
}

/// Longest validity a certificate may have (100 years); beyond it dates leave what X.509 and
/// the time library represent.
pub const MAX_VALIDITY_DAYS: i64 = 36_500;

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> PkiError + '_ {
    move |source| PkiError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Writes `bytes` to `path` atomically (temporary file, fsync, rename, fsync of the directory),
/// with `mode` set before any byte is written so a key is never readable by others.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<(), PkiError> {
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let tmp = dir.join(format!(
        ".{}.tmp",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("file")
    ));
    let mut options = fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, mode);
    let mut file = options.open(&tmp).map_err(io(&tmp))?;
    // `mode` above only applies to a new file (and through the umask): force it exactly.
    #[cfg(unix)]
    fs::set_permissions(&tmp, std::os::unix::fs::PermissionsExt::from_mode(mode)).map_err(io(&tmp))?;
    file.write_all(bytes).map_err(io(&tmp))?;
    file.sync_all().map_err(io(&tmp))?;
    fs::rename(&tmp, path).map_err(io(path))?;
    if let Ok(d) = fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

fn read(path: &Path) -> Result<String, PkiError> {
    fs::read_to_string(path).map_err(io(path))
}

/// Validates a store name: it becomes a certificate common name and a file-name component.
pub fn check_store_name(name: &str) -> Result<(), PkiError> {
    let ok = (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(PkiError::InvalidStoreName(name.to_owned()))
    }
}

fn random_serial() -> SerialNumber {
    let mut bytes = [0u8; 16];
    rand::rngs::StdRng::from_os_rng().fill_bytes(&mut bytes);
    bytes[0] &= 0x7f; // positive
    bytes[0] |= 0x01; // and no leading zero byte to strip
    SerialNumber::from_slice(&bytes)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    (0..s.len())
        .step_by(2)
        .map(|i| s.get(i..i + 2).and_then(|h| u8::from_str_radix(h, 16).ok()))
        .collect()
}

/// What the registry remembers about one store's certificate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoreRecord {
    pub serial: String,
    pub issued_at: String,
    pub not_after: String,
    pub revoked_at: Option<String>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Registry {
    crl_number: u64,
    #[serde(default)]
    stores: BTreeMap<String, StoreRecord>,
    /// Serials revoked earlier, kept on the CRL after a store is re-issued a certificate.
    #[serde(default)]
    revoked_serials: Vec<String>,
}

pub use fedfuse_transport::StoreBundle;

/// Writes a store's bundle, mode 0600: it holds the store's private key.
pub fn save_bundle(bundle: &StoreBundle, path: &Path) -> Result<(), PkiError> {
    let text = format!(
        "# fedfuse store bundle for {:?}: this store's private key, its certificate and the platform CA.\n\
         # Keep it secret; if it leaks, run `fedfuse-server revoke-store --store {}`.\n{}",
        bundle.store,
        bundle.store,
        bundle.to_toml()
    );
    write_atomic(path, text.as_bytes(), 0o600)
}

/// Options for `init`.
#[derive(Debug, Clone)]
pub struct InitOptions {
    pub platform_name: String,
    /// The name stores verify; also written into `config.toml`.
    pub aggregator_name: String,
    /// Extra DNS names and IP addresses for the aggregator certificate.
    pub extra_names: Vec<String>,
    pub ca_days: i64,
    pub aggregator_days: i64,
    pub force: bool,
}

impl Default for InitOptions {
    fn default() -> Self {
        Self {
            platform_name: "fedfuse platform".into(),
            aggregator_name: crate::config::DEFAULT_AGGREGATOR_NAME.into(),
            extra_names: vec!["localhost".into(), "127.0.0.1".into(), "::1".into()],
            ca_days: 3650,
            aggregator_days: 825,
            force: false,
        }
    }
}

/// A platform directory made by [`init`].
#[derive(Debug, Clone)]
pub struct PlatformDir {
    pub root: PathBuf,
}

fn san(name: &str) -> Result<SanType, PkiError> {
    Ok(match name.parse::<std::net::IpAddr>() {
        Ok(ip) => SanType::IpAddress(ip),
        Err(_) => SanType::DnsName(name.try_into()?),
    })
}

fn validity(params: &mut CertificateParams, days: i64) -> Result<(), PkiError> {
    if days.abs() > MAX_VALIDITY_DAYS {
        return Err(PkiError::InvalidValidity(days));
    }
    let now = OffsetDateTime::now_utc();
    // A little slack for clocks that run behind.
    params.not_before = now - Duration::minutes(5);
    params.not_after = now + Duration::days(days);
    Ok(())
}

fn ca_params(platform_name: &str, days: i64) -> Result<CertificateParams, PkiError> {
    let mut p = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, format!("{platform_name} CA"));
    dn.push(DnType::OrganizationName, platform_name);
    p.distinguished_name = dn;
    p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    p.serial_number = Some(random_serial());
    validity(&mut p, days)?;
    Ok(p)
}

/// Creates a platform directory: CA, aggregator certificate, empty CRL, registry and config.
pub fn init(dir: &Path, opts: &InitOptions) -> Result<PlatformDir, PkiError> {
    fs::create_dir_all(dir).map_err(io(dir))?;
    if dir.join(CA_KEY).exists() && !opts.force {
        return Err(PkiError::AlreadyInitialised(dir.to_owned()));
    }
    let ca_key = KeyPair::generate()?;
    let ca_params = ca_params(&opts.platform_name, opts.ca_days)?;
    let ca_cert = ca_params.self_signed(&ca_key)?;
    let issuer = Issuer::new(ca_params, &ca_key);

    let agg_key = KeyPair::generate()?;
    let mut p = CertificateParams::default();
    p.distinguished_name = DistinguishedName::new();
    p.distinguished_name.push(DnType::CommonName, opts.aggregator_name.as_str());
    p.subject_alt_names = std::iter::once(&opts.aggregator_name)
        .chain(&opts.extra_names)
        .map(|n| san(n))
        .collect::<Result<_, _>>()?;
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    p.serial_number = Some(random_serial());
    p.use_authority_key_identifier_extension = true;
    validity(&mut p, opts.aggregator_days)?;
    let agg_cert = p.signed_by(&agg_key, &issuer)?;

    let platform = PlatformDir { root: dir.to_owned() };
    write_atomic(&dir.join(CA_KEY), ca_key.serialize_pem().as_bytes(), 0o600)?;
    write_atomic(&dir.join(CA_CERT), ca_cert.pem().as_bytes(), 0o644)?;
    write_atomic(&dir.join(AGGREGATOR_KEY), agg_key.serialize_pem().as_bytes(), 0o600)?;
    write_atomic(&dir.join(AGGREGATOR_CERT), agg_cert.pem().as_bytes(), 0o644)?;
    let mut registry = Registry::default();
    platform.write_crl(&mut registry)?;
    let config = crate::config::ServerConfig {
        server: crate::config::ServerSection {
            name: opts.aggregator_name.clone(),
            ..Default::default()
        },
        ..Default::default()
    };
    write_atomic(&dir.join(CONFIG), config.to_commented_toml().as_bytes(), 0o644)?;
    Ok(platform)
}

impl PlatformDir {
    pub fn open(dir: &Path) -> Result<Self, PkiError> {
        for f in [CA_CERT, CA_KEY, CRL, REGISTRY] {
            let path = dir.join(f);
            if !path.exists() {
                return Err(PkiError::Corrupt {
                    path,
                    detail: "missing: run `fedfuse-server init --dir` first".into(),
                });
            }
        }
        Ok(Self { root: dir.to_owned() })
    }

    pub fn path(&self, file: &str) -> PathBuf {
        self.root.join(file)
    }

    fn issuer(&self) -> Result<Issuer<'static, KeyPair>, PkiError> {
        let key_path = self.path(CA_KEY);
        let key = KeyPair::from_pem(&read(&key_path)?).map_err(|e| PkiError::Corrupt {
            path: key_path,
            detail: e.to_string(),
        })?;
        let cert_path = self.path(CA_CERT);
        Issuer::from_ca_cert_pem(&read(&cert_path)?, key).map_err(|e| PkiError::Corrupt {
            path: cert_path,
            detail: e.to_string(),
        })
    }

    fn registry(&self) -> Result<Registry, PkiError> {
        let path = self.path(REGISTRY);
        toml::from_str(&read(&path)?).map_err(|e| PkiError::Corrupt {
            path,
            detail: e.to_string(),
        })
    }

    fn save_registry(&self, registry: &Registry) -> Result<(), PkiError> {
        let text = format!(
            "# Certificates issued to stores, written by fedfuse-server. Edit with issue-store / revoke-store only.\n{}",
            toml::to_string(registry).expect("the registry serialises")
        );
        write_atomic(&self.path(REGISTRY), text.as_bytes(), 0o644)
    }

    /// Re-signs the CRL with every revoked serial and a new CRL number, then saves both.
    fn write_crl(&self, registry: &mut Registry) -> Result<(), PkiError> {
        registry.crl_number = registry
            .crl_number
            .checked_add(1)
            .ok_or_else(|| PkiError::CrlNumberExhausted {
                path: self.path(REGISTRY),
                number: registry.crl_number,
            })?;
        let now = OffsetDateTime::now_utc();
        // A serial that does not parse is an error, never skipped: skipping it would leave that
        // revoked store trusted while the operator believes it is locked out.
        let revoked_certs = registry
            .revoked_serials
            .iter()
            .map(|s| {
                let bytes = unhex(s).filter(|b| !b.is_empty()).ok_or_else(|| PkiError::Corrupt {
                    path: self.path(REGISTRY),
                    detail: format!("revoked serial {s:?} is not hexadecimal"),
                })?;
                Ok(RevokedCertParams {
                    serial_number: SerialNumber::from_slice(&bytes),
                    revocation_time: now,
                    reason_code: Some(RevocationReason::CessationOfOperation),
                    invalidity_date: None,
                })
            })
            .collect::<Result<Vec<_>, PkiError>>()?;
        let crl = CertificateRevocationListParams {
            this_update: now - Duration::minutes(5),
            next_update: now + Duration::days(365),
            crl_number: SerialNumber::from(registry.crl_number),
            issuing_distribution_point: None,
            revoked_certs,
            key_identifier_method: rcgen::KeyIdMethod::Sha256,
        }
        .signed_by(&self.issuer()?)?;
        write_atomic(&self.path(CRL), crl.pem()?.as_bytes(), 0o644)?;
        self.save_registry(registry)
    }

    /// Issues a store certificate valid for `days` days and returns its bundle.
    pub fn issue_store(&self, store: &str, days: i64) -> Result<StoreBundle, PkiError> {
        check_store_name(store)?;
        let mut registry = self.registry()?;
        if registry.stores.get(store).is_some_and(|r| r.revoked_at.is_none()) {
            return Err(PkiError::AlreadyIssued(store.to_owned()));
        }
        let key = KeyPair::generate()?;
        let serial = random_serial();
        let mut p = CertificateParams::default();
        p.distinguished_name = DistinguishedName::new();
        p.distinguished_name.push(DnType::CommonName, store);
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        p.serial_number = Some(serial.clone());
        p.use_authority_key_identifier_extension = true;
        validity(&mut p, days)?;
        let cert = p.signed_by(&key, &self.issuer()?)?;
        registry.stores.insert(
            store.to_owned(),
            StoreRecord {
                serial: hex(&serial.to_bytes()),
                issued_at: p.not_before.to_string(),
                not_after: p.not_after.to_string(),
                revoked_at: None,
            },
        );
        self.save_registry(&registry)?;
        let aggregator_name = crate::config::ServerConfig::load(&self.path(CONFIG))
            .map(|c| c.server.name)
            .unwrap_or_else(|_| crate::config::DEFAULT_AGGREGATOR_NAME.into());
        Ok(StoreBundle {
            store: store.to_owned(),
            aggregator_name,
            ca_pem: read(&self.path(CA_CERT))?,
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// Revokes a store's current certificate: its serial goes on the CRL.
    pub fn revoke_store(&self, store: &str) -> Result<(), PkiError> {
        let mut registry = self.registry()?;
        let record = registry
            .stores
            .get_mut(store)
            .ok_or_else(|| PkiError::UnknownStore(store.to_owned()))?;
        if record.revoked_at.is_some() {
            return Err(PkiError::AlreadyRevoked(store.to_owned()));
        }
        record.revoked_at = Some(OffsetDateTime::now_utc().to_string());
        let serial = record.serial.clone();
        registry.revoked_serials.push(serial);
        self.write_crl(&mut registry)
    }

    /// The stores ever issued, by name.
    pub fn stores(&self) -> Result<BTreeMap<String, StoreRecord>, PkiError> {
        Ok(self.registry()?.stores)
    }

    /// The aggregator's identity and trust anchors, as the transport wants them.
    pub fn aggregator_tls(&self) -> Result<(fedfuse_transport::Identity, fedfuse_transport::TrustAnchors), PkiError> {
        let corrupt = |file: &str| {
            let path = self.path(file);
            move |e: fedfuse_transport::TransportError| PkiError::Corrupt {
                path,
                detail: e.to_string(),
            }
        };
        let identity =
            fedfuse_transport::Identity::from_pem(&read(&self.path(AGGREGATOR_CERT))?, &read(&self.path(AGGREGATOR_KEY))?)
                .map_err(corrupt(AGGREGATOR_KEY))?;
        let trust = fedfuse_transport::TrustAnchors::from_pem(&read(&self.path(CA_CERT))?, &[&read(&self.path(CRL))?])
            .map_err(corrupt(CRL))?;
        Ok((identity, trust))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_validity_beyond_a_century_is_an_error_not_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        let opts = InitOptions {
            ca_days: i64::MAX,
            ..InitOptions::default()
        };
        assert!(matches!(init(dir.path(), &opts), Err(PkiError::InvalidValidity(i64::MAX))));
        let platform = init(dir.path(), &InitOptions::default()).unwrap();
        let err = platform.issue_store("paris", 3_000_000).unwrap_err();
        assert!(err.to_string().contains("valid for 3000000 days"), "{err}");
        assert!(
            platform.issue_store("paris", 365).is_ok(),
            "a refused issue leaves nothing behind"
        );
    }

    #[test]
    fn a_revoked_serial_that_does_not_parse_stops_the_crl_instead_of_being_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let platform = init(dir.path(), &InitOptions::default()).unwrap();
        platform.issue_store("paris", 30).unwrap();
        let registry = dir.path().join(REGISTRY);
        let text = std::fs::read_to_string(&registry).unwrap();
        assert!(text.contains("revoked_serials = []"), "{text}");
        std::fs::write(&registry, text.replace("revoked_serials = []", "revoked_serials = [\"zz\"]")).unwrap();
        let err = platform.revoke_store("paris").unwrap_err().to_string();
        assert!(err.contains("revoked serial \"zz\" is not hexadecimal"), "{err}");
        assert!(
            platform.stores().unwrap()["paris"].revoked_at.is_none(),
            "nothing half-revoked"
        );
    }
}
