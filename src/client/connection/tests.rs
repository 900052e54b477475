//! Drives the manager against the real server in-process, and against a scripted fake server
//! for what the real one never does (withholding `PONG`, sending `BATCH`).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::sync::mpsc::UnboundedReceiver;
use tokio_tungstenite::tungstenite::Message as WsMessage;

use super::*;
use crate::clock::ManualClock;
use crate::entropy::SeededEntropy;
use crate::merkle::Combine;
use crate::net::{Listener, TcpListener};
use crate::protocol::codec::{decode, encode_batch};
use crate::protocol::{AuthAck, AuthRequired, ErrorMessage, Pong, ShutdownPending, SyncInit};
use crate::security::Permissions;
use crate::server::config::Limits as ServerLimits;
use crate::server::{Server, ServerOptions};
use crate::store::MemoryStore;

const SECRET: &str = "connection-test-secret-0123456789abcdef";
const NOW_MS: u64 = 1_790_000_000_000;
const WAIT: Duration = Duration::from_secs(5);

fn good_token(ttl_secs: u64) -> String {
    crate::auth::mint_token(SECRET, "alice", &["USER"], ttl_secs, NOW_MS / 1_000).unwrap()
}

struct TestServer {
    server: Server,
    addr: SocketAddr,
}

impl TestServer {
    /// A real server on `addr` (an ephemeral port when `None`).
    async fn start(addr: Option<SocketAddr>) -> Self {
        let options = ServerOptions {
            node_id: "server-conn".to_owned(),
            jwt_secret: SECRET.to_owned(),
            permissions: Permissions::development_default(),
            limits: ServerLimits::default(),
            max_connections: 16,
            debug: false,
            default_combine: Combine::Fmix,
            search: BTreeMap::new(),
        };
        let server = Server::new(
            options,
            Arc::new(MemoryStore::new()),
            Arc::new(ManualClock::new(NOW_MS)),
            Arc::new(SeededEntropy::new(3)),
        )
        .unwrap();
        let bind = addr.unwrap_or_else(|| "127.0.0.1:0".parse().unwrap());
        let listener = TcpListener::bind(bind).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let runner = server.clone();
        tokio::spawn(async move { runner.run(listener).await });
        Self { server, addr }
    }

    fn url(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }
}

fn fast_config(url: String) -> ConnectionConfig {
    ConnectionConfig {
        heartbeat_interval: Duration::from_millis(50),
        heartbeat_timeout: Duration::from_secs(2),
        connect_timeout: Duration::from_secs(2),
        backoff: BackoffConfig {
            initial: Duration::from_millis(20),
            max: Duration::from_millis(100),
            ..BackoffConfig::default()
        },
        token_retry: Duration::from_secs(30),
        ..ConnectionConfig::new(url)
    }
}

fn start(config: ConnectionConfig, tokens: TokenSource) -> (WebSocketManager, Events) {
    let (manager, events) = WebSocketManager::start(
        config,
        Arc::new(TcpConnector),
        tokens,
        Arc::new(ManualClock::new(NOW_MS)),
        Arc::new(SeededEntropy::new(11)),
    );
    (manager, Events(events))
}

struct Events(UnboundedReceiver<ConnectionEvent>);

impl Events {
    async fn next(&mut self) -> ConnectionEvent {
        tokio::time::timeout(WAIT, self.0.recv())
            .await
            .expect("an event in time")
            .expect("the manager is running")
    }

    /// Skips events until one matches, returning it.
    async fn until(&mut self, want: impl Fn(&ConnectionEvent) -> bool) -> ConnectionEvent {
        loop {
            let event = self.next().await;
            if want(&event) {
                return event;
            }
        }
    }

    /// Asserts that nothing arrives for `quiet`.
    async fn none_for(&mut self, quiet: Duration) {
        if let Ok(event) = tokio::time::timeout(quiet, self.0.recv()).await {
            panic!("unexpected event {event:?}");
        }
    }
}

fn to_states(manager: &WebSocketManager) -> Vec<ConnectionState> {
    manager.history().into_iter().map(|c| c.to).collect()
}

struct CountingProvider {
    calls: AtomicUsize,
    tokens: Vec<String>,
}

impl CountingProvider {
    fn new(tokens: Vec<String>) -> Arc<Self> {
        Arc::new(Self {
            calls: AtomicUsize::new(0),
            tokens,
        })
    }

    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
}

