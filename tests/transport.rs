//! Real QUIC on 127.0.0.1 with certificates made by the platform tooling: every message kind
//! crosses, untrusted peers are refused, and a 200 MB model arrives intact.

use std::net::SocketAddr;
use std::time::Duration;

use fedfuse_protocol::msgs::*;
use fedfuse_protocol::tensor::{NamedTensor, UpdateEncoding, ValueEncoding};
use fedfuse_protocol::{Message, MessageKind, PROTOCOL_VERSION, content_hash};
use fedfuse_server::pki::{self, InitOptions, PlatformDir, StoreBundle};
use fedfuse_transport::{AggregatorEndpoint, PeerConnection, StoreEndpoint, TransportError, TransportTuning};

const LOOPBACK: ([u8; 4], u16) = ([127, 0, 0, 1], 0);

struct Platform {
    _dir: tempfile::TempDir,
    platform: PlatformDir,
    aggregator: AggregatorEndpoint,
    addr: SocketAddr,
}

fn platform() -> Platform {
    let dir = tempfile::tempdir().unwrap();
    let platform = pki::init(dir.path(), &InitOptions::default()).unwrap();
    let (identity, trust) = platform.aggregator_tls().unwrap();
    let aggregator = AggregatorEndpoint::bind(SocketAddr::from(LOOPBACK), identity, &trust, TransportTuning::default()).unwrap();
    let addr = aggregator.local_addr().unwrap();
    Platform {
        _dir: dir,
        platform,
        aggregator,
        addr,
    }
}

async fn connect(bundle: &StoreBundle, addr: SocketAddr) -> Result<(StoreEndpoint, PeerConnection), TransportError> {
    let (identity, trust) = bundle.tls()?;
    let endpoint = StoreEndpoint::new(Some(&identity), &trust, &TransportTuning::default())?;
    let conn = endpoint.connect(addr, &bundle.aggregator_name).await?;
    Ok((endpoint, conn))
}

fn caps() -> Capabilities {
    Capabilities {
        update_encodings: UpdateEncoding::ALL.to_vec(),
        max_message_bytes: 1 << 30,
    }
}

fn manifest(version: u64, blob: &[u8], chunk_bytes: u32) -> ModelManifest {
    ModelManifest {
        version,
        content_hash: content_hash(blob),
        total_bytes: blob.len() as u64,
        chunk_bytes,
    }
}

fn offer(round_id: u64, model: ModelManifest) -> RoundOffer {
    RoundOffer {
        round_id,
        model,
        plan: TrainingPlan {
            work: LocalWork::Epochs(1),
            learning_rate: 0.01,
            batch_size: 128,
            proximal_mu: Some(0.01),
            update_encoding: UpdateEncoding::Dense(ValueEncoding::Int8),
            dp: Some(DpRequirement {
                unit: PrivacyUnit::Shopper,
                noise_mode: NoiseMode::Local,
                min_noise_multiplier: 1.1,
                max_clip_norm: 1.0,
                max_sampling_rate: 0.01,
                delta: 1e-5,
            }),
            trainable: vec!["head_".into(), "alpha".into()],
        },
        deadline_unix_ms: 4_000_000_000_000,
    }
}

