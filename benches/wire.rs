//! Wire benchmark: encode/decode throughput of a 50M-float update in each encoding, and the
//! goodput of a 200 MB update over loopback QUIC (our tuning and quinn's defaults) beside
//! TCP + rustls in the same run. Prints a table and writes it into BENCHMARKS.md.
//!
//! Run: `cargo bench --bench wire` (release settings; about a minute on 2 cores).

#[path = "../bench/benchmarks_md.rs"]
mod benchmarks_md;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use fedfuse_protocol::frame::HEADER_LEN;
use fedfuse_protocol::msgs::UpdateUpload;
use fedfuse_protocol::tensor::{NamedTensor, UpdateEncoding, ValueEncoding};
use fedfuse_protocol::{FrameHeader, Message};
use fedfuse_server::pki::{self, InitOptions};
use fedfuse_transport::{AggregatorEndpoint, Identity, StoreEndpoint, TransportTuning, TrustAnchors, tls};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const FLOATS: usize = 50_000_000;
const SHAPE: [u32; 2] = [500_000, 100];
const REPEATS: usize = 3;

fn update(values: &[f32], encoding: ValueEncoding) -> Message {
    Message::UpdateUpload(UpdateUpload {
        round_id: 1,
        base_model_version: 1,
        example_count: 1000,
        metrics: vec![],
        privacy_spend: None,
        tensors: vec![NamedTensor::encode("item_embedding.weight", &SHAPE, values, UpdateEncoding::Dense(encoding), 7).unwrap()],
    })
}

fn decode(frame: &[u8]) -> usize {
    let Message::UpdateUpload(u) = Message::decode_frame(frame, u64::MAX).unwrap() else {
        panic!("not an update")
    };
    u.tensors[0].to_f32(&SHAPE).unwrap().len()
}

fn best<T>(mut f: impl FnMut() -> T) -> (Duration, T) {
    let mut best = Duration::MAX;
    let mut out = None;
    for _ in 0..REPEATS {
        let t = Instant::now();
        let r = f();
        best = best.min(t.elapsed());
        out = Some(r);
    }
    (best, out.unwrap())
}

struct Row {
    what: String,
    value: String,
    note: String,
}

fn codec_rows(values: &[f32]) -> (Vec<Row>, Vec<u8>) {
    let input_gb = (values.len() * 4) as f64 / 1e9;
    let mut rows = Vec::new();
    let mut f32_frame = Vec::new();
    for enc in [ValueEncoding::F32, ValueEncoding::F16, ValueEncoding::Int8] {
        let (t_enc, frame) = best(|| update(values, enc).encode().unwrap());
        let (t_dec, n) = best(|| decode(&frame));
        assert_eq!(n, values.len());
        rows.push(Row {
            what: format!("encode {enc:?} (f32 → frame)"),
            value: format!("{:.2} GB/s", input_gb / t_enc.as_secs_f64()),
            note: format!(
                "{:.0} ms, frame {:.0} MB",
                t_enc.as_secs_f64() * 1e3,
                frame.len() as f64 / 1e6
            ),
        });
        rows.push(Row {
            what: format!("decode {enc:?} (frame → f32)"),
            value: format!("{:.2} GB/s", input_gb / t_dec.as_secs_f64()),
            note: format!("{:.0} ms", t_dec.as_secs_f64() * 1e3),
        });
        if enc == ValueEncoding::F32 {
            f32_frame = frame;
        }
    }
    (rows, f32_frame)
}

fn pki_pair() -> (tempfile::TempDir, Identity, TrustAnchors, Identity, TrustAnchors, String) {
    let dir = tempfile::tempdir().unwrap();
    let platform = pki::init(dir.path(), &InitOptions::default()).unwrap();
    let (agg_id, agg_trust) = platform.aggregator_tls().unwrap();
    let bundle = platform.issue_store("bench", 1).unwrap();
    let (store_id, store_trust) = bundle.tls().unwrap();
    (dir, agg_id, agg_trust, store_id, store_trust, bundle.aggregator_name)
}