impl TokenProvider for CountingProvider {
    /// The n-th call gets the n-th token (the last one forever after).
    fn token(&self) -> BoxFuture<'_, Result<String, String>> {
        let n = self.calls.fetch_add(1, Ordering::SeqCst);
        let token = self.tokens[n.min(self.tokens.len() - 1)].clone();
        Box::pin(async move { Ok(token) })
    }
}

#[tokio::test]
async fn authenticates_exchanges_messages_and_closes() {
    let server = TestServer::start(None).await;
    let (manager, mut events) = start(
        fast_config(server.url()),
        TokenSource::Static(good_token(3_600)),
    );
    assert_eq!(
        events.next().await,
        ConnectionEvent::Authenticated { session: 1 }
    );
    assert_eq!(manager.state(), ConnectionState::Syncing);

    let sync = Message::SyncInit(SyncInit {
        map_name: "todos".to_owned(),
        last_sync_timestamp: None,
    });
    manager.send(1, sync.clone()).unwrap();
    match events.next().await {
        ConnectionEvent::Message {
            session: 1,
            message: Message::SyncRespRoot(_),
        } => {}
        other => panic!("expected SYNC_RESP_ROOT, got {other:?}"),
    }
    assert_eq!(
        manager.send(2, sync.clone()),
        Err(NotConnected::NotLive { session: 2 })
    );

    manager.mark_synced(1);
    assert_eq!(manager.state(), ConnectionState::Connected);
    assert_eq!(
        to_states(&manager),
        vec![
            ConnectionState::Connecting,
            ConnectionState::Authenticating,
            ConnectionState::Syncing,
            ConnectionState::Connected,
        ]
    );

    // Heartbeats flow: PONGs are consumed (no event) and measure the round trip.
    events.none_for(Duration::from_millis(300)).await;
    let rtt = manager.last_round_trip().expect("a PONG was answered");
    assert!(rtt < Duration::from_secs(1));

    manager.close().await;
    assert_eq!(manager.state(), ConnectionState::Disconnected);
    assert_eq!(
        manager.send(1, sync),
        Err(NotConnected::NotLive { session: 1 })
    );
}

#[tokio::test]
async fn reconnects_with_backoff_when_the_server_comes_back() {
    let first = TestServer::start(None).await;
    let addr = first.addr;
    let (manager, mut events) = start(
        fast_config(first.url()),
        TokenSource::Static(good_token(3_600)),
    );
    assert_eq!(
        events.next().await,
        ConnectionEvent::Authenticated { session: 1 }
    );
    manager.mark_synced(1);

    first.server.shutdown(Duration::from_secs(1)).await;
    let lost = events
        .until(|e| matches!(e, ConnectionEvent::Lost { .. }))
        .await;
    assert!(
        matches!(
            &lost,
            ConnectionEvent::Lost {
                session: Some(1),
                ..
            }
        ),
        "{lost:?}"
    );
    // Down for a while: several refused attempts, each backing off.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let states = to_states(&manager);
    let after_connected = &states[states.len().min(4)..];
    assert!(after_connected.contains(&ConnectionState::Backoff));
    assert!(after_connected.contains(&ConnectionState::Connecting));
    assert!(!manager.state().is_authenticated());

    let _second = TestServer::start(Some(addr)).await;
    let back = events
        .until(|e| matches!(e, ConnectionEvent::Authenticated { .. }))
        .await;
    assert_eq!(back, ConnectionEvent::Authenticated { session: 2 });
    assert_eq!(manager.state(), ConnectionState::Syncing);
    manager.close().await;
}

#[tokio::test]
async fn a_forced_reconnect_skips_the_backoff_and_opens_a_new_session() {
    let server = TestServer::start(None).await;
    let mut config = fast_config(server.url());
    config.backoff.initial = Duration::from_secs(60);
    config.backoff.max = Duration::from_secs(60);
    let (manager, mut events) = start(config, TokenSource::Static(good_token(3_600)));
    assert_eq!(
        events.next().await,
        ConnectionEvent::Authenticated { session: 1 }
    );
    manager.force_reconnect();
    assert_eq!(
        events.next().await,
        ConnectionEvent::Lost {
            session: Some(1),
            reason: "reconnect forced".to_owned()
        }
    );
    assert_eq!(
        events.next().await,
        ConnectionEvent::Authenticated { session: 2 }
    );
    manager.close().await;
}