/// A minimal aggregator session, enough to exercise every message kind: the real round logic
/// lives in the coordinator, not in the transport.
async fn serve_one_session(conn: PeerConnection, model: Vec<u8>) -> Result<String, TransportError> {
    // A Hello we cannot decode (another version, garbage) still gets an answer: negotiate
    // turns the decode error into the refusal.
    let hello = match conn.recv().await {
        Ok(Message::Hello(h)) => Ok(h),
        Ok(other) => {
            return Err(TransportError::Unexpected {
                expected: "Hello",
                got: other.kind(),
            });
        }
        Err(TransportError::Decode(e)) => Err(e),
        Err(e) => return Err(e),
    };
    let agreed = match negotiate(hello, &caps()) {
        Ok(a) => a,
        Err(reason) => {
            conn.send(&Message::Refused(Refused { reason })).await?;
            conn.close_gracefully("refused", Duration::from_secs(5)).await;
            return Ok("refused".into());
        }
    };
    conn.send(&Message::Welcome(Welcome {
        protocol_version: PROTOCOL_VERSION,
        store_id: conn.peer_id().to_owned(),
        session_id: 7,
        capabilities: agreed,
        heartbeat_interval_ms: 1000,
    }))
    .await?;
    let m = manifest(3, &model, 1000);
    conn.send(&Message::RoundOffer(offer(1, m.clone()))).await?;
    conn.send_model(&m, &model).await?;
    let Message::Heartbeat(hb) = conn.expect("Heartbeat", MessageKind::Heartbeat).await? else {
        unreachable!()
    };
    conn.send(&Message::Heartbeat(Heartbeat {
        seq: hb.seq + 1,
        unix_ms: hb.unix_ms,
    }))
    .await?;
    for _ in 0..2 {
        let Message::UpdateUpload(up) = conn.expect("UpdateUpload", MessageKind::UpdateUpload).await? else {
            unreachable!()
        };
        let reply = if up.base_model_version != 3 {
            Message::UpdateRejected(UpdateRejected {
                round_id: up.round_id,
                reason: RejectionReason::StaleBase {
                    expected: 3,
                    got: up.base_model_version,
                },
            })
        } else {
            let values = up.tensors[0].to_f32(&[2, 3])?;
            assert_eq!(values.len(), 6);
            Message::UpdateAccepted(UpdateAccepted {
                round_id: up.round_id,
                updates_in_round: 1,
            })
        };
        conn.send(&reply).await?;
    }
    let Message::Bye(bye) = conn.expect("Bye", MessageKind::Bye).await? else {
        unreachable!()
    };
    conn.send(&Message::Bye(Bye {
        reason: "see you".into(),
    }))
    .await?;
    conn.close_gracefully("session over", Duration::from_secs(5)).await;
    Ok(bye.reason)
}

