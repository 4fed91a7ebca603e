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
    for word in ["init", "issue-store", "revoke-store", "pretrain", "CA"] {
        assert!(text.contains(word), "--help lacks {word}: {text}");
    }
}

/// `pretrain` trains on the platform's own shoppers only and writes a model that `run
/// --init-model` reads: its layout is the config's [model], and it ranks the platform's
/// validation items better than the random start it came from.
#[test]
fn pretrain_writes_a_model_that_ranks_better_than_its_random_start() {
    let dir = tempfile::tempdir().unwrap();
    let platform = dir.path().join("platform");
    assert!(server(&["init", "--dir", platform.to_str().unwrap()]).status.success());
    let data = dir.path().join("shop");
    let synthetic = fedfuse_data::SyntheticConfig {
        seed: 3,
        shoppers: 600,
        items: 300,
        events: 15_000,
        ..Default::default()
    };
    std::fs::create_dir(&data).unwrap();
    fedfuse_data::csv_reader::write_dir(&fedfuse_data::synthetic::generate(&synthetic).unwrap(), &data).unwrap();
    let config_path = platform.join(pki::CONFIG);
    let config = std::fs::read_to_string(&config_path)
        .unwrap()
        .replace("data = \"synthetic\"", &format!("data = \"csv:{}\"", data.display()))
        .replace("hold_out = 0.1", "hold_out = 0.3")
        .replace("dim = 64", "dim = 16");
    std::fs::write(&config_path, config).unwrap();
    let out_path = dir.path().join("pretrained.safetensors");
    let out = server(&[
        "pretrain",
        "--config",
        config_path.to_str().unwrap(),
        "--out",
        out_path.to_str().unwrap(),
        "--epochs",
        "4",
        "--device",
        "cpu",
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    // "kept epoch E of N: platform validation HR@10 X (random start Y); P parameters written ..."
    let number_after = |marker: &str| -> f64 {
        let rest = &stdout[stdout.find(marker).unwrap_or_else(|| panic!("no {marker:?} in {stdout}")) + marker.len()..];
        rest.split(|c: char| !(c.is_ascii_digit() || c == '.'))
            .next()
            .unwrap()
            .parse()
            .unwrap()
    };
    let (pretrained, fresh) = (number_after("platform validation HR@10 "), number_after("random start "));
    assert!(
        pretrained > fresh + 0.02,
        "pretrained {pretrained} vs random start {fresh}: {stdout}"
    );
    // The kept epoch is the best one validated, not the last.
    let per_epoch: Vec<f64> = stdout
        .lines()
        .filter(|l| l.starts_with("epoch"))
        .map(|l| l.split("validation HR@10 ").nth(1).unwrap()[..6].parse().unwrap())
        .collect();
    assert_eq!(per_epoch.len(), 4, "{stdout}");
    assert_eq!(pretrained, per_epoch.iter().copied().fold(0.0, f64::max), "{stdout}");
    let (layout, params) = fedfuse_server::safetensors::read(&out_path).unwrap();
    assert_eq!(layout.len(), params.len());
    assert_eq!(params.len() as f64, number_after("; "), "{stdout}");
    assert!(params.iter().all(|v| v.is_finite()));
    // The item-ID embedding holds one 16-wide row per item of the platform's catalog.
    let items = layout
        .tensors()
        .iter()
        .find(|t| t.name == "items.id.weight")
        .unwrap_or_else(|| panic!("no item-id embedding in {:?}", layout.tensors()));
    assert_eq!(items.shape[1], 16);
    assert!(items.shape[0] >= 300, "{:?}", items.shape);
}

mod federation {
    //! `fedfuse-server run`, `status` and `export` as a platform operator runs them, with two
    //! store agents joining over QUIC.

    use std::io::{BufRead, BufReader};
    use std::net::SocketAddr;
    use std::process::Stdio;

    use fedfuse_client::{AgentOptions, LocalTrainer, LocalUpdate, TensorShape, run_session};
    use fedfuse_protocol::msgs::{Capabilities, TrainingPlan};
    use fedfuse_protocol::tensor::UpdateEncoding;
    use fedfuse_server::layout::{ModelLayout, TensorSpec};
    use fedfuse_transport::{StoreEndpoint, TransportTuning};

    use super::*;

    struct Toward(f32);

    impl LocalTrainer for Toward {
        fn train(&mut self, _: u64, _: &[TensorShape], params: &[f32], _: &TrainingPlan) -> Result<LocalUpdate, String> {
            Ok(LocalUpdate {
                delta: params.iter().map(|p| self.0 - p).collect(),
                example_count: 1,
                metrics: vec![],
                privacy_spend: None,
            })
        }
    }

    #[test]
    fn run_then_status_then_export() {
        let dir = tempfile::tempdir().unwrap();
        let platform = dir.path().join("platform");
        let p = platform.to_str().unwrap();
        assert!(server(&["init", "--dir", p]).status.success());
        // One round with two stores, on an OS-chosen port.
        let config = std::fs::read_to_string(platform.join(pki::CONFIG)).unwrap();
        let config = config
            .replace("listen = \"127.0.0.1:7450\"", "listen = \"127.0.0.1:0\"")
            .replace("rounds = 0", "rounds = 1");
        std::fs::write(platform.join(pki::CONFIG), config).unwrap();
        let init = dir.path().join("init.safetensors");
        let layout = ModelLayout::new(vec![TensorSpec {
            name: "w".into(),
            shape: vec![2, 2],
        }]);
        fedfuse_server::safetensors::write(&init, &layout, &[0.0; 4], &Default::default()).unwrap();
        let config_path = platform.join(pki::CONFIG);
        let cfg = config_path.to_str().unwrap();

        let mut child = Command::new(env!("CARGO_BIN_EXE_fedfuse-server"))
            .args(["run", "--config", cfg, "--init-model", init.to_str().unwrap()])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let first = lines.next().unwrap().unwrap();
        let addr: SocketAddr = first.split_whitespace().nth(3).unwrap().parse().unwrap();

        let bundles: Vec<_> = ["north", "south"]
            .iter()
            .map(|s| pki::PlatformDir::open(&platform).unwrap().issue_store(s, 1).unwrap())
            .collect();
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let reports = runtime.block_on(async {
            let tasks: Vec<_> = bundles
                .into_iter()
                .zip([2.0f32, 4.0])
                .map(|(bundle, target)| {
                    tokio::spawn(async move {
                        let (identity, trust) = bundle.tls().unwrap();
                        let endpoint = StoreEndpoint::new(Some(&identity), &trust, &TransportTuning::default()).unwrap();
                        let conn = endpoint.connect(addr, &bundle.aggregator_name).await.unwrap();
                        let opts = AgentOptions {
                            software_version: "test".into(),
                            capabilities: Capabilities {
                                update_encodings: UpdateEncoding::ALL.to_vec(),
                                max_message_bytes: 1 << 30,
                            },
                            max_model_bytes: 1 << 20,
                            rounding_seed: 0,
                        };
                        run_session(&conn, &mut Toward(target), &opts).await.unwrap()
                    })
                })
                .collect();
            let mut out = Vec::new();
            for t in tasks {
                out.push(t.await.unwrap());
            }
            out
        });
        assert!(reports.iter().all(|r| r.accepted == vec![1]), "{reports:?}");
        assert!(child.wait().unwrap().success(), "the aggregator exits after its rounds");

        let status = server(&["status", "--config", cfg]);
        let text = String::from_utf8_lossy(&status.stdout);
        assert!(text.contains("model version 1"), "{text}");
        assert!(text.contains("north") && text.contains("south"), "{text}");

        let out = dir.path().join("global.safetensors");
        let export = server(&[
            "export",
            "--config",
            cfg,
            "--format",
            "safetensors",
            "--out",
            out.to_str().unwrap(),
        ]);
        assert!(export.status.success(), "{}", String::from_utf8_lossy(&export.stderr));
        let (l, params) = fedfuse_server::safetensors::read(&out).unwrap();
        assert_eq!(l, layout);
        assert_eq!(params, vec![3.0; 4], "the mean of the two stores' targets");
    }
}