/// Best transfer and end-to-end (transfer + decode) seconds of `frame` from a store to the
/// aggregator over QUIC with `tuning`, and the sender's path statistics at the end.
async fn quic_upload(frame: &[u8], tuning: &TransportTuning) -> (f64, f64, quinn::PathStats) {
    let (_dir, agg_id, agg_trust, store_id, store_trust, name) = pki_pair();
    let agg = AggregatorEndpoint::bind(SocketAddr::from(([127, 0, 0, 1], 0)), agg_id, &agg_trust, tuning.clone()).unwrap();
    let addr = agg.local_addr().unwrap();
    let store = StoreEndpoint::new(Some(&store_id), &store_trust, tuning).unwrap();
    let (server, client) = tokio::join!(async { agg.accept().await.unwrap().unwrap() }, store.connect(addr, &name));
    let client = client.unwrap();
    // What the handshake would agree; the benchmark measures frames, not the handshake.
    server.set_max_message_bytes(u64::MAX);
    // Let MTU discovery settle, as it would on any connection that lived a few seconds.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (mut transfer, mut e2e) = (f64::MAX, f64::MAX);
    for _ in 0..REPEATS {
        let start = Instant::now();
        let (sent, (t_transfer, got)) = tokio::join!(client.send_frame(frame), async {
            let (kind, body) = server.recv_frame().await.unwrap();
            let t = start.elapsed().as_secs_f64();
            match Message::decode(kind, &body).unwrap() {
                Message::UpdateUpload(u) => (t, u.tensors[0].to_f32(&SHAPE).unwrap().len()),
                other => panic!("{:?}", other.kind()),
            }
        });
        sent.unwrap();
        assert_eq!(got, FLOATS);
        transfer = transfer.min(t_transfer);
        e2e = e2e.min(start.elapsed().as_secs_f64());
    }
    let path = client.stats().path;
    client.close("bench over");
    (transfer, e2e, path)
}

