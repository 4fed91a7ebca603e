//! `fedfuse-client template` as a store operator runs it: the written file must load as it is.

use std::process::Command;

use fedfuse_client::config::AgentConfig;

fn template(args: &[&str]) -> AgentConfig {
    let out = Command::new(env!("CARGO_BIN_EXE_fedfuse-client"))
        .arg("template")
        .args(args)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.toml");
    std::fs::write(&path, &out.stdout).unwrap();
    AgentConfig::load(&path).unwrap()
}

#[test]
fn template_names_the_bundle_and_the_data_store_separately() {
    let c = template(&["--store", "berlin-01", "--data-store", "store-03"]);
    assert!(c.agent.bundle.ends_with("berlin-01.bundle.toml"), "{:?}", c.agent.bundle);
    assert_eq!(c.data.store, "store-03");
    assert_eq!(c.data.source, "synthetic");
    // Without --data-store the store reads every shopper of its data (its own files), rather
    // than looking for a data store named after its certificate.
    let c = template(&["--store", "berlin-01"]);
    assert_eq!(c.data.store, "");
}
