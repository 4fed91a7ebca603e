//! The `fedfuse-server` certificate commands, run as a user would run them.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use fedfuse_server::pki::{self, StoreBundle};

fn server(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_fedfuse-server"))
        .args(args)
        .env("RUST_BACKTRACE", "0")
        .output()
        .unwrap()
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[test]
fn init_issue_revoke_round_trip_with_private_keys_0600() {
    let dir = tempfile::tempdir().unwrap();
    let platform = dir.path().join("platform");
    let p = platform.to_str().unwrap();
    let out = server(&["init", "--dir", p, "--aggregator-name", "agg.example", "--san", "10.1.2.3"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    for key in [pki::CA_KEY, pki::AGGREGATOR_KEY] {
        assert_eq!(mode(&platform.join(key)), 0o600, "{key}");
    }
    // The config is commented and names the aggregator as init was told.
    let config = std::fs::read_to_string(platform.join(pki::CONFIG)).unwrap();
    assert!(config.contains("name = \"agg.example\"") && config.lines().filter(|l| l.starts_with('#')).count() > 10);

    // A second init would destroy the CA: refused without --force.
    let again = server(&["init", "--dir", p]);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("--force"));

    let bundle_path = dir.path().join("berlin.bundle.toml");
    let out = server(&[
        "issue-store",
        "--dir",
        p,
        "--store",
        "berlin-01",
        "--out",
        bundle_path.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(mode(&bundle_path), 0o600);
    let bundle = StoreBundle::load(&bundle_path).unwrap();
    assert_eq!(bundle.store, "berlin-01");
    assert_eq!(bundle.aggregator_name, "agg.example");
    assert!(bundle.tls().is_ok());

    // Issuing twice without revoking is refused; bad names are refused with the rule.
    let twice = server(&["issue-store", "--dir", p, "--store", "berlin-01", "--out", "/dev/null"]);
    assert!(String::from_utf8_lossy(&twice.stderr).contains("revoke it first"));
    let bad = server(&["issue-store", "--dir", p, "--store", "Berlin 01", "--out", "/dev/null"]);
    assert!(String::from_utf8_lossy(&bad.stderr).contains("a-z, 0-9"));

    let crl_before = std::fs::read(platform.join(pki::CRL)).unwrap();
    let out = server(&["revoke-store", "--dir", p, "--store", "berlin-01"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_ne!(std::fs::read(platform.join(pki::CRL)).unwrap(), crl_before);
    let stores = pki::PlatformDir::open(&platform).unwrap().stores().unwrap();
    assert!(stores["berlin-01"].revoked_at.is_some());
    let unknown = server(&["revoke-store", "--dir", p, "--store", "nobody"]);
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("was ever issued"));
    // After revocation the name may be issued a fresh certificate.
    let reissue = server(&[
        "issue-store",
        "--dir",
        p,
        "--store",
        "berlin-01",
        "--out",
        bundle_path.to_str().unwrap(),
    ]);
    assert!(reissue.status.success());
}

#[test]
fn help_teaches_the_workflow() {
    let out = server(&["--help"]);
    let text = String::from_utf8_lossy(&out.stdout);
    for word in ["init", "issue-store", "revoke-store", "CA"] {
        assert!(text.contains(word), "--help lacks {word}: {text}");
    }
}
