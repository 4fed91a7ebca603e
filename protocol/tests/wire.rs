//! Property tests over the whole wire format: every message round-trips through a frame, and
//! no byte string (truncated, oversized, or random) makes the decoder panic.

use fedfuse_protocol::msgs::*;
use fedfuse_protocol::tensor::{NamedTensor, UpdateEncoding, ValueEncoding};
use fedfuse_protocol::{DecodeError, FrameDecoder, Message, MessageKind, PROTOCOL_VERSION};
use proptest::collection::vec;
use proptest::prelude::*;

fn text() -> impl Strategy<Value = String> {
    "[a-zA-Z0-9 _./-]{0,40}"
}
fn name() -> impl Strategy<Value = String> {
    "[a-z][a-z0-9_.]{0,30}"
}
fn finite() -> impl Strategy<Value = f64> {
    -1e9f64..1e9
}
fn encoding() -> impl Strategy<Value = UpdateEncoding> {
    prop::sample::select(UpdateEncoding::ALL.to_vec())
}
fn caps() -> impl Strategy<Value = Capabilities> {
    (vec(encoding(), 0..6), any::<u64>()).prop_map(|(update_encodings, max_message_bytes)| Capabilities {
        update_encodings,
        max_message_bytes,
    })
}
fn manifest() -> impl Strategy<Value = ModelManifest> {
    (any::<u64>(), any::<[u8; 32]>(), any::<u64>(), any::<u32>()).prop_map(|(version, content_hash, total_bytes, chunk_bytes)| {
        ModelManifest {
            version,
            content_hash,
            total_bytes,
            chunk_bytes,
        }
    })
}
fn dp() -> impl Strategy<Value = DpRequirement> {
    (any::<bool>(), any::<bool>(), finite(), finite(), finite(), finite()).prop_map(|(s, l, a, b, c, d)| DpRequirement {
        unit: if s { PrivacyUnit::Shopper } else { PrivacyUnit::Store },
        noise_mode: if l { NoiseMode::Local } else { NoiseMode::Central },
        min_noise_multiplier: a,
        max_clip_norm: b,
        max_sampling_rate: c,
        delta: d,
    })
}
fn plan() -> impl Strategy<Value = TrainingPlan> {
    (
        any::<bool>(),
        any::<u32>(),
        -10f32..10.0,
        any::<u32>(),
        prop::option::of(0f32..1.0),
        encoding(),
        prop::option::of(dp()),
        vec(name(), 0..3),
    )
        .prop_map(
            |(steps, n, learning_rate, batch_size, proximal_mu, update_encoding, dp, trainable)| TrainingPlan {
                work: if steps { LocalWork::Steps(n) } else { LocalWork::Epochs(n) },
                learning_rate,
                batch_size,
                proximal_mu,
                update_encoding,
                dp,
                trainable,
            },
        )
}
fn tensor() -> impl Strategy<Value = NamedTensor> {
    (name(), 1u32..6, 1u32..6, encoding(), any::<u64>()).prop_flat_map(|(name, r, c, enc, seed)| {
        vec(prop_oneof![Just(0f32), -100f32..100.0], (r * c) as usize)
            .prop_map(move |values| NamedTensor::encode(name.clone(), &[r, c], &values, enc, seed).unwrap())
    })
}
fn rejection() -> impl Strategy<Value = RejectionReason> {
    prop_oneof![
        name().prop_map(|name| RejectionReason::UnknownTensor { name }),
        name().prop_map(|name| RejectionReason::MissingTensor { name }),
        (name(), vec(any::<u32>(), 0..4), vec(any::<u32>(), 0..4))
            .prop_map(|(name, expected, got)| RejectionReason::WrongShape { name, expected, got }),
        name().prop_map(|name| RejectionReason::NonFinite { name }),
        (any::<u64>(), any::<u64>()).prop_map(|(expected, got)| RejectionReason::StaleBase { expected, got }),
        (finite(), finite()).prop_map(|(norm, bound)| RejectionReason::NormTooLarge { norm, bound }),
        any::<u64>().prop_map(|round_id| RejectionReason::RoundClosed { round_id }),
        Just(RejectionReason::EncodingNotOffered),
        text().prop_map(|detail| RejectionReason::Malformed { detail }),
    ]
}
fn refusal() -> impl Strategy<Value = RefusalReason> {
    prop_oneof![
        (any::<u16>(), any::<u16>()).prop_map(|(ours, theirs)| RefusalReason::VersionMismatch { ours, theirs }),
        text().prop_map(|store_id| RefusalReason::UnknownStore { store_id }),
        Just(RefusalReason::NoCommonEncoding),
        text().prop_map(|detail| RefusalReason::MalformedHello { detail }),
        Just(RefusalReason::ShuttingDown),
        text().prop_map(|detail| RefusalReason::Other { detail }),
    ]
}
fn spend() -> impl Strategy<Value = PrivacySpend> {
    (
        finite(),
        finite(),
        any::<u32>(),
        finite(),
        finite(),
        finite(),
        any::<[u8; 32]>(),
    )
        .prop_map(|(a, b, steps, c, d, e, h)| PrivacySpend {
            noise_multiplier: a,
            sampling_rate: b,
            steps,
            clip_norm: c,
            delta: d,
            epsilon_total: e,
            ledger_entry_hash: h,
        })
}

