//! The e2e harness: an in-process server on an ephemeral port ([`TestServer`]), a raw
//! msgpack WebSocket client ([`Client`]) and the transcript every scenario snapshots
//! ([`Transcript`]), with the redactions that keep transcripts stable.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream, connect_async};

use topgun::clock::ManualClock;
use topgun::entropy::SeededEntropy;
use topgun::hlc::Timestamp;
use topgun::merkle::Combine;
use topgun::net::{Listener, TcpListener};
use topgun::protocol::Message;
use topgun::protocol::codec::{Frame, Limits as CodecLimits, decode, decode_value, encode_msgpack};
use topgun::security::Permissions;
use topgun::server::config::{FileConfig, Limits};
use topgun::server::{Server, ServerOptions};
use topgun::store::{MemoryStore, RedbStore, Store};

/// The JWT secret every test server uses (≥ 32 bytes, like production requires).
pub const SECRET: &str = "e2e-secret-0123456789abcdef0123456789";
/// The server's HLC node id (redacted in transcripts all the same).
pub const SERVER_NODE: &str = "server-e2e";
/// The server's fixed wall clock (2026-09-21), so tokens and timestamps are reproducible.
pub const SERVER_NOW_MS: u64 = 1_790_000_000_000;
/// The client node id of the fake client clock.
pub const CLIENT_NODE: &str = "client-a";
/// Held by tests that load the whole machine (TEST-03) or measure latency (the worker-pool
/// test), so the two never run at once and the latency bound measures the server, not a
/// neighbouring test.
pub static EXCLUSIVE: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// How long any single receive may take before the test fails instead of hanging.
pub const RECV_TIMEOUT: Duration = Duration::from_secs(5);

/// A valid token for `sub` with role USER, minted against the server's clock.
pub fn token(sub: &str) -> String {
    topgun::auth::mint_token(SECRET, sub, &["USER"], 3_600, SERVER_NOW_MS / 1_000)
        .expect("mint token")
}

/// A client timestamp from the fixed fake client clock.
pub fn ts(millis: u64, counter: u32, node: &str) -> Timestamp {
    Timestamp {
        millis,
        counter,
        node_id: node.to_owned(),
    }
}

/// Builds a message from its wire JSON (including `type`), as a client would send it.
pub fn msg(value: Value) -> Message {
    serde_json::from_value(value).expect("test message matches its type")
}

/// Where the server keeps its data.
enum Storage {
    Memory,
    Redb(PathBuf),
}

/// What a scenario may change about a test server: limits, JWT secret, wall clock.
#[derive(Clone)]
pub struct Setup {
    pub limits: Limits,
    pub secret: String,
    pub now_ms: u64,
}

impl Default for Setup {
    fn default() -> Self {
        Self {
            limits: Limits::default(),
            secret: SECRET.to_owned(),
            now_ms: SERVER_NOW_MS,
        }
    }
}

/// An in-process server on `127.0.0.1:<ephemeral>`.
pub struct TestServer {
    server: Server,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
    addr: std::net::SocketAddr,
    storage: Storage,
    max_connections: usize,
    setup: Setup,
    config: FileConfig,
    clock: Arc<ManualClock>,
}

impl TestServer {
    /// A server over an in-memory store.
    pub async fn start() -> Self {
        Self::launch(Storage::Memory, 100, FileConfig::default()).await
    }

    /// A server over an in-memory store configured by a TOML config file's text
    /// (permissions, search, limits) instead of the defaults.
    pub async fn with_config(toml: &str) -> Self {
        let config = FileConfig::parse(toml).expect("valid test config");
        Self::launch(Storage::Memory, 100, config).await
    }

    /// A server over an in-memory store with a connection limit.
    pub async fn with_max_connections(max_connections: usize) -> Self {
        Self::launch(Storage::Memory, max_connections, FileConfig::default()).await
    }

    /// A server over a redb store in `dir`.
    pub async fn with_redb(dir: PathBuf) -> Self {
        Self::launch(Storage::Redb(dir), 100, FileConfig::default()).await
    }

