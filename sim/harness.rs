//! Turmoil adapters for the server's seams, a minimal protocol client, and seed handling.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use topgun::auth::mint_token;
use topgun::clock::Clock;
use topgun::entropy::SeededEntropy;
use topgun::merkle::Combine;
use topgun::net::Listener;
use topgun::protocol::codec::{Frame, decode, encode_msgpack};
use topgun::protocol::{Auth, Message};
use topgun::security::Permissions;
use topgun::server::config::Limits;
use topgun::server::{Server, ServerOptions};
use topgun::store::MemoryStore;

pub const SECRET: &str = "simulation-secret-simulation-secret";
pub const SERVER_PORT: u16 = 8080;
/// Wall-clock reading at simulation start (2026-11-26).
pub const EPOCH_MS: u64 = 1_795_650_000_000;

/// A host's wall clock: simulated elapsed time plus a fixed skew.
#[derive(Debug, Clone, Copy)]
pub struct SimClock {
    pub skew_ms: i64,
}

impl Clock for SimClock {
    fn now_millis(&self) -> u64 {
        let elapsed = turmoil::sim_elapsed().unwrap_or_default().as_millis() as u64;
        (EPOCH_MS + elapsed).saturating_add_signed(self.skew_ms)
    }
}

/// turmoil's listener behind the server's network seam.
pub struct SimListener(pub turmoil::net::TcpListener);

impl Listener for SimListener {
    type Conn = turmoil::net::TcpStream;

    async fn accept(&mut self) -> std::io::Result<(Self::Conn, SocketAddr)> {
        self.0.accept().await
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.0.local_addr()
    }
}

/// Runs the real server on the current turmoil host until the simulation ends.
pub async fn run_server(seed: u64) -> Result<(), Box<dyn std::error::Error>> {
    let options = ServerOptions {
        node_id: "sim-server".to_owned(),
        jwt_secret: SECRET.to_owned(),
        permissions: Permissions::development_default(),
        limits: Limits::default(),
        max_connections: 100,
        debug: false,
        default_combine: Combine::Fmix,
        search: Default::default(),
    };
    let server = Server::new(
        options,
        Arc::new(MemoryStore::new()),
        Arc::new(SimClock { skew_ms: 0 }),
        Arc::new(SeededEntropy::new(seed)),
    )?;
    let listener = turmoil::net::TcpListener::bind(("0.0.0.0", SERVER_PORT)).await?;
    server.run(SimListener(listener)).await?;
    Ok(())
}

/// A raw protocol client over turmoil's network.
pub struct SimClient {
    ws: WebSocketStream<turmoil::net::TcpStream>,
    pub trace: Vec<String>,
}

impl SimClient {
    /// Connects to the server host and authenticates as `user`.
    pub async fn connect(user: &str, clock: &SimClock) -> Result<Self, Box<dyn std::error::Error>> {
        let stream = turmoil::net::TcpStream::connect(("server", SERVER_PORT)).await?;
        let (ws, _) = tokio_tungstenite::client_async("ws://server:8080/", stream).await?;
        let mut client = Self {
            ws,
            trace: Vec::new(),
        };
        let token = mint_token(SECRET, user, &["USER"], 3_600, clock.now_millis() / 1_000)?;
        assert!(matches!(client.recv().await?, Message::AuthRequired(_)));
        client
            .send(
                Auth {
                    token,
                    protocol_version: None,
                    device_token: None,
                }
                .into(),
            )
            .await?;
        assert!(matches!(client.recv().await?, Message::AuthAck(_)));
        Ok(client)
    }

    pub async fn send(&mut self, message: Message) -> Result<(), Box<dyn std::error::Error>> {
        let bytes = encode_msgpack(&message)?;
        self.trace.push(format!("C>S {}", message.type_name()));
        self.ws.send(WsMessage::Binary(bytes.into())).await?;
        Ok(())
    }

    pub async fn recv(&mut self) -> Result<Message, Box<dyn std::error::Error>> {
        loop {
            let frame = tokio::time::timeout(Duration::from_secs(30), self.ws.next())
                .await?
                .ok_or("connection closed")??;
            if let WsMessage::Binary(bytes) = frame {
                let message = decode(Frame::Binary(&bytes))?;
                self.trace.push(format!("S>C {}", message.type_name()));
                return Ok(message);
            }
        }
    }
}

/// The seeds a test runs: `TOPGUN_SIM_SEED` alone if set, else `count` seeds (overridden by
/// `TOPGUN_SIM_COUNT`) starting at a fixed base so CI is reproducible.
pub fn seeds(count: u64) -> Vec<u64> {
    if let Some(seed) = env_u64("TOPGUN_SIM_SEED") {
        return vec![seed];
    }
    let count = env_u64("TOPGUN_SIM_COUNT").unwrap_or(count);
    (0..count).map(|i| 0x5eed_0000 + i).collect()
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name)
        .ok()
        .filter(|s| !s.is_empty())?
        .parse()
        .ok()
}

/// A stable hash of a run's trace, printed so two runs can be compared at a glance.
pub fn trace_hash(lines: &[String]) -> u64 {
    let mut h = DefaultHasher::new();
    lines.hash(&mut h);
    h.finish()
}