#[tokio::test]
async fn without_a_token_the_app_is_asked_and_a_set_token_completes_the_handshake() {
    let server = TestServer::start(None).await;
    let (manager, mut events) = start(fast_config(server.url()), TokenSource::None);
    assert_eq!(events.next().await, ConnectionEvent::AuthRequired);
    assert_eq!(manager.state(), ConnectionState::Authenticating);
    manager.set_token(TokenSource::Static(good_token(3_600)));
    // Same connection: no Lost in between.
    assert_eq!(
        events.next().await,
        ConnectionEvent::Authenticated { session: 1 }
    );
    manager.close().await;
}

#[tokio::test]
async fn a_rejected_static_token_is_dropped_and_the_app_asked_for_a_new_one() {
    let server = TestServer::start(None).await;
    let (manager, mut events) = start(
        fast_config(server.url()),
        TokenSource::Static("not-a-jwt".to_owned()),
    );
    assert!(matches!(
        events.next().await,
        ConnectionEvent::AuthFailed { .. }
    ));
    assert!(matches!(
        events.next().await,
        ConnectionEvent::Lost { session: None, .. }
    ));
    assert_eq!(events.next().await, ConnectionEvent::AuthRequired);
    manager.set_token(TokenSource::Static(good_token(3_600)));
    assert_eq!(
        events.next().await,
        ConnectionEvent::Authenticated { session: 1 }
    );
    manager.close().await;
}

#[tokio::test]
async fn after_auth_fail_the_provider_is_asked_again() {
    let server = TestServer::start(None).await;
    let provider = CountingProvider::new(vec!["bad-token".to_owned(), good_token(3_600)]);
    let (manager, mut events) = start(
        fast_config(server.url()),
        TokenSource::Provider(provider.clone()),
    );
    assert!(matches!(
        events.next().await,
        ConnectionEvent::AuthFailed { .. }
    ));
    assert!(matches!(
        events.next().await,
        ConnectionEvent::Lost { session: None, .. }
    ));
    assert_eq!(
        events.next().await,
        ConnectionEvent::Authenticated { session: 1 }
    );
    assert_eq!(provider.calls(), 2);
    manager.close().await;
}

#[tokio::test]
async fn a_provider_token_is_refreshed_on_the_live_connection_before_it_expires() {
    let server = TestServer::start(None).await;
    // A two-second token is refreshed halfway, after one second.
    let provider = CountingProvider::new(vec![good_token(2)]);
    let (manager, mut events) = start(
        fast_config(server.url()),
        TokenSource::Provider(provider.clone()),
    );
    assert_eq!(
        events.next().await,
        ConnectionEvent::Authenticated { session: 1 }
    );
    assert_eq!(provider.calls(), 1);
    // The re-AUTH is acknowledged on the same session: no Lost, no new Authenticated.
    events.none_for(Duration::from_millis(1_400)).await;
    assert_eq!(provider.calls(), 2);
    manager
        .send(
            1,
            Message::SyncInit(SyncInit {
                map_name: "notes".to_owned(),
                last_sync_timestamp: None,
            }),
        )
        .unwrap();
    assert!(matches!(
        events.next().await,
        ConnectionEvent::Message { session: 1, .. }
    ));
    manager.close().await;
}

#[tokio::test]
async fn capped_retries_end_in_error_until_reset() {
    let unused = {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        listener.local_addr().unwrap()
    };
    let mut config = fast_config(format!("ws://{unused}"));
    config.backoff.max_retries = Some(2);
    let (manager, mut events) = start(config, TokenSource::Static(good_token(3_600)));
    for _ in 0..3 {
        assert!(matches!(
            events.next().await,
            ConnectionEvent::Lost { session: None, .. }
        ));
    }
    assert_eq!(
        events.next().await,
        ConnectionEvent::ReconnectExhausted { attempts: 2 }
    );
    assert_eq!(manager.state(), ConnectionState::Error);
    manager.force_reconnect();
    events.none_for(Duration::from_millis(100)).await;
    assert_eq!(
        manager.state(),
        ConnectionState::Error,
        "only reset leaves Error"
    );

    manager.reset();
    // A fresh retry budget: three more attempts before giving up again.
    for _ in 0..3 {
        assert!(matches!(
            events.next().await,
            ConnectionEvent::Lost { session: None, .. }
        ));
    }
    assert_eq!(
        events.next().await,
        ConnectionEvent::ReconnectExhausted { attempts: 2 }
    );
    let states = to_states(&manager);
    assert!(
        states.windows(3).any(|w| w
            == [
                ConnectionState::Error,
                ConnectionState::Initial,
                ConnectionState::Connecting
            ]),
        "{states:?}"
    );
    manager.close().await;
    assert_eq!(manager.state(), ConnectionState::Disconnected);
}