fn upload(base_model_version: u64) -> Message {
    Message::UpdateUpload(UpdateUpload {
        round_id: 1,
        base_model_version,
        example_count: 500,
        metrics: vec![Metric {
            name: "train_loss".into(),
            value: 0.7,
        }],
        privacy_spend: Some(PrivacySpend {
            noise_multiplier: 1.1,
            sampling_rate: 0.01,
            steps: 100,
            clip_norm: 1.0,
            delta: 1e-5,
            epsilon_total: 0.9,
            ledger_entry_hash: [1; 32],
        }),
        tensors: vec![
            NamedTensor::encode(
                "head.weight",
                &[2, 3],
                &[0.1, -0.2, 0.3, 0.0, 0.5, -0.6],
                UpdateEncoding::Dense(ValueEncoding::Int8),
                1,
            )
            .unwrap(),
        ],
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_valid_store_exchanges_every_message_kind() {
    let p = platform();
    let bundle = p.platform.issue_store("berlin-01", 30).unwrap();
    let model: Vec<u8> = (0..10_500u32).map(|i| (i * 31 % 251) as u8).collect();
    let served = {
        let model = model.clone();
        let agg = &p.aggregator;
        async move { serve_one_session(agg.accept().await.unwrap().unwrap(), model).await }
    };
    let store = async {
        let (_endpoint, conn) = connect(&bundle, p.addr).await.unwrap();
        conn.send(&Message::Hello(Hello::current("fedfuse-test", caps())))
            .await
            .unwrap();
        let Message::Welcome(w) = conn.recv().await.unwrap() else {
            panic!("no welcome")
        };
        // The aggregator knows the store by its certificate.
        assert_eq!(w.store_id, "berlin-01");
        assert_eq!(w.capabilities.update_encodings, UpdateEncoding::ALL.to_vec());
        let Message::RoundOffer(o) = conn.recv().await.unwrap() else {
            panic!("no offer")
        };
        assert_eq!(o, offer(1, manifest(3, &model, 1000)));
        let got = conn.recv_model(&o.model, 1 << 20).await.unwrap();
        assert_eq!(got, model);
        conn.send(&Message::Heartbeat(Heartbeat { seq: 41, unix_ms: 5 }))
            .await
            .unwrap();
        assert_eq!(
            conn.recv().await.unwrap(),
            Message::Heartbeat(Heartbeat { seq: 42, unix_ms: 5 })
        );
        conn.send(&upload(2)).await.unwrap();
        let Message::UpdateRejected(r) = conn.recv().await.unwrap() else {
            panic!("stale update accepted")
        };
        assert_eq!(r.reason, RejectionReason::StaleBase { expected: 3, got: 2 });
        conn.send(&upload(3)).await.unwrap();
        assert_eq!(
            conn.recv().await.unwrap(),
            Message::UpdateAccepted(UpdateAccepted {
                round_id: 1,
                updates_in_round: 1
            })
        );
        conn.send(&Message::Bye(Bye { reason: "done".into() })).await.unwrap();
        assert!(matches!(conn.recv().await.unwrap(), Message::Bye(_)));
        conn.close("bye");
    };
    let (served, ()) = tokio::join!(served, store);
    assert_eq!(served.unwrap(), "done");

    // A store on another protocol version is refused with both versions named.
    let served = async { serve_one_session(p.aggregator.accept().await.unwrap().unwrap(), vec![]).await };
    let store = async {
        let (_endpoint, conn) = connect(&bundle, p.addr).await.unwrap();
        let mut hello = Hello::current("fedfuse-future", caps());
        hello.protocol_version = PROTOCOL_VERSION + 1;
        conn.send(&Message::Hello(hello)).await.unwrap();
        let reply = conn.recv().await.unwrap();
        conn.close("refused");
        reply
    };
    let (served, refusal) = tokio::join!(served, store);
    assert_eq!(served.unwrap(), "refused");
    assert_eq!(
        refusal,
        Message::Refused(Refused {
            reason: RefusalReason::VersionMismatch {
                ours: PROTOCOL_VERSION,
                theirs: PROTOCOL_VERSION + 1
            }
        })
    );
}

/// Tries a session as `bundle` (or with no certificate) and returns the aggregator's handshake
/// error, after checking that the store could not exchange a message either.
async fn refused(p: &Platform, store: Option<&StoreBundle>, trust_from: &StoreBundle) -> String {
    let attempt = async {
        let (_, trust) = trust_from.tls()?;
        let identity = store.map(|b| b.tls().map(|(i, _)| i)).transpose()?;
        let endpoint = StoreEndpoint::new(identity.as_ref(), &trust, &TransportTuning::default())?;
        let conn = endpoint.connect(p.addr, &trust_from.aggregator_name).await?;
        conn.send(&Message::Hello(Hello::current("intruder", caps()))).await?;
        conn.recv().await
    };
    let accepted = tokio::time::timeout(Duration::from_secs(10), p.aggregator.accept());
    let (store_side, server_side) = tokio::join!(attempt, accepted);
    assert!(store_side.is_err(), "an untrusted store got a reply: {store_side:?}");
    match server_side.expect("accept timed out").expect("endpoint open") {
        Ok(conn) => panic!("aggregator accepted {:?}", conn.peer_id()),
        Err(e) => e.to_string(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn untrusted_stores_are_refused() {
    let p = platform();
    let good = p.platform.issue_store("good", 30).unwrap();

    // A certificate from another platform's CA.
    let other_dir = tempfile::tempdir().unwrap();
    let other_opts = InitOptions {
        platform_name: "another platform".into(),
        ..InitOptions::default()
    };
    let other = pki::init(other_dir.path(), &other_opts).unwrap();
    let foreign = other.issue_store("good", 30).unwrap();
    let err = refused(&p, Some(&foreign), &good).await;
    assert!(err.contains("UnknownIssuer"), "{err}");

    // A CA forged with our CA's very name: found by name, refused by signature.
    let forged_dir = tempfile::tempdir().unwrap();
    let forged = pki::init(forged_dir.path(), &InitOptions::default()).unwrap();
    let forged = forged.issue_store("good", 30).unwrap();
    let err = refused(&p, Some(&forged), &good).await;
    assert!(err.contains("BadSignature"), "{err}");

    // No certificate at all.
    let err = refused(&p, None, &good).await;
    assert!(
        err.to_lowercase().contains("no certificate") || err.contains("NoCertificatesPresented"),
        "{err}"
    );

    // An expired certificate from the right CA.
    let expired = p.platform.issue_store("lapsed", -1).unwrap();
    let err = refused(&p, Some(&expired), &good).await;
    assert!(err.contains("Expired"), "{err}");

    // A revoked store: accepted before, refused once the aggregator loads the new CRL.
    let victim = p.platform.issue_store("leaky", 30).unwrap();
    let ok = async { p.aggregator.accept().await.unwrap().map(|c| c.peer_id().to_owned()) };
    let (id, store) = tokio::join!(ok, connect(&victim, p.addr));
    assert_eq!(id.unwrap(), "leaky");
    drop(store);
    p.platform.revoke_store("leaky").unwrap();
    let (_, trust) = p.platform.aggregator_tls().unwrap();
    p.aggregator.reload_trust(&trust).unwrap();
    let err = refused(&p, Some(&victim), &good).await;
    assert!(err.contains("Revoked"), "{err}");

    // The store checks the aggregator too: pinning another platform's CA fails.
    let (identity, _) = good.tls().unwrap();
    let (_, wrong_trust) = foreign.tls().unwrap();
    let endpoint = StoreEndpoint::new(Some(&identity), &wrong_trust, &TransportTuning::default()).unwrap();
    let (store_side, _) = tokio::join!(
        endpoint.connect(p.addr, &good.aggregator_name),
        tokio::time::timeout(Duration::from_secs(5), p.aggregator.accept())
    );
    assert!(store_side.is_err());
    // And a store asking for a name the aggregator's certificate does not carry fails.
    let endpoint = StoreEndpoint::new(Some(&identity), &good.tls().unwrap().1, &TransportTuning::default()).unwrap();
    let (store_side, _) = tokio::join!(
        endpoint.connect(p.addr, "impostor.example"),
        tokio::time::timeout(Duration::from_secs(5), p.aggregator.accept())
    );
    assert!(store_side.is_err());

    // After all that the good store still gets in.
    let ok = async { p.aggregator.accept().await.unwrap().map(|c| c.peer_id().to_owned()) };
    let (id, store) = tokio::join!(ok, connect(&good, p.addr));
    assert_eq!(id.unwrap(), "good");
    assert!(store.is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_200_mb_model_crosses_intact() {
    let p = platform();
    let bundle = p.platform.issue_store("big", 30).unwrap();
    // Pseudo-random bytes, so a misplaced chunk cannot go unnoticed.
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let model: Vec<u8> = (0..200_000_000 / 8)
        .flat_map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state.to_le_bytes()
        })
        .collect();
    let m = manifest(9, &model, 4 << 20);
    let sent = async {
        let conn = p.aggregator.accept().await.unwrap().unwrap();
        conn.send(&Message::RoundOffer(offer(1, m.clone()))).await.unwrap();
        conn.send_model(&m, &model).await.unwrap();
        // Wait for the store's receipt before the connection is dropped.
        conn.expect("Bye", MessageKind::Bye).await.unwrap();
    };
    let received = async {
        let (_endpoint, conn) = connect(&bundle, p.addr).await.unwrap();
        // What a Welcome would have agreed; this test skips the handshake.
        conn.set_max_message_bytes(1 << 30);
        let Message::RoundOffer(o) = conn.recv().await.unwrap() else {
            panic!("no offer")
        };
        let blob = conn.recv_model(&o.model, 1 << 30).await.unwrap();
        conn.send(&Message::Bye(Bye { reason: "got it".into() })).await.unwrap();
        conn.close_gracefully("done", Duration::from_secs(5)).await;
        blob
    };
    let ((), blob) = tokio::join!(sent, received);
    assert_eq!(blob.len(), 200_000_000);
    assert_eq!(content_hash(&blob), m.content_hash);
    assert!(blob == model);

    // A model above the store's own limit is refused before any allocation.
    let tiny = manifest(10, &[1, 2, 3], 1);
    let conn_pair = async { p.aggregator.accept().await.unwrap().unwrap() };
    let (_server_conn, store) = tokio::join!(conn_pair, connect(&bundle, p.addr));
    let (_endpoint, conn) = store.unwrap();
    assert!(matches!(conn.recv_model(&tiny, 2).await, Err(TransportError::Model(_))));
}

/// Before the handshake has agreed a limit, a peer cannot make the other side buffer more
/// than a handshake message: the aggregator refuses a 100 KiB upload frame from a store that
/// has not said Hello, before allocating it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frame_beyond_handshake_size_before_hello_is_refused() {
    let p = platform();
    let bundle = p.platform.issue_store("eager", 30).unwrap();
    // An UpdateUpload frame may be 1 GiB once agreed; its header alone would have sized the
    // buffer before the handshake.
    let body_len: u32 = 100 * 1024;
    let mut big = vec![MessageKind::UpdateUpload as u8];
    big.extend_from_slice(&body_len.to_le_bytes());
    big.resize(5 + body_len as usize, 0);
    let (received, _sent) = tokio::join!(
        async {
            let conn = p.aggregator.accept().await.unwrap().unwrap();
            conn.recv().await
        },
        async {
            let (endpoint, conn) = connect(&bundle, p.addr).await.unwrap();
            // The aggregator stops reading after the header: the send may never complete.
            let _ = tokio::time::timeout(Duration::from_secs(2), conn.send_frame(&big)).await;
            (endpoint, conn)
        }
    );
    let err = received.unwrap_err().to_string();
    assert!(err.contains("exceeds its limit of 65536 bytes"), "{err}");
}
