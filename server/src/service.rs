//! The aggregator service: the async driver around the [`RoundCoordinator`].
//!
//! Each store connection gets a reader task (messages in → coordinator events) and a writer
//! task (coordinator actions → messages out); `PeerConnection::recv` is not cancel-safe, so
//! reading and writing never share a `select!`. One coordinator task owns all round state:
//! it feeds events to the state machine, executes the actions it returns, and persists every
//! commit through [`AggregatorState`] before the new model is offered.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fedfuse_protocol::PROTOCOL_VERSION;
use fedfuse_protocol::msgs::{
    Bye, Capabilities, ModelManifest, RefusalReason, Refused, RejectionReason, RoundOffer, TrainingPlan, UpdateAccepted,
    UpdateRejected, Welcome, negotiate,
};
use fedfuse_protocol::{Message, MessageKind};
use fedfuse_transport::{AggregatorEndpoint, PeerConnection, TransportError};
use tokio::sync::{mpsc, watch};

use crate::layout::ModelLayout;
use crate::round::{Action, Event, RoundCoordinator, RoundPolicy, StoreId};
use crate::state::{AggregatorState, RoundRecord, StateError};

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error(transparent)]
    State(#[from] StateError),
    #[error("a new federation needs a starting model (layout and parameters)")]
    NoModel,
    #[error("server-side fine-tuning needs the model crate, which is not built yet; set fine_tune = false")]
    FineTuneUnavailable,
}

/// How the service runs rounds and what it offers.
#[derive(Debug, Clone)]
pub struct ServiceOptions {
    pub policy: RoundPolicy,
    /// Sent with every offer.
    pub plan: TrainingPlan,
    pub capabilities: Capabilities,
    pub chunk_bytes: u32,
    /// How often the coordinator sees the clock.
    pub tick: Duration,
}

/// What a finished (or stopped) service reports.
#[derive(Debug, Clone, PartialEq)]
pub struct ServiceReport {
    pub version: u64,
    pub content_hash: [u8; 32],
    pub params: Vec<f32>,
    pub rounds: Vec<RoundRecord>,
    pub rejected: Vec<(StoreId, u64, RejectionReason)>,
    pub failed_rounds: Vec<(u64, String)>,
}

enum Outbound {
    Message(Message),
    Offer(RoundOffer, Arc<Vec<u8>>),
    Bye,
}

