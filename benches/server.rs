//! The server's whole write path without the kernel: `topgun bench write --wait` traffic
//! (10-op `OP_BATCH`es of 100-byte values over 10,000 keys, each connection waiting for its
//! `OP_ACK`) through in-memory streams into a real [`Server`] over a redb store, on one
//! thread. Socket costs and scheduler noise are left out, so what changes in decoding,
//! merging, journaling and acking shows here at a resolution the load tests cannot give.
//! Figures are printed, never asserted.

use std::hint::black_box;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group};
use futures_util::{SinkExt, StreamExt};
use tokio::io::DuplexStream;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::{WebSocketStream, client_async_with_config};

use topgun::auth::mint_token;
use topgun::clock::{Clock, SystemClock};
use topgun::entropy::SeededEntropy;
use topgun::net::Listener;
use topgun::protocol::codec::{Frame, decode};
use topgun::protocol::{Message, encode_msgpack};
use topgun::security::Permissions;
use topgun::server::config::Limits as ServerLimits;
use topgun::server::{Server, ServerOptions};
use topgun::store::RedbStore;

/// The same allocator as the `topgun` binary, so the figures are the server's.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const SECRET: &str = "bench-secret-0123456789abcdef0123456789";
/// Connections writing at once; each has one batch in flight.
const CONNECTIONS: usize = 16;
const BATCH_OPS: usize = 10;
const VALUE_BYTES: usize = 100;
const KEYS: u64 = 10_000;
/// Bytes each in-memory stream buffers per direction.
const STREAM_BUFFER: usize = 64 * 1024;

type Client = WebSocketStream<DuplexStream>;

/// Hands the server the server ends of in-memory streams.
struct MemoryListener(mpsc::UnboundedReceiver<DuplexStream>);

impl Listener for MemoryListener {
    type Conn = DuplexStream;

    async fn accept(&mut self) -> std::io::Result<(DuplexStream, SocketAddr)> {
        match self.0.recv().await {
            Some(stream) => Ok((stream, local_addr())),
            // No more clients will come: park, as an idle listener does.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        Ok(local_addr())
    }
}

fn local_addr() -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, 8080))
}

/// `OP_BATCH` frames as `topgun bench write` sends them, built once per connection as
/// templates with fixed-width timestamps that each send stamps afresh, so every op wins its
/// merge and building a frame costs a copy.
struct Frames {
    templates: Vec<Template>,
    next: usize,
}

/// One encoded batch and where its ops' `millis` (float64) and `counter` (uint32) payloads are.
struct Template {
    bytes: Vec<u8>,
    millis_at: Vec<usize>,
    counter_at: Vec<usize>,
}

/// Templates per connection: the keys they cycle through.
const TEMPLATES: usize = 64;

impl Frames {
    fn new(connection: usize) -> Result<Self, String> {
        let mut key_state = connection as u64 + 1;
        let mut next_key = move || {
            // A 64-bit LCG (Knuth's MMIX constants): cheap, deterministic, well spread.
            key_state = key_state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (key_state >> 33) % KEYS
        };
        let node_id = format!("bench-node-{connection}");
        let padding = "x".repeat(VALUE_BYTES);
        let mut id = 0u64;
        let templates = (0..TEMPLATES)
            .map(|_| {
                let keys: Vec<u64> = (0..BATCH_OPS).map(|_| next_key()).collect();
                template(&keys, &mut id, &node_id, &padding).map_err(|e| e.to_string())
            })
            .collect::<Result<_, _>>()?;
        Ok(Self { templates, next: 0 })
    }

    /// The next frame, its ops stamped `millis` with counters from `counter` on.
    fn next(&mut self, millis: u64, counter: &mut u32) -> Vec<u8> {
        let template = &self.templates[self.next % TEMPLATES];
        self.next += 1;
        let mut frame = template.bytes.clone();
        for (&millis_at, &counter_at) in template.millis_at.iter().zip(&template.counter_at) {
            *counter = counter.wrapping_add(1);
            frame[millis_at..millis_at + 8].copy_from_slice(&(millis as f64).to_be_bytes());
            frame[counter_at..counter_at + 4].copy_from_slice(&counter.to_be_bytes());
        }
        frame
    }
}