/// The same upload over TCP + rustls (TLS 1.3, mutual auth, same certificates and frame).
async fn tcp_upload(frame: &[u8]) -> (f64, f64) {
    let (_dir, agg_id, agg_trust, store_id, store_trust, name) = pki_pair();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls::server_config(&agg_id, &agg_trust).unwrap()));
    let connector = tokio_rustls::TlsConnector::from(Arc::new(tls::client_config(Some(&store_id), &store_trust).unwrap()));
    let server_name = rustls_pki_types::ServerName::try_from(name).unwrap();
    let (server, client) = tokio::join!(
        async {
            let (tcp, _) = listener.accept().await.unwrap();
            tcp.set_nodelay(true).unwrap();
            acceptor.accept(tcp).await.unwrap()
        },
        async {
            let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
            tcp.set_nodelay(true).unwrap();
            connector.connect(server_name, tcp).await.unwrap()
        }
    );
    let (mut server, mut client) = (server, client);
    let (mut transfer, mut e2e) = (f64::MAX, f64::MAX);
    for _ in 0..REPEATS {
        let start = Instant::now();
        let (sent, (t_transfer, got)) = tokio::join!(
            async {
                client.write_all(frame).await?;
                client.flush().await
            },
            async {
                let mut head = [0u8; HEADER_LEN];
                server.read_exact(&mut head).await.unwrap();
                let h = FrameHeader::parse(&head, u64::MAX).unwrap();
                let mut body = vec![0u8; h.body_len as usize];
                server.read_exact(&mut body).await.unwrap();
                let t = start.elapsed().as_secs_f64();
                match Message::decode(h.kind, &body).unwrap() {
                    Message::UpdateUpload(u) => (t, u.tensors[0].to_f32(&SHAPE).unwrap().len()),
                    other => panic!("{:?}", other.kind()),
                }
            }
        );
        sent.unwrap();
        assert_eq!(got, FLOATS);
        transfer = transfer.min(t_transfer);
        e2e = e2e.min(start.elapsed().as_secs_f64());
    }
    (transfer, e2e)
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return; // `cargo test --benches` asks for a list; this benchmark has no test cases.
    }
    let machine = benchmarks_md::cpu_name();
    let values: Vec<f32> = (0..FLOATS)
        .map(|i| ((i as u64 * 2_654_435_761) % 20_001) as f32 / 10_000.0 - 1.0)
        .collect();
    eprintln!("codec…");
    let (mut rows, frame) = codec_rows(&values);
    drop(values);

    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let mb = frame.len() as f64 / 1e6;
    eprintln!("TCP + rustls…");
    let (tcp, tcp_e2e) = rt.block_on(tcp_upload(&frame));
    rows.push(Row {
        what: "upload 200 MB, TCP + rustls (reference)".into(),
        value: format!("{:.0} MB/s", mb / tcp),
        note: format!(
            "1.00×; with decode {:.0} MB/s. TLS 1.3, mutual auth, same certificates and frame",
            mb / tcp_e2e
        ),
    });
    // Each step adds one change to the one before; the last is `TransportTuning::default()`.
    let defaults = TransportTuning::quinn_defaults();
    let tuned = TransportTuning::default();
    let windows = TransportTuning {
        stream_window: tuned.stream_window,
        connection_window: tuned.connection_window,
        send_window: tuned.send_window,
        ..defaults.clone()
    };
    let buffers = TransportTuning {
        socket_buffer_bytes: tuned.socket_buffer_bytes,
        ..windows.clone()
    };
    let no_gso = TransportTuning {
        segmentation_offload: false,
        ..tuned.clone()
    };
    let capped = |mtu: u16| TransportTuning {
        mtu_discovery_upper_bound: mtu,
        ..tuned.clone()
    };
    let steps = [
        ("QUIC, quinn defaults", defaults),
        ("QUIC, + 64/256 MiB flow-control windows", windows),
        ("QUIC, + 4 MiB UDP socket buffers", buffers),
        ("QUIC, + MTU discovery up to 64 KiB = fedfuse default", tuned.clone()),
        ("QUIC, fedfuse default without GSO", no_gso),
        ("QUIC, fedfuse default, MTU capped at 9000 (jumbo frames)", capped(9000)),
        (
            "QUIC, fedfuse default, MTU capped at 1452 (Ethernet / Internet path)",
            capped(1452),
        ),
    ];
    for (what, tuning) in steps {
        eprintln!("{what}…");
        let (t, e2e, path) = rt.block_on(quic_upload(&frame, &tuning));
        rows.push(Row {
            what: format!("upload 200 MB, {what}"),
            value: format!("{:.0} MB/s", mb / t),
            note: format!(
                "{:.2}× TCP; with decode {:.0} MB/s; path MTU {}, {} lost packets, {} black holes",
                tcp / t,
                mb / e2e,
                path.current_mtu,
                path.lost_packets,
                path.black_holes_detected
            ),
        });
    }

    let mut table = format!(
        "## Wire: codec throughput and loopback goodput\n\n`cargo bench --bench wire` on {machine}, best of {REPEATS}. \
         Codec GB/s are of f32 input (50M floats = 200 MB). Goodput is frame bytes ({mb:.0} MB) over the time from the first \
         byte sent to the whole frame received; \"with decode\" also counts decoding it into f32 on the receiver.\n\n| measurement | result | detail |\n|---|---|---|\n"
    );
    for r in &rows {
        table.push_str(&format!("| {} | {} | {} |\n", r.what, r.value, r.note));
    }
    println!("{table}");
    benchmarks_md::write_section(std::path::Path::new(env!("CARGO_MANIFEST_DIR")), "wire", &table);
}