    /// A server over an in-memory store with custom limits.
    pub async fn with_limits(limits: Limits) -> Self {
        let setup = Setup {
            limits,
            ..Setup::default()
        };
        Self::launch_with(Storage::Memory, 100, setup, FileConfig::default()).await
    }

    /// A server over an in-memory store with the given limits, secret and clock.
    pub async fn with_setup(setup: Setup) -> Self {
        Self::launch_with(Storage::Memory, 100, setup, FileConfig::default()).await
    }

    async fn launch(storage: Storage, max_connections: usize, config: FileConfig) -> Self {
        let setup = Setup {
            limits: config.limits.clone(),
            ..Setup::default()
        };
        Self::launch_with(storage, max_connections, setup, config).await
    }

    async fn launch_with(
        storage: Storage,
        max_connections: usize,
        setup: Setup,
        config: FileConfig,
    ) -> Self {
        let store: Arc<dyn Store> = match &storage {
            Storage::Memory => Arc::new(MemoryStore::new()),
            Storage::Redb(dir) => Arc::new(open_redb(dir).await),
        };
        let options = ServerOptions {
            node_id: SERVER_NODE.to_owned(),
            jwt_secret: setup.secret.clone(),
            permissions: config
                .permissions
                .clone()
                .map_or_else(Permissions::development_default, Permissions::new),
            limits: setup.limits.clone(),
            max_connections,
            debug: false,
            default_combine: Combine::Fmix,
            search: topgun::server::search::configs_from_file(&config.search),
        };
        let clock = Arc::new(ManualClock::new(setup.now_ms));
        let server = Server::new(
            options,
            store,
            clock.clone(),
            Arc::new(SeededEntropy::new(7)),
        )
        .expect("server builds");
        let listener = TcpListener::bind("127.0.0.1:0".parse().expect("addr"))
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let runner = server.clone();
        let task = tokio::spawn(async move { runner.run(listener).await });
        Self {
            server,
            task,
            addr,
            storage,
            max_connections,
            setup,
            config,
            clock,
        }
    }

    /// The running server (to drive server-side passes such as GC directly).
    pub fn server(&self) -> &Server {
        &self.server
    }

    /// The server's wall clock, which only moves when a test moves it.
    pub fn clock(&self) -> &ManualClock {
        &self.clock
    }

    /// `ws://` URL of the server.
    pub fn url(&self) -> String {
        format!("ws://{}", self.addr)
    }

    /// The `host:port` of the server.
    pub fn addr(&self) -> std::net::SocketAddr {
        self.addr
    }

    /// Shuts the server down gracefully and waits for its accept loop to end.
    pub async fn stop(self) -> Option<PathBuf> {
        self.server.shutdown(Duration::from_secs(2)).await;
        let _ = tokio::time::timeout(RECV_TIMEOUT, self.task).await;
        drop(self.server);
        match self.storage {
            Storage::Memory => None,
            Storage::Redb(dir) => Some(dir),
        }
    }

    /// Shuts down, reopens the same store directory and starts again (on a new port).
    pub async fn restart(self) -> Self {
        let max_connections = self.max_connections;
        let setup = self.setup.clone();
        let config = self.config.clone();
        let storage = match self.stop().await {
            Some(dir) => Storage::Redb(dir),
            None => Storage::Memory,
        };
        Self::launch_with(storage, max_connections, setup, config).await
    }
}