/// Encodes one batch of PUTs of `{"v": padding}` to `keys`, ids from `id + 1`.
fn template(
    keys: &[u64],
    id: &mut u64,
    node_id: &str,
    padding: &str,
) -> Result<Template, rmp::encode::ValueWriteError> {
    use rmp::encode::{write_array_len, write_f64, write_map_len, write_str, write_u32};
    let mut out = Vec::new();
    let (mut millis_at, mut counter_at) = (Vec::new(), Vec::new());
    write_map_len(&mut out, 2)?;
    write_str(&mut out, "type")?;
    write_str(&mut out, "OP_BATCH")?;
    write_str(&mut out, "payload")?;
    write_map_len(&mut out, 1)?;
    write_str(&mut out, "ops")?;
    write_array_len(&mut out, keys.len() as u32)?;
    for key in keys {
        *id += 1;
        write_map_len(&mut out, 5)?;
        write_str(&mut out, "id")?;
        write_str(&mut out, &id.to_string())?;
        write_str(&mut out, "mapName")?;
        write_str(&mut out, "bench")?;
        write_str(&mut out, "key")?;
        write_str(&mut out, &format!("k{key}"))?;
        write_str(&mut out, "opType")?;
        write_str(&mut out, "PUT")?;
        write_str(&mut out, "record")?;
        write_map_len(&mut out, 2)?;
        write_str(&mut out, "value")?;
        write_map_len(&mut out, 1)?;
        write_str(&mut out, "v")?;
        write_str(&mut out, padding)?;
        write_str(&mut out, "timestamp")?;
        write_map_len(&mut out, 3)?;
        write_str(&mut out, "millis")?;
        write_f64(&mut out, 0.0)?;
        millis_at.push(out.len() - 8);
        write_str(&mut out, "counter")?;
        write_u32(&mut out, 0)?;
        counter_at.push(out.len() - 4);
        write_str(&mut out, "nodeId")?;
        write_str(&mut out, node_id)?;
    }
    Ok(Template {
        bytes: out,
        millis_at,
        counter_at,
    })
}

/// A running server and authenticated clients, all on `runtime`.
struct Rig {
    runtime: tokio::runtime::Runtime,
    clients: Vec<Client>,
    frames: Vec<Frames>,
    /// The HLC counter of the last op sent (all ops share a round's `millis`).
    counter: u32,
    _server: Arc<Server>,
    _dir: tempfile::TempDir,
}

impl Rig {
    fn new() -> Result<Self, String> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let store = Arc::new(RedbStore::open(dir.path()).map_err(|e| e.to_string())?);
        let options = ServerOptions {
            node_id: "server-1".into(),
            jwt_secret: SECRET.into(),
            permissions: Permissions::development_default(),
            limits: ServerLimits::default(),
            max_connections: 1_000,
            debug: false,
            default_combine: topgun::merkle::Combine::Fmix,
            search: Default::default(),
        };
        let server = Arc::new(
            Server::new(
                options,
                store,
                Arc::new(SystemClock),
                Arc::new(SeededEntropy::new(1)),
            )
            .map_err(|e| e.to_string())?,
        );
        let (connect, accepted) = mpsc::unbounded_channel();
        let running = server.clone();
        runtime.spawn(async move { running.run(MemoryListener(accepted)).await });
        let clients = runtime.block_on(async {
            let mut clients = Vec::with_capacity(CONNECTIONS);
            for index in 0..CONNECTIONS {
                let (client_end, server_end) = tokio::io::duplex(STREAM_BUFFER);
                connect.send(server_end).map_err(|e| e.to_string())?;
                clients.push(authenticate(client_end, index).await?);
            }
            Ok::<_, String>(clients)
        })?;
        Ok(Self {
            runtime,
            clients,
            frames: (0..CONNECTIONS)
                .map(Frames::new)
                .collect::<Result<_, _>>()?,
            counter: 0,
            _server: server,
            _dir: dir,
        })
    }

    /// Sends one batch on every connection and waits for every ack, `rounds` times; the
    /// time taken.
    fn run(&mut self, rounds: u64) -> Result<Duration, String> {
        let (clients, sources, counter) = (&mut self.clients, &mut self.frames, &mut self.counter);
        self.runtime.block_on(async move {
            let started = Instant::now();
            for _ in 0..rounds {
                let millis = SystemClock.now_millis();
                for (client, source) in clients.iter_mut().zip(sources.iter_mut()) {
                    let frame = source.next(millis, counter);
                    client
                        .send(WsMessage::Binary(frame.into()))
                        .await
                        .map_err(|e| e.to_string())?;
                }
                for client in clients.iter_mut() {
                    expect_ack(client).await?;
                }
            }
            Ok(started.elapsed())
        })
    }
}