/// What the scripted server does after `AUTH_ACK`.
#[derive(Clone, Copy)]
struct Script {
    answer_pings: bool,
    batch_after_ack: bool,
}

/// A WebSocket server that acknowledges every `AUTH` and otherwise follows `script`;
/// reports every `PING` timestamp it receives.
async fn scripted_server(
    script: Script,
) -> (SocketAddr, tokio::sync::mpsc::UnboundedReceiver<u64>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (pings, ping_rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let pings = pings.clone();
            tokio::spawn(async move {
                let mut ws = tokio_tungstenite::accept_async(stream).await.unwrap();
                let frame = |m: Message| WsMessage::Binary(encode_msgpack(&m).unwrap().into());
                ws.send(frame(AuthRequired {}.into())).await.unwrap();
                while let Some(Ok(WsMessage::Binary(bytes))) = ws.next().await {
                    match decode(Frame::Binary(&bytes)).unwrap() {
                        Message::Auth(_) => {
                            ws.send(frame(AuthAck::default().into())).await.unwrap();
                            if script.batch_after_ack {
                                let parts = [
                                    encode_msgpack(&ErrorMessage::new(409, "first").into())
                                        .unwrap(),
                                    encode_msgpack(&ShutdownPending { retry_after: 7 }.into())
                                        .unwrap(),
                                ];
                                let batch = encode_batch(&parts).unwrap();
                                ws.send(WsMessage::Binary(batch.into())).await.unwrap();
                            }
                        }
                        Message::Ping(ping) => {
                            let _ = pings.send(ping.timestamp);
                            if script.answer_pings {
                                // A numeric echo, as TopGun servers send: must not matter.
                                let pong = Pong {
                                    server_time: 1,
                                    timestamp: Some(ping.timestamp),
                                };
                                ws.send(frame(pong.into())).await.unwrap();
                            }
                        }
                        _ => {}
                    }
                }
            });
        }
    });
    (addr, ping_rx)
}

#[tokio::test]
async fn without_pong_the_connection_is_replaced() {
    let (addr, mut pings) = scripted_server(Script {
        answer_pings: false,
        batch_after_ack: false,
    })
    .await;
    let mut config = fast_config(format!("ws://{addr}"));
    config.heartbeat_timeout = Duration::from_millis(300);
    let (manager, mut events) = start(config, TokenSource::Static(good_token(3_600)));
    assert_eq!(
        events.next().await,
        ConnectionEvent::Authenticated { session: 1 }
    );
    // PING carries the clock's milliseconds.
    assert_eq!(pings.recv().await, Some(NOW_MS));
    match events.next().await {
        ConnectionEvent::Lost {
            session: Some(1),
            reason,
        } => assert!(reason.contains("heartbeat"), "{reason}"),
        other => panic!("expected a heartbeat loss, got {other:?}"),
    }
    assert_eq!(
        events.next().await,
        ConnectionEvent::Authenticated { session: 2 }
    );
    assert_eq!(manager.last_round_trip(), None);
    manager.close().await;
}

#[tokio::test]
async fn batch_frames_are_unpacked_in_order_and_pongs_are_consumed() {
    let (addr, _pings) = scripted_server(Script {
        answer_pings: true,
        batch_after_ack: true,
    })
    .await;
    let mut config = fast_config(format!("ws://{addr}"));
    config.heartbeat_timeout = Duration::from_millis(300);
    let (manager, mut events) = start(config, TokenSource::Static(good_token(3_600)));
    assert_eq!(
        events.next().await,
        ConnectionEvent::Authenticated { session: 1 }
    );
    assert_eq!(
        events.next().await,
        ConnectionEvent::Message {
            session: 1,
            message: ErrorMessage::new(409, "first").into()
        }
    );
    assert_eq!(
        events.next().await,
        ConnectionEvent::Message {
            session: 1,
            message: ShutdownPending { retry_after: 7 }.into()
        }
    );
    // Answered PINGs keep the connection alive well past the heartbeat timeout.
    events.none_for(Duration::from_millis(700)).await;
    assert!(manager.last_round_trip().is_some());
    manager.close().await;
}