enum Inbound {
    Register(StoreId, mpsc::UnboundedSender<Outbound>),
    Event(Event),
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Runs the aggregator until the policy's rounds are done or `shutdown` turns true. Resumes
/// from `state` when it holds a committed model; otherwise starts from `initial`.
pub async fn run_aggregator(
    endpoint: Arc<AggregatorEndpoint>,
    state: AggregatorState,
    initial: Option<(ModelLayout, Vec<f32>)>,
    opts: ServiceOptions,
    mut shutdown: watch::Receiver<bool>,
) -> Result<ServiceReport, ServiceError> {
    if opts.policy.fine_tune {
        return Err(ServiceError::FineTuneUnavailable);
    }
    let (mut snapshot, next_round) = match state.committed()? {
        Some(c) => (state.load(&c)?, c.next_round),
        None => {
            let (layout, params) = initial.ok_or(ServiceError::NoModel)?;
            (state.commit(0, 0, &layout, &params, 0)?, 1)
        }
    };
    tracing::info!(version = snapshot.version, next_round, "aggregator starting");
    let spill = std::env::temp_dir();
    let mut coordinator = RoundCoordinator::new(
        opts.policy.clone(),
        snapshot.layout.clone(),
        snapshot.params.clone(),
        snapshot.version,
        next_round,
        spill,
    );
    let (inbound_tx, mut inbound_rx) = mpsc::unbounded_channel::<Inbound>();
    let acceptor = {
        let endpoint = endpoint.clone();
        let caps = opts.capabilities.clone();
        let inbound = inbound_tx.clone();
        tokio::spawn(async move {
            while let Some(attempt) = endpoint.accept().await {
                match attempt {
                    Ok(conn) => {
                        tokio::spawn(session(conn, inbound.clone(), caps.clone()));
                    }
                    Err(e) => tracing::warn!(error = %e, "refused a connection"),
                }
            }
        })
    };
    let mut report = ServiceReport {
        version: snapshot.version,
        content_hash: snapshot.content_hash,
        params: Vec::new(),
        rounds: Vec::new(),
        rejected: Vec::new(),
        failed_rounds: Vec::new(),
    };
    let mut sessions: HashMap<StoreId, mpsc::UnboundedSender<Outbound>> = HashMap::new();
    // Spends reported with updates, recorded once the coordinator accepts them.
    let mut spends: HashMap<(StoreId, u64), fedfuse_protocol::msgs::PrivacySpend> = HashMap::new();
    let mut blob = Arc::new(std::mem::take(&mut snapshot.blob));
    let mut ticker = tokio::time::interval(opts.tick);
    let mut finished = false;
    let mut pending = coordinator.handle(Event::Tick { now_ms: unix_ms() });
    loop {
        for action in pending.drain(..) {
            match action {
                Action::Offer {
                    store,
                    round_id,
                    version,
                    deadline_ms,
                } => {
                    let offer = RoundOffer {
                        round_id,
                        model: ModelManifest {
                            version,
                            content_hash: snapshot.content_hash,
                            total_bytes: blob.len() as u64,
                            chunk_bytes: opts.chunk_bytes,
                        },
                        plan: opts.plan.clone(),
                        deadline_unix_ms: deadline_ms,
                    };
                    if let Some(tx) = sessions.get(&store) {
                        let _ = tx.send(Outbound::Offer(offer, blob.clone()));
                    }
                }
                Action::Accepted {
                    store,
                    round_id,
                    updates_in_round,
                } => {
                    state.record_update(&store, round_id, spends.remove(&(store.clone(), round_id)).as_ref())?;
                    if let Some(tx) = sessions.get(&store) {
                        let _ = tx.send(Outbound::Message(Message::UpdateAccepted(UpdateAccepted {
                            round_id,
                            updates_in_round,
                        })));
                    }
                }
                Action::Rejected { store, round_id, reason } => {
                    tracing::warn!(%store, round_id, %reason, "update rejected");
                    if let Some(tx) = sessions.get(&store) {
                        let _ = tx.send(Outbound::Message(Message::UpdateRejected(UpdateRejected {
                            round_id,
                            reason: reason.clone(),
                        })));
                    }
                    report.rejected.push((store, round_id, reason));
                }
                Action::Commit {
                    round_id,
                    version,
                    params,
                    updates,
                } => {
                    snapshot = state.commit(round_id, version, &snapshot.layout, &params, updates)?;
                    blob = Arc::new(std::mem::take(&mut snapshot.blob));
                    tracing::info!(round_id, version, updates, "round committed");
                }
                Action::FineTune { .. } => return Err(ServiceError::FineTuneUnavailable),
                Action::RoundFailed { round_id, reason } => {
                    tracing::warn!(round_id, %reason, "round failed");
                    report.failed_rounds.push((round_id, reason));
                }
                Action::Finished => finished = true,
            }
        }
        if finished {
            break;
        }
        tokio::select! {
            msg = inbound_rx.recv() => match msg {
                Some(Inbound::Register(store, tx)) => {
                    sessions.insert(store, tx);
                }
                Some(Inbound::Event(event)) => {
                    if let Event::Gone { store } = &event {
                        sessions.remove(store);
                    }
                    if let Event::Update { store, upload } = &event
                        && let Some(spend) = &upload.privacy_spend
                    {
                        spends.insert((store.clone(), upload.round_id), spend.clone());
                    }
                    pending = coordinator.handle(event);
                }
                None => break,
            },
            _ = ticker.tick() => pending = coordinator.handle(Event::Tick { now_ms: unix_ms() }),
            _ = shutdown.changed() => break,
        }
    }
    for tx in sessions.values() {
        let _ = tx.send(Outbound::Bye);
    }
    // Give the stores a moment to read their goodbyes before the endpoint goes.
    tokio::time::sleep(Duration::from_millis(200)).await;
    acceptor.abort();
    endpoint.close();
    report.version = snapshot.version;
    report.content_hash = snapshot.content_hash;
    report.params = snapshot.params.clone();
    report.rounds = state.rounds()?;
    Ok(report)
}

async fn session(conn: PeerConnection, inbound: mpsc::UnboundedSender<Inbound>, caps: Capabilities) {
    let conn = Arc::new(conn);
    let store = conn.peer_id().to_owned();
    let hello = match conn.recv().await {
        Ok(Message::Hello(h)) => Ok(h),
        Err(TransportError::Decode(e)) => Err(e),
        Ok(other) => {
            tracing::warn!(%store, kind = ?other.kind(), "expected Hello");
            conn.close("expected Hello");
            return;
        }
        Err(e) => {
            tracing::warn!(%store, error = %e, "connection lost before Hello");
            return;
        }
    };
    let agreed = match negotiate(hello, &caps) {
        Ok(a) => a,
        Err(reason) => {
            tracing::warn!(%store, %reason, "refused");
            let _ = conn.send(&Message::Refused(Refused { reason })).await;
            conn.close_gracefully("refused", Duration::from_secs(2)).await;
            return;
        }
    };
    conn.set_max_message_bytes(agreed.max_message_bytes);
    let welcome = Message::Welcome(Welcome {
        protocol_version: PROTOCOL_VERSION,
        store_id: store.clone(),
        session_id: unix_ms(),
        capabilities: agreed,
        heartbeat_interval_ms: 5_000,
    });
    if conn.send(&welcome).await.is_err() {
        return;
    }
    let (tx, mut rx) = mpsc::unbounded_channel();
    let _ = inbound.send(Inbound::Register(store.clone(), tx.clone()));
    let _ = inbound.send(Inbound::Event(Event::Connected { store: store.clone() }));
    let writer = {
        let conn = conn.clone();
        tokio::spawn(async move {
            while let Some(out) = rx.recv().await {
                let sent = match out {
                    Outbound::Message(m) => conn.send(&m).await,
                    Outbound::Offer(offer, blob) => match conn.send(&Message::RoundOffer(offer.clone())).await {
                        Ok(()) => conn.send_model(&offer.model, &blob).await,
                        Err(e) => Err(e),
                    },
                    Outbound::Bye => {
                        let _ = conn
                            .send(&Message::Bye(Bye {
                                reason: "federation finished".into(),
                            }))
                            .await;
                        conn.close_gracefully("federation finished", Duration::from_secs(2)).await;
                        return;
                    }
                };
                if sent.is_err() {
                    return;
                }
            }
        })
    };
    loop {
        match conn.recv().await {
            Ok(Message::UpdateUpload(upload)) => {
                let _ = inbound.send(Inbound::Event(Event::Update {
                    store: store.clone(),
                    upload,
                }));
            }
            Ok(Message::Heartbeat(hb)) => {
                let _ = tx.send(Outbound::Message(Message::Heartbeat(hb)));
            }
            Ok(Message::Bye(_)) => break,
            Ok(other) if other.kind() == MessageKind::Hello => {
                let _ = tx.send(Outbound::Message(Message::Refused(Refused {
                    reason: RefusalReason::Other {
                        detail: "already in session".into(),
                    },
                })));
            }
            Ok(other) => tracing::warn!(%store, kind = ?other.kind(), "unexpected message ignored"),
            Err(e) => {
                tracing::info!(%store, error = %e, "store connection ended");
                break;
            }
        }
    }
    let _ = inbound.send(Inbound::Event(Event::Gone { store }));
    writer.abort();
    conn.close("session over");
}