async fn authenticate(stream: DuplexStream, index: usize) -> Result<Client, String> {
    // As `topgun bench`: tungstenite zeroes its whole read buffer (128 KiB by default) on
    // every read, which would be most of what this bench measures.
    let config = WebSocketConfig::default().read_buffer_size(4 * 1024);
    let (mut client, _) = client_async_with_config("ws://localhost:8080/", stream, Some(config))
        .await
        .map_err(|e| e.to_string())?;
    let now = SystemClock.now_millis() / 1_000;
    let token = mint_token(SECRET, &format!("bench-{index}"), &["USER"], 3_600, now)
        .map_err(|e| e.to_string())?;
    let auth = encode_msgpack(&Message::Auth(topgun::protocol::Auth {
        token,
        protocol_version: None,
        device_token: None,
    }))
    .map_err(|e| e.to_string())?;
    client
        .send(WsMessage::Binary(auth.into()))
        .await
        .map_err(|e| e.to_string())?;
    loop {
        match next_message(&mut client).await? {
            Message::AuthAck(_) => return Ok(client),
            Message::AuthRequired(_) => {}
            other => return Err(format!("unexpected {} before AUTH_ACK", other.type_name())),
        }
    }
}

async fn expect_ack(client: &mut Client) -> Result<(), String> {
    match next_message(client).await? {
        Message::OpAck(_) => Ok(()),
        other => Err(format!("expected OP_ACK, got {}", other.type_name())),
    }
}

async fn next_message(client: &mut Client) -> Result<Message, String> {
    loop {
        match client.next().await {
            Some(Ok(WsMessage::Binary(bytes))) => {
                return decode(Frame::Binary(&bytes)).map_err(|e| e.to_string());
            }
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err(e.to_string()),
            None => return Err("the server closed the connection".to_owned()),
        }
    }
}

fn bench_write_round_trip(c: &mut Criterion) {
    let mut rig = match Rig::new() {
        Ok(rig) => rig,
        Err(error) => {
            eprintln!("cannot set up the server bench: {error}");
            return;
        }
    };
    let mut group = c.benchmark_group("server");
    group.throughput(Throughput::Elements((CONNECTIONS * BATCH_OPS) as u64));
    group.bench_function(
        format!("write_wait_{CONNECTIONS}_conns_{BATCH_OPS}x{VALUE_BYTES}B (in-memory streams)"),
        |b| {
            b.iter_custom(|rounds| match rig.run(rounds) {
                Ok(elapsed) => black_box(elapsed),
                Err(error) => {
                    eprintln!("round trip failed: {error}");
                    Duration::MAX
                }
            })
        },
    );
    group.finish();
}

fn configure() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(20)
}

criterion_group! {
    name = benches;
    config = configure();
    targets = bench_write_round_trip
}

/// `--rounds N` runs exactly N rounds and exits, without Criterion: a fixed workload for
/// `valgrind --tool=callgrind ... --rounds 300`. Compare instructions per call of the
/// server's functions (`handle_op_batch`, `decode_frame`, ...), which repeat within a few
/// percent between runs; the thread's total does not, because how much of the run the
/// bench thread gets before the process ends depends on the store threads' timing.
fn main() {
    let mut args = std::env::args().skip_while(|arg| arg != "--rounds").skip(1);
    let Some(rounds) = args.next() else {
        benches();
        Criterion::default().configure_from_args().final_summary();
        return;
    };
    let rounds: u64 = match rounds.parse() {
        Ok(rounds) => rounds,
        Err(error) => {
            eprintln!("--rounds {rounds}: {error}");
            std::process::exit(2);
        }
    };
    let result = Rig::new().and_then(|mut rig| rig.run(rounds));
    match result {
        Ok(elapsed) => {
            println!("{rounds} rounds of {CONNECTIONS} batches of {BATCH_OPS} ops: {elapsed:?}")
        }
        Err(error) => {
            eprintln!("{error}");
            std::process::exit(1);
        }
    }
}