fn message() -> impl Strategy<Value = Message> {
    prop_oneof![
        (text(), caps()).prop_map(|(v, c)| Message::Hello(Hello::current(v, c))),
        (text(), any::<u64>(), caps(), any::<u32>()).prop_map(|(store_id, session_id, capabilities, hb)| Message::Welcome(
            Welcome {
                protocol_version: PROTOCOL_VERSION,
                store_id,
                session_id,
                capabilities,
                heartbeat_interval_ms: hb,
            }
        )),
        refusal().prop_map(|reason| Message::Refused(Refused { reason })),
        (any::<u64>(), manifest(), plan(), any::<u64>()).prop_map(|(round_id, model, plan, deadline_unix_ms)| {
            Message::RoundOffer(RoundOffer {
                round_id,
                model,
                plan,
                deadline_unix_ms,
            })
        }),
        (any::<u64>(), any::<u64>(), vec(any::<u8>(), 0..300))
            .prop_map(|(version, offset, bytes)| Message::ModelChunk(ModelChunk { version, offset, bytes })),
        (
            any::<u64>(),
            any::<u64>(),
            any::<u64>(),
            vec((name(), finite()).prop_map(|(name, value)| Metric { name, value }), 0..4),
            prop::option::of(spend()),
            vec(tensor(), 0..4)
        )
            .prop_map(
                |(round_id, base_model_version, example_count, metrics, privacy_spend, tensors)| Message::UpdateUpload(
                    UpdateUpload {
                        round_id,
                        base_model_version,
                        example_count,
                        metrics,
                        privacy_spend,
                        tensors,
                    }
                )
            ),
        (any::<u64>(), any::<u32>()).prop_map(|(round_id, updates_in_round)| Message::UpdateAccepted(UpdateAccepted {
            round_id,
            updates_in_round
        })),
        (any::<u64>(), rejection()).prop_map(|(round_id, reason)| Message::UpdateRejected(UpdateRejected { round_id, reason })),
        (any::<u64>(), any::<u64>()).prop_map(|(seq, unix_ms)| Message::Heartbeat(Heartbeat { seq, unix_ms })),
        text().prop_map(|reason| Message::Bye(Bye { reason })),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn every_message_round_trips(msg in message()) {
        let frame = msg.encode().unwrap();
        prop_assert_eq!(&Message::decode_frame(&frame, u64::MAX).unwrap(), &msg);
        // And through the stream deframer, fed one byte at a time.
        let mut d = FrameDecoder::new(u64::MAX);
        let mut got = None;
        for b in &frame {
            d.push(std::slice::from_ref(b)).unwrap();
            if let Some((kind, body)) = d.pop().unwrap() {
                got = Some(Message::decode(kind, &body).unwrap());
            }
        }
        prop_assert_eq!(got, Some(msg));
    }

    #[test]
    fn every_truncation_is_an_error(msg in message(), cut in any::<prop::sample::Index>()) {
        let frame = msg.encode().unwrap();
        let cut = cut.index(frame.len());
        let err = Message::decode_frame(&frame[..cut], u64::MAX).unwrap_err();
        prop_assert!(matches!(err, DecodeError::Truncated { .. }), "{:?}", err);
        // postcard encodings are self-delimiting, so a strict prefix of a body presented as
        // complete can never decode.
        if cut >= 5 {
            prop_assert!(Message::decode(msg.kind(), &frame[5..cut]).is_err());
        }
    }

    #[test]
    fn trailing_bytes_are_an_error(msg in message(), extra in vec(any::<u8>(), 1..8)) {
        let mut frame = msg.encode().unwrap();
        let body_len = frame.len() - 5;
        frame.extend_from_slice(&extra);
        // The header still says the old length: the frame has trailing bytes.
        let trailing = matches!(Message::decode_frame(&frame, u64::MAX), Err(DecodeError::TrailingBytes { .. }));
        prop_assert!(trailing);
        // Claiming the longer body makes the postcard body have trailing bytes.
        let kind = msg.kind();
        let body = &frame[5..];
        prop_assert_eq!(body.len(), body_len + extra.len());
        prop_assert!(Message::decode(kind, body).is_err());
    }

    #[test]
    fn garbage_never_panics(bytes in vec(any::<u8>(), 0..2048)) {
        let _ = Message::decode_frame(&bytes, u64::MAX);
        for kind in MessageKind::ALL {
            if let Ok(Message::UpdateUpload(u)) = Message::decode(kind, &bytes) {
                for t in u.tensors {
                    let _ = t.to_f32(&[4, 4]);
                }
            }
        }
        let mut d = FrameDecoder::new(1 << 20);
        if d.push(&bytes).is_ok() {
            while let Ok(Some((kind, body))) = d.pop() {
                let _ = Message::decode(kind, &body);
            }
        }
    }
}

#[test]
fn oversized_messages_are_refused_both_ways() {
    let chunk = Message::ModelChunk(ModelChunk {
        version: 1,
        offset: 0,
        bytes: vec![0; fedfuse_protocol::frame::MAX_MODEL_CHUNK_BYTES + 100],
    });
    assert!(matches!(chunk.encode(), Err(fedfuse_protocol::EncodeError::Oversized { .. })));
    let bye = Message::Bye(Bye {
        reason: "x".repeat(5000),
    });
    assert!(bye.encode().is_err());
    // A header announcing 4 GiB of heartbeat is refused from the header alone.
    let header = [MessageKind::Heartbeat as u8, 0xff, 0xff, 0xff, 0xff];
    assert!(matches!(
        Message::decode_frame(&header, u64::MAX),
        Err(DecodeError::Oversized {
            kind: MessageKind::Heartbeat,
            ..
        })
    ));
    // A peer-agreed limit applies to every kind.
    let hb = Message::Heartbeat(Heartbeat { seq: 1, unix_ms: 2 }).encode().unwrap();
    assert!(matches!(
        Message::decode_frame(&hb, 1),
        Err(DecodeError::Oversized { limit: 1, .. })
    ));
}

#[test]
fn a_huge_declared_vector_does_not_allocate_it() {
    // An UpdateUpload whose tensor list claims 2^60 entries in a few bytes must fail fast.
    let mut body = Vec::new();
    for v in [1u64, 1, 1] {
        body.extend(postcard::to_allocvec(&v).unwrap());
    }
    body.push(0); // no metrics
    body.push(0); // no privacy spend
    body.extend(postcard::to_allocvec(&(1u64 << 60)).unwrap());
    assert!(matches!(
        Message::decode(MessageKind::UpdateUpload, &body),
        Err(DecodeError::Malformed { .. })
    ));
}

#[test]
fn update_with_50k_floats_in_each_encoding_round_trips_within_tolerance() {
    let values: Vec<f32> = (0..50_000).map(|i| ((i * 7919) % 1000) as f32 / 1000.0 - 0.5).collect();
    for (enc, tol) in [
        (ValueEncoding::F32, 0.0),
        (ValueEncoding::F16, 3e-4),
        (ValueEncoding::Int8, 0.5 / 127.0 * 2.0),
    ] {
        let t = NamedTensor::encode("layer.weight", &[500, 100], &values, UpdateEncoding::Dense(enc), 42).unwrap();
        let msg = Message::UpdateUpload(UpdateUpload {
            round_id: 3,
            base_model_version: 2,
            example_count: 10,
            metrics: vec![],
            privacy_spend: None,
            tensors: vec![t],
        });
        let Message::UpdateUpload(back) = Message::decode_frame(&msg.encode().unwrap(), u64::MAX).unwrap() else {
            unreachable!()
        };
        let decoded = back.tensors[0].to_f32(&[500, 100]).unwrap();
        let worst = decoded.iter().zip(&values).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        assert!(worst <= tol, "{enc:?}: worst error {worst} > {tol}");
    }
}