/// Opens redb, retrying briefly while the previous instance is still releasing its file.
async fn open_redb(dir: &std::path::Path) -> RedbStore {
    let mut attempts = 0;
    loop {
        match RedbStore::open(dir) {
            Ok(store) => return store,
            Err(_) if attempts < 100 => {
                attempts += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => panic!("cannot reopen redb in {}: {e}", dir.display()),
        }
    }
}

/// The shared, ordered record of every frame of a scenario.
#[derive(Clone, Default)]
pub struct Transcript(Arc<Mutex<Vec<String>>>);

impl Transcript {
    /// Appends a free-form line (section markers, notes).
    pub fn note(&self, line: impl Into<String>) {
        self.0.lock().expect("transcript").push(line.into());
    }

    /// The transcript text, one line per frame.
    pub fn text(&self) -> String {
        self.0.lock().expect("transcript").join("\n")
    }
}

/// Renders a message as `TYPE {json}` with `type` removed and variable values redacted.
pub fn render(message: &Message) -> String {
    let mut value = serde_json::to_value(message).expect("message serializes");
    let type_name = message.type_name();
    if let Value::Object(map) = &mut value {
        map.remove("type");
    }
    redact(&mut value);
    format!("{type_name} {value}")
}

/// Replaces values that vary between runs: server timestamps, serverTime, tokens, topic
/// publisher ids.
fn redact(value: &mut Value) {
    match value {
        Value::Object(map) => {
            let is_server_timestamp = map.get("nodeId").and_then(Value::as_str)
                == Some(SERVER_NODE)
                && map.contains_key("millis");
            if is_server_timestamp {
                *value = json!("[server-ts]");
                return;
            }
            for (key, field) in map.iter_mut() {
                match key.as_str() {
                    "serverTime" => *field = json!("[serverTime]"),
                    "token" | "deviceToken" => *field = json!("[token]"),
                    "publisherId" => *field = json!("[publisherId]"),
                    _ => redact(field),
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(redact),
        _ => {}
    }
}

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// A raw msgpack WebSocket client whose traffic goes into a [`Transcript`].
pub struct Client {
    name: String,
    socket: Socket,
    transcript: Transcript,
    last_raw: Value,
}

impl Client {
    /// Connects to `server`; frames are logged under `name`.
    pub async fn connect(server: &TestServer, name: &str, transcript: &Transcript) -> Self {
        Self::connect_url(&server.url(), name, transcript).await
    }

    /// Connects to a server at `url` (e.g. a separately started binary).
    pub async fn connect_url(url: &str, name: &str, transcript: &Transcript) -> Self {
        let (socket, _) = tokio::time::timeout(RECV_TIMEOUT, connect_async(url))
            .await
            .expect("connect in time")
            .expect("connect");
        Self {
            name: name.to_owned(),
            socket,
            transcript: transcript.clone(),
            last_raw: Value::Null,
        }
    }

    /// Connects, expects `AUTH_REQUIRED`, authenticates as `name` and expects `AUTH_ACK`.
    pub async fn authed(server: &TestServer, name: &str, transcript: &Transcript) -> Self {
        Self::authed_with(&server.url(), name, &token(name), transcript).await
    }

    /// Connects to `url`, expects `AUTH_REQUIRED`, sends `AUTH` with `token` and expects
    /// `AUTH_ACK`: the handshake every authenticated scenario starts with.
    pub async fn authed_with(url: &str, name: &str, token: &str, transcript: &Transcript) -> Self {
        let mut client = Self::connect_url(url, name, transcript).await;
        client.expect_type("AUTH_REQUIRED").await;
        client
            .send(msg(json!({"type": "AUTH", "token": token})))
            .await;
        client.expect_type("AUTH_ACK").await;
        client
    }

    /// Sends one message as a msgpack binary frame.
    pub async fn send(&mut self, message: Message) {
        self.transcript
            .note(format!("{} C→S {}", self.name, render(&message)));
        let bytes = encode_msgpack(&message).expect("encode");
        self.socket
            .send(WsMessage::Binary(bytes.into()))
            .await
            .expect("send");
    }

    /// Sends raw bytes as a binary frame (logged as hex).
    pub async fn send_raw(&mut self, bytes: &[u8]) {
        let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        self.transcript.note(format!("{} C→S RAW {hex}", self.name));
        self.socket
            .send(WsMessage::Binary(bytes.to_vec().into()))
            .await
            .expect("send raw");
    }

    /// The next application frame within [`RECV_TIMEOUT`]; fails on close or timeout.
    pub async fn recv(&mut self) -> Message {
        match self.next_frame(RECV_TIMEOUT).await {
            Some(Incoming::Message(m)) => *m,
            Some(Incoming::Close(code, reason)) => {
                panic!(
                    "{}: expected a message, got CLOSE {code} {reason}",
                    self.name
                )
            }
            None => panic!("{}: no message within {RECV_TIMEOUT:?}", self.name),
        }
    }

    /// The next application message within `wait`, or `None` on silence; fails on close.
    pub async fn recv_within(&mut self, wait: Duration) -> Option<Message> {
        match self.next_frame(wait).await? {
            Incoming::Message(m) => Some(*m),
            Incoming::Close(code, reason) => {
                panic!(
                    "{}: expected a message, got CLOSE {code} {reason}",
                    self.name
                )
            }
        }
    }

    /// Receives and checks the next message's type.
    pub async fn expect_type(&mut self, type_name: &str) -> Message {
        let m = self.recv().await;
        assert_eq!(m.type_name(), type_name, "{}: unexpected {m:?}", self.name);
        m
    }

    /// Asserts nothing arrives within `wait`.
    pub async fn expect_silence(&mut self, wait: Duration) {
        if let Some(frame) = self.next_frame(wait).await {
            panic!("{}: expected silence, got {frame:?}", self.name);
        }
    }

    /// The close frame's code and reason (messages before it are logged and skipped).
    pub async fn expect_close(&mut self) -> (u16, String) {
        loop {
            match self.next_frame(RECV_TIMEOUT).await {
                Some(Incoming::Close(code, reason)) => return (code, reason),
                Some(Incoming::Message(_)) => {}
                None => panic!("{}: no close within {RECV_TIMEOUT:?}", self.name),
            }
        }
    }

    async fn next_frame(&mut self, wait: Duration) -> Option<Incoming> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let frame = tokio::time::timeout_at(deadline, self.socket.next())
                .await
                .ok()?;
            let incoming = match frame {
                Some(Ok(WsMessage::Binary(bytes))) => self.decode_frame(Frame::Binary(&bytes)),
                Some(Ok(WsMessage::Text(text))) => self.decode_frame(Frame::Text(text.as_str())),
                Some(Ok(WsMessage::Close(frame))) => match frame {
                    Some(f) => Incoming::Close(u16::from(f.code), f.reason.to_string()),
                    None => Incoming::Close(1005, String::new()),
                },
                Some(Ok(_)) => continue,
                Some(Err(_)) | None => Incoming::Close(1006, String::new()),
            };
            match &incoming {
                Incoming::Message(m) => {
                    self.transcript
                        .note(format!("{} S→C {}", self.name, render(m)))
                }
                Incoming::Close(code, reason) => self
                    .transcript
                    .note(format!("{} CLOSE {code} {reason}", self.name)),
            }
            return Some(incoming);
        }
    }

    /// Keeps the frame's raw decoded map (for checks on key presence) and types it.
    fn decode_frame(&mut self, frame: Frame<'_>) -> Incoming {
        self.last_raw =
            decode_value(frame, &CodecLimits::default()).expect("server frame is valid");
        Incoming::Message(Box::new(decode(frame).expect("server frame decodes")))
    }

    /// The raw map of the last message received, as it was on the wire.
    pub fn last_raw(&self) -> &Value {
        &self.last_raw
    }

    /// Closes the connection politely.
    pub async fn close(mut self) {
        let _ = self.socket.close(None).await;
    }
}

#[derive(Debug)]
enum Incoming {
    Message(Box<Message>),
    Close(u16, String),
}

/// Snapshots a scenario's transcript into `snapshots/<name>.snap`.
#[macro_export]
macro_rules! snapshot {
    ($name:expr, $transcript:expr) => {
        insta::with_settings!({
            snapshot_path => concat!(env!("CARGO_MANIFEST_DIR"), "/snapshots"),
            prepend_module_to_snapshot => false,
        }, {
            insta::assert_snapshot!($name, $transcript.text());
        })
    };
}
