//! The client's connection manager (TopGun's WebSocketManager): one task that connects
//! through the [`Connector`] seam, runs the `AUTH` handshake, keeps the connection alive with
//! `PING`/`PONG`, reconnects with backoff and jitter, and publishes its [`ConnectionState`].
//!
//! The engine sees it as a stream of [`ConnectionEvent`]s plus [`WebSocketManager::send`].
//! Every successful authentication opens a new [`SessionId`]; a `send` names the session it
//! belongs to, so nothing meant for a dead connection leaks onto the next one.
//!
//! Deliberate differences from TopGun's client (TOPGUN-REFERENCE.md §3.2, §3.3, §5 #20–22):
//! - one reconnect driver (this task), so a failure reported as an error, a close and a
//!   timeout is handled once; retries are unlimited unless capped, and a cap ends in a typed
//!   [`ConnectionEvent::ReconnectExhausted`] and the `Error` state;
//! - `AUTH` is sent once per connection, only after the socket is open; without a token the
//!   app gets [`ConnectionEvent::AuthRequired`] instead of a silent park;
//! - authentication leads to `Syncing`; only the engine's [`WebSocketManager::mark_synced`]
//!   leads to `Connected`;
//! - `PONG` only proves liveness and measures the round trip: it never reaches an HLC.
//!
//! Token refresh: our server answers a second `AUTH` on an authenticated connection (a good
//! token gets `AUTH_ACK` and replaces the principal, a bad one gets `AUTH_FAIL` and the
//! session goes on), so a refreshed provider token and a token set with
//! [`WebSocketManager::set_token`] are sent on the live connection. A server that instead
//! closes on expiry just causes a reconnect, which asks the provider again.

pub mod backoff;
pub mod state;
pub mod token;
pub mod transport;

#[cfg(test)]
mod tests;

use std::ops::ControlFlow;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures_util::future::BoxFuture;
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use tokio::sync::{Notify, mpsc, watch};
use tokio::time::{Instant, Interval, MissedTickBehavior};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use crate::clock::SharedClock;
use crate::entropy::SharedEntropy;
use crate::protocol::codec::{Frame, Limits};
use crate::protocol::{Auth, Message, Ping, decode_batch_data, decode_with, encode_msgpack};

pub use backoff::{Backoff, BackoffConfig};
pub use state::{ConnectionState, InvalidTransition, StateChange, StateMachine};
pub use token::{TokenProvider, TokenSource};
pub use transport::{Connector, TcpConnector};

/// How deep `BATCH` envelopes may nest before the inner ones are dropped.
const MAX_BATCH_DEPTH: usize = 2;
/// How long a goodbye `Close` frame may take to write.
const CLOSE_WRITE_TIMEOUT: Duration = Duration::from_secs(1);

/// Where and how to connect.
#[derive(Debug, Clone, PartialEq)]
pub struct ConnectionConfig {
    /// `ws://host:port/path` of the server.
    pub url: String,
    /// How often a `PING` is sent once authenticated.
    pub heartbeat_interval: Duration,
    /// No `PONG` for this long: the connection is dead and is replaced.
    pub heartbeat_timeout: Duration,
    /// Limit for opening the socket and upgrading it, and for the answer to `AUTH`.
    pub connect_timeout: Duration,
    /// Reconnect spacing.
    pub backoff: BackoffConfig,
    /// Largest inbound frame accepted.
    pub max_frame_bytes: usize,
    /// Frames [`WebSocketManager::send`] may queue ahead of the socket.
    pub outbound_queue: usize,
    /// After a provider failure or a rejected token on a live connection, how long until the
    /// provider is asked again.
    pub token_retry: Duration,
}

impl ConnectionConfig {
    /// The defaults of TOPGUN-REFERENCE.md §3.3 for `url`.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            heartbeat_interval: Duration::from_secs(5),
            heartbeat_timeout: Duration::from_secs(15),
            connect_timeout: Duration::from_secs(10),
            backoff: BackoffConfig::default(),
            max_frame_bytes: 16 * 1024 * 1024,
            outbound_queue: 1_024,
            token_retry: Duration::from_secs(30),
        }
    }
}

/// Numbers the authenticated connections of one manager, from 1.
pub type SessionId = u64;

/// What the manager tells the engine.
// `Message` dominates the size; events move once through a channel, and boxing every inbound
// message would cost an allocation each (the protocol's `Message` makes the same choice).
#[derive(Debug, Clone, PartialEq)]
#[allow(clippy::large_enum_variant)]
pub enum ConnectionEvent {
    /// `AUTH_ACK` received on a new connection; the state is `Syncing`.
    Authenticated { session: SessionId },
    /// Any other inbound message of an authenticated session, `BATCH` unpacked, in order.
    Message {
        session: SessionId,
        message: Message,
    },
    /// A connection (authenticated or not) ended or could not be opened.
    Lost {
        session: Option<SessionId>,
        reason: String,
    },
    /// No token is available: the app must provide one with `set_token`.
    AuthRequired,
    /// The server rejected the token, or the provider could not produce one.
    AuthFailed { reason: String },
    /// `max_retries` consecutive attempts failed; the state is `Error` until `reset`.
    ReconnectExhausted { attempts: u32 },
}

/// Why [`WebSocketManager::send`] refused a message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NotConnected {
    #[error("session {session} is not the live authenticated session")]
    NotLive { session: SessionId },
    #[error("session {session} has {capacity} frames queued; the socket is not draining")]
    QueueFull { session: SessionId, capacity: usize },
}

/// A cheap-to-clone handle to the connection task.
#[derive(Clone)]
pub struct WebSocketManager {
    shared: Arc<Shared>,
    // When the last handle goes, the task closes the connection and ends.
    _owner: Arc<Owner>,
}

impl std::fmt::Debug for WebSocketManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebSocketManager")
            .field("state", &self.state())
            .finish_non_exhaustive()
    }
}

impl WebSocketManager {
    /// Starts the connection task (it connects at once) and returns its handle and events.
    pub fn start(
        config: ConnectionConfig,
        connector: Arc<dyn Connector>,
        tokens: TokenSource,
        clock: SharedClock,
        entropy: SharedEntropy,
    ) -> (Self, mpsc::UnboundedReceiver<ConnectionEvent>) {
        let (state, _) = watch::channel(ConnectionState::Initial);
        let (finished, _) = watch::channel(false);
        let shared = Arc::new(Shared {
            inner: Mutex::new(Inner {
                machine: StateMachine::new(),
                live: None,
                tokens,
                token_generation: 0,
                requests: Requests::default(),
                last_rtt: None,
            }),
            wake: Notify::new(),
            state,
            finished,
            clock,
        });
        let (events, receiver) = mpsc::unbounded_channel();
        let driver = Driver {
            shared: shared.clone(),
            backoff: Backoff::new(config.backoff.clone()),
            config,
            connector,
            entropy,
            events,
            last_session: 0,
            auth_required_reported: None,
        };
        tokio::spawn(driver.run());
        let manager = Self {
            _owner: Arc::new(Owner(shared.clone())),
            shared,
        };
        (manager, receiver)
    }

    /// The current state.
    pub fn state(&self) -> ConnectionState {
        *self.shared.state.borrow()
    }

    /// A receiver that sees every state the manager enters.
    pub fn watch_state(&self) -> watch::Receiver<ConnectionState> {
        self.shared.state.subscribe()
    }

    /// The last 50 state changes, oldest first.
    pub fn history(&self) -> Vec<StateChange> {
        self.shared.lock().machine.history()
    }

    /// Queues a message on the current session; Err if `session` is not the live
    /// authenticated one or its queue is full.
    pub fn send(&self, session: SessionId, message: Message) -> Result<(), NotConnected> {
        let inner = self.shared.lock();
        let live = inner
            .live
            .as_ref()
            .filter(|live| live.session == session)
            .ok_or(NotConnected::NotLive { session })?;
        live.outbound.try_send(message).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => NotConnected::QueueFull {
                session,
                capacity: live.outbound.max_capacity(),
            },
            mpsc::error::TrySendError::Closed(_) => NotConnected::NotLive { session },
        })
    }

    /// `Syncing` → `Connected`: the engine finished the sync round of `session`.
    pub fn mark_synced(&self, session: SessionId) {
        let mut inner = self.shared.lock();
        let live = inner.live.as_ref().map(|live| live.session);
        if live != Some(session) || inner.machine.current() != ConnectionState::Syncing {
            tracing::debug!(
                session,
                ?live,
                "mark_synced for a session that is not syncing"
            );
            return;
        }
        if let Err(e) = self
            .shared
            .transition_locked(&mut inner, ConnectionState::Connected)
        {
            tracing::warn!(error = %e, "mark_synced refused");
        }
    }

    /// Replaces the credentials. While the socket is open they are used at once (on a live
    /// session as a re-`AUTH`); during backoff the manager reconnects at once with a fresh
    /// backoff; in `Error` they wait for [`WebSocketManager::reset`].
    pub fn set_token(&self, tokens: TokenSource) {
        let mut inner = self.shared.lock();
        inner.tokens = tokens;
        inner.token_generation += 1;
        inner.requests.token_changed = true;
        drop(inner);
        self.shared.wake.notify_one();
    }

    /// Drops the current connection (if any) and connects again at once, backoff reset.
    /// Ignored in `Error`, which only [`WebSocketManager::reset`] leaves.
    pub fn force_reconnect(&self) {
        self.shared.lock().requests.force_reconnect = true;
        self.shared.wake.notify_one();
    }

    /// Leaves `Error` (→ `Initial`) and starts connecting again; a no-op in other states.
    pub fn reset(&self) {
        let mut inner = self.shared.lock();
        if inner.machine.current() != ConnectionState::Error {
            tracing::debug!(state = ?inner.machine.current(), "reset outside Error ignored");
            return;
        }
        if let Err(e) = self
            .shared
            .transition_locked(&mut inner, ConnectionState::Initial)
        {
            tracing::warn!(error = %e, "reset refused");
        }
        drop(inner);
        self.shared.wake.notify_one();
    }

    /// Closes the connection for good (`Disconnected`) and waits for the task to end.
    pub async fn close(&self) {
        self.shared.request_close();
        let mut finished = self.shared.finished.subscribe();
        // An error means the task is already gone, which is what we wait for.
        let _ = finished.wait_for(|done| *done).await;
    }

    /// The round-trip time of the last answered `PING`.
    pub fn last_round_trip(&self) -> Option<Duration> {
        self.shared.lock().last_rtt
    }
}

/// Closes the task when the last handle is dropped.
struct Owner(Arc<Shared>);

impl Drop for Owner {
    fn drop(&mut self) {
        self.0.request_close();
    }
}

/// State the handles and the task share.
struct Shared {
    inner: Mutex<Inner>,
    /// Wakes the task when `inner.requests` (or the state, via `reset`) changed.
    wake: Notify,
    state: watch::Sender<ConnectionState>,
    finished: watch::Sender<bool>,
    clock: SharedClock,
}

struct Inner {
    machine: StateMachine,
    live: Option<Live>,
    tokens: TokenSource,
    /// Bumped on every change of `tokens`, so stale provider answers and rejections of
    /// replaced tokens are recognised.
    token_generation: u64,
    requests: Requests,
    last_rtt: Option<Duration>,
}

/// The authenticated session `send` may queue on.
struct Live {
    session: SessionId,
    outbound: mpsc::Sender<Message>,
}

/// What the handles asked the task to do. `close` stays set once set.
#[derive(Debug, Default, Clone, Copy)]
struct Requests {
    close: bool,
    force_reconnect: bool,
    token_changed: bool,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn request_close(&self) {
        self.lock().requests.close = true;
        self.wake.notify_one();
    }

    /// The pending requests; all but `close` are cleared.
    fn take_requests(&self) -> Requests {
        let mut inner = self.lock();
        let requests = inner.requests;
        inner.requests = Requests {
            close: requests.close,
            ..Requests::default()
        };
        requests
    }

    fn transition(&self, to: ConnectionState) -> Result<(), InvalidTransition> {
        let mut inner = self.lock();
        self.transition_locked(&mut inner, to)
    }

    fn transition_locked(
        &self,
        inner: &mut Inner,
        to: ConnectionState,
    ) -> Result<(), InvalidTransition> {
        if let Some(change) = inner.machine.transition(to, self.clock.now_millis())? {
            tracing::debug!(from = ?change.from, to = ?change.to, "connection state");
            self.state.send_replace(change.to);
        }
        Ok(())
    }
}

/// How a connection ended.
#[derive(Debug)]
enum Ending {
    /// The application closed the manager.
    Closed,
    /// The connection failed or was dropped; `immediate` skips the backoff delay.
    Lost {
        session: Option<SessionId>,
        reason: String,
        immediate: bool,
    },
}

impl Ending {
    fn lost(session: Option<SessionId>, reason: impl Into<String>) -> Self {
        Self::Lost {
            session,
            reason: reason.into(),
            immediate: false,
        }
    }
}

type Step = ControlFlow<Ending>;
type Ws = WebSocketStream<Box<dyn crate::net::Stream>>;
type TokenFetch = BoxFuture<'static, Result<String, String>>;

/// The one task that owns the socket, the timers and the reconnect loop.
struct Driver {
    shared: Arc<Shared>,
    config: ConnectionConfig,
    connector: Arc<dyn Connector>,
    entropy: SharedEntropy,
    events: mpsc::UnboundedSender<ConnectionEvent>,
    backoff: Backoff,
    last_session: SessionId,
    /// The token generation `AuthRequired` was last reported for (reported once per
    /// token-less period, not once per reconnect).
    auth_required_reported: Option<u64>,
}

/// One open socket and its handshake and heartbeat state.
struct Conn {
    sink: SplitSink<Ws, WsMessage>,
    source: SplitStream<Ws>,
    session: Option<SessionId>,
    outbound: Option<mpsc::Receiver<Message>>,
    /// When an unanswered `AUTH` counts as a failure.
    auth_deadline: Option<Instant>,
    /// The token generation of the last `AUTH` sent.
    auth_generation: Option<u64>,
    heartbeat: Interval,
    last_pong: Instant,
    ping_sent_at: Option<Instant>,
    /// When to ask the provider for a new token.
    refresh_at: Option<Instant>,
    fetch: Option<(u64, TokenFetch)>,
}

impl Conn {
    fn new(ws: Ws, heartbeat_interval: Duration) -> Self {
        let (sink, source) = ws.split();
        let period = heartbeat_interval.max(Duration::from_millis(1));
        let mut heartbeat = tokio::time::interval_at(Instant::now() + period, period);
        heartbeat.set_missed_tick_behavior(MissedTickBehavior::Delay);
        Self {
            sink,
            source,
            session: None,
            outbound: None,
            auth_deadline: None,
            auth_generation: None,
            heartbeat,
            last_pong: Instant::now(),
            ping_sent_at: None,
            refresh_at: None,
            fetch: None,
        }
    }
}

impl Driver {
    async fn run(mut self) {
        while !self.closing() {
            if self.current() == ConnectionState::Error {
                self.wait_for_reset().await;
                continue;
            }
            self.transition(ConnectionState::Connecting);
            match self.connection().await {
                Ending::Closed => break,
                Ending::Lost {
                    session,
                    reason,
                    immediate,
                } => {
                    self.shared.lock().live = None;
                    tracing::debug!(?session, %reason, "connection lost");
                    self.emit(ConnectionEvent::Lost { session, reason });
                    self.pause_before_retry(immediate).await;
                }
            }
        }
        self.shared.lock().live = None;
        self.transition(ConnectionState::Disconnected);
        self.shared.finished.send_replace(true);
        tracing::debug!("connection manager stopped");
    }

    fn closing(&self) -> bool {
        self.shared.lock().requests.close
    }

    fn current(&self) -> ConnectionState {
        self.shared.lock().machine.current()
    }

    fn transition(&self, to: ConnectionState) {
        if let Err(e) = self.shared.transition(to) {
            tracing::warn!(error = %e, "connection state machine refused a transition");
        }
    }

    fn emit(&self, event: ConnectionEvent) {
        if self.events.send(event).is_err() {
            tracing::debug!("connection event dropped: nobody is listening");
        }
    }

    /// Sleeps in `Error` until `reset` (which grants a fresh retry budget) or `close`.
    async fn wait_for_reset(&mut self) {
        loop {
            let woken = self.shared.wake.notified();
            if self.closing() {
                return;
            }
            if self.current() != ConnectionState::Error {
                self.backoff.reset();
                return;
            }
            woken.await;
            self.shared.take_requests();
        }
    }

    /// `Backoff`, then the next delay — cut short by `force_reconnect` or a new token — or
    /// `Error` when the retries are used up.
    async fn pause_before_retry(&mut self, immediate: bool) {
        self.transition(ConnectionState::Backoff);
        // A close that raced the loss may already have used up its wake-up.
        if immediate || self.closing() {
            self.backoff.reset();
            return;
        }
        let Some(delay) = self.backoff.next_delay(self.entropy.as_ref()) else {
            let attempts = self.backoff.attempts();
            tracing::warn!(attempts, "reconnect attempts exhausted");
            self.transition(ConnectionState::Error);
            self.emit(ConnectionEvent::ReconnectExhausted { attempts });
            return;
        };
        tracing::debug!(
            ?delay,
            attempt = self.backoff.attempts(),
            "reconnecting after backoff"
        );
        let sleep = tokio::time::sleep(delay);
        tokio::pin!(sleep);
        loop {
            tokio::select! {
                () = &mut sleep => return,
                () = self.shared.wake.notified() => {
                    let requests = self.shared.take_requests();
                    if requests.close {
                        return;
                    }
                    if requests.force_reconnect || requests.token_changed {
                        self.backoff.reset();
                        return;
                    }
                }
            }
        }
    }

    /// One connection from opening the socket to its end.
    async fn connection(&mut self) -> Ending {
        let ws = match self.open().await {
            Ok(ws) => ws,
            Err(ending) => return ending,
        };
        self.transition(ConnectionState::Authenticating);
        let mut conn = Conn::new(ws, self.config.heartbeat_interval);
        let ending = match self.begin_auth(&mut conn).await {
            ControlFlow::Break(ending) => ending,
            ControlFlow::Continue(()) => self.serve(&mut conn).await,
        };
        // A goodbye frame; the peer may already be gone, so bounded and best effort.
        let _ =
            tokio::time::timeout(CLOSE_WRITE_TIMEOUT, conn.sink.send(WsMessage::Close(None))).await;
        ending
    }

    /// Opens the stream and upgrades it to WebSocket within `connect_timeout`.
    async fn open(&mut self) -> Result<Ws, Ending> {
        let connector = self.connector.clone();
        let url = self.config.url.clone();
        let ws_config = WebSocketConfig::default()
            .read_buffer_size(8 * 1024)
            .write_buffer_size(0)
            .max_message_size(Some(self.config.max_frame_bytes))
            .max_frame_size(Some(self.config.max_frame_bytes));
        let attempt = async move {
            let stream = connector
                .connect(&url)
                .await
                .map_err(|e| format!("connect to {url} failed: {e}"))?;
            tokio_tungstenite::client_async_with_config(url.as_str(), stream, Some(ws_config))
                .await
                .map(|(ws, _response)| ws)
                .map_err(|e| format!("WebSocket upgrade at {url} failed: {e}"))
        };
        let attempt = tokio::time::timeout(self.config.connect_timeout, attempt);
        tokio::pin!(attempt);
        loop {
            tokio::select! {
                result = &mut attempt => return match result {
                    Ok(Ok(ws)) => Ok(ws),
                    Ok(Err(reason)) => Err(Ending::lost(None, reason)),
                    Err(_) => Err(Ending::lost(None, "connect timed out")),
                },
                () = self.shared.wake.notified() => {
                    let requests = self.shared.take_requests();
                    if requests.close {
                        return Err(Ending::Closed);
                    }
                    if requests.force_reconnect {
                        self.backoff.reset();
                    }
                }
            }
        }
    }

    /// The select loop of an open connection.
    async fn serve(&mut self, conn: &mut Conn) -> Ending {
        loop {
            let authenticated = conn.session.is_some();
            let fetching = conn.fetch.is_some();
            let pong_deadline = conn
                .session
                .map(|_| conn.last_pong + self.config.heartbeat_timeout);
            let step = tokio::select! {
                frame = conn.source.next() => self.on_frame(conn, frame).await,
                Some(message) = recv(&mut conn.outbound) => self.write(conn, &message).await,
                _ = conn.heartbeat.tick(), if authenticated => self.ping(conn).await,
                () = sleep_until(pong_deadline) => ControlFlow::Break(Ending::lost(
                    conn.session,
                    format!("heartbeat timeout: no PONG for {:?}", self.config.heartbeat_timeout),
                )),
                () = sleep_until(conn.auth_deadline) => ControlFlow::Break(Ending::lost(
                    conn.session,
                    format!("no answer to AUTH within {:?}", self.config.connect_timeout),
                )),
                () = sleep_until(conn.refresh_at), if !fetching => {
                    conn.refresh_at = None;
                    self.refresh(conn);
                    ControlFlow::Continue(())
                }
                (generation, result) = fetched(&mut conn.fetch) => {
                    conn.fetch = None;
                    self.on_token(conn, generation, result).await
                }
                () = self.shared.wake.notified() => self.on_requests(conn).await,
            };
            if let ControlFlow::Break(ending) = step {
                return ending;
            }
        }
    }

    /// Sends `AUTH` with the current credentials, starts a provider fetch, or reports that
    /// credentials are missing.
    async fn begin_auth(&mut self, conn: &mut Conn) -> Step {
        let (tokens, generation) = {
            let inner = self.shared.lock();
            (inner.tokens.clone(), inner.token_generation)
        };
        match tokens {
            TokenSource::None if conn.session.is_none() => {
                if self.auth_required_reported != Some(generation) {
                    self.auth_required_reported = Some(generation);
                    tracing::debug!("no token: waiting for the application to provide one");
                    self.emit(ConnectionEvent::AuthRequired);
                }
                ControlFlow::Continue(())
            }
            TokenSource::None => ControlFlow::Continue(()),
            TokenSource::Static(token) => self.send_auth(conn, token, generation).await,
            TokenSource::Provider(provider) => {
                conn.fetch = Some((generation, self.fetch(provider)));
                ControlFlow::Continue(())
            }
        }
    }

    fn fetch(&self, provider: Arc<dyn TokenProvider>) -> TokenFetch {
        let limit = self.config.connect_timeout;
        Box::pin(async move {
            tokio::time::timeout(limit, provider.token())
                .await
                .unwrap_or_else(|_| Err(format!("no token within {limit:?}")))
        })
    }

    /// Asks the provider again (the token is about to expire, or a refresh failed).
    fn refresh(&self, conn: &mut Conn) {
        let (tokens, generation) = {
            let inner = self.shared.lock();
            (inner.tokens.clone(), inner.token_generation)
        };
        if let TokenSource::Provider(provider) = tokens {
            tracing::debug!("refreshing the token");
            conn.fetch = Some((generation, self.fetch(provider)));
        }
    }

    async fn on_token(
        &mut self,
        conn: &mut Conn,
        generation: u64,
        result: Result<String, String>,
    ) -> Step {
        if self.shared.lock().token_generation != generation {
            // The credentials were replaced while the provider worked; that change started
            // its own handshake.
            return ControlFlow::Continue(());
        }
        match result {
            Ok(token) => {
                let now_ms = self.shared.clock.now_millis();
                conn.refresh_at = token::refresh_at_ms(&token, now_ms)
                    .map(|at| Instant::now() + Duration::from_millis(at.saturating_sub(now_ms)));
                self.send_auth(conn, token, generation).await
            }
            Err(e) => {
                tracing::warn!(error = %e, "token provider failed");
                let reason = format!("token provider failed: {e}");
                self.emit(ConnectionEvent::AuthFailed {
                    reason: reason.clone(),
                });
                if conn.session.is_some() {
                    // The current token is still good for a while; try again later.
                    conn.refresh_at = Some(Instant::now() + self.config.token_retry);
                    ControlFlow::Continue(())
                } else {
                    ControlFlow::Break(Ending::lost(None, reason))
                }
            }
        }
    }

    async fn send_auth(&mut self, conn: &mut Conn, token: String, generation: u64) -> Step {
        let auth = Message::Auth(Auth {
            token,
            protocol_version: None,
            device_token: None,
        });
        self.write(conn, &auth).await?;
        conn.auth_generation = Some(generation);
        if conn.session.is_none() {
            conn.auth_deadline = Some(Instant::now() + self.config.connect_timeout);
        }
        ControlFlow::Continue(())
    }

    async fn on_requests(&mut self, conn: &mut Conn) -> Step {
        let requests = self.shared.take_requests();
        if requests.close {
            return ControlFlow::Break(Ending::Closed);
        }
        if requests.force_reconnect {
            return ControlFlow::Break(Ending::Lost {
                session: conn.session,
                reason: "reconnect forced".to_owned(),
                immediate: true,
            });
        }
        if requests.token_changed {
            conn.fetch = None;
            conn.refresh_at = None;
            return self.begin_auth(conn).await;
        }
        ControlFlow::Continue(())
    }

    async fn ping(&mut self, conn: &mut Conn) -> Step {
        let ping = Message::Ping(Ping {
            timestamp: self.shared.clock.now_millis(),
        });
        self.write(conn, &ping).await?;
        conn.ping_sent_at.get_or_insert_with(Instant::now);
        ControlFlow::Continue(())
    }

    async fn write(&mut self, conn: &mut Conn, message: &Message) -> Step {
        let bytes = match encode_msgpack(message) {
            Ok(bytes) => bytes,
            Err(e) => {
                // Our own message failed to encode: a bug, not a connection problem.
                tracing::error!(r#type = message.type_name(), error = %e, "encode failed");
                return ControlFlow::Continue(());
            }
        };
        let sent = tokio::time::timeout(
            self.config.heartbeat_timeout,
            conn.sink.send(WsMessage::Binary(bytes.into())),
        )
        .await;
        match sent {
            Ok(Ok(())) => ControlFlow::Continue(()),
            Ok(Err(e)) => {
                ControlFlow::Break(Ending::lost(conn.session, format!("send failed: {e}")))
            }
            Err(_) => ControlFlow::Break(Ending::lost(conn.session, "send timed out")),
        }
    }

    async fn on_frame(
        &mut self,
        conn: &mut Conn,
        frame: Option<Result<WsMessage, tokio_tungstenite::tungstenite::Error>>,
    ) -> Step {
        let limits = Limits {
            max_frame_bytes: self.config.max_frame_bytes,
            ..Limits::default()
        };
        let decoded = match &frame {
            Some(Ok(WsMessage::Binary(bytes))) => decode_with(Frame::Binary(bytes), &limits),
            Some(Ok(WsMessage::Text(text))) => decode_with(Frame::Text(text.as_str()), &limits),
            Some(Ok(WsMessage::Close(close))) => {
                let reason = match close {
                    Some(close) => format!(
                        "closed by the server: {} {}",
                        u16::from(close.code),
                        close.reason
                    ),
                    None => "closed by the server".to_owned(),
                };
                return ControlFlow::Break(Ending::lost(conn.session, reason));
            }
            // WebSocket-level ping/pong: tungstenite answers.
            Some(Ok(_)) => return ControlFlow::Continue(()),
            Some(Err(e)) => {
                return ControlFlow::Break(Ending::lost(
                    conn.session,
                    format!("socket error: {e}"),
                ));
            }
            None => return ControlFlow::Break(Ending::lost(conn.session, "connection closed")),
        };
        match decoded {
            Ok(message) => {
                let mut messages = Vec::new();
                unpack(message, &limits, &mut messages, 0);
                for message in messages {
                    self.on_message(conn, message).await?;
                }
            }
            Err(e) => tracing::warn!(error = %e, "undecodable frame dropped"),
        }
        ControlFlow::Continue(())
    }

    async fn on_message(&mut self, conn: &mut Conn, message: Message) -> Step {
        match message {
            Message::AuthAck(_) => self.on_auth_ack(conn),
            Message::AuthFail(fail) => {
                let reason = fail
                    .error
                    .unwrap_or_else(|| "authentication failed".to_owned());
                self.on_auth_fail(conn, reason)
            }
            Message::Pong(_) => {
                // Liveness and round trip only: a PONG's timestamp is never an HLC input.
                let now = Instant::now();
                conn.last_pong = now;
                if let Some(sent) = conn.ping_sent_at.take() {
                    self.shared.lock().last_rtt = Some(now - sent);
                }
                ControlFlow::Continue(())
            }
            Message::AuthRequired(_) => {
                // Sent on every connect; the handshake already started when the socket opened.
                ControlFlow::Continue(())
            }
            message => {
                match conn.session {
                    Some(session) => self.emit(ConnectionEvent::Message { session, message }),
                    None => tracing::warn!(
                        r#type = message.type_name(),
                        "message before authentication dropped"
                    ),
                }
                ControlFlow::Continue(())
            }
        }
    }

    fn on_auth_ack(&mut self, conn: &mut Conn) -> Step {
        conn.auth_deadline = None;
        if let Some(session) = conn.session {
            tracing::debug!(session, "re-authentication acknowledged");
            return ControlFlow::Continue(());
        }
        self.last_session += 1;
        let session = self.last_session;
        let (outbound, receiver) = mpsc::channel(self.config.outbound_queue.max(1));
        conn.session = Some(session);
        conn.outbound = Some(receiver);
        conn.last_pong = Instant::now();
        conn.ping_sent_at = None;
        conn.heartbeat.reset();
        self.backoff.reset();
        {
            let mut inner = self.shared.lock();
            inner.live = Some(Live { session, outbound });
            if let Err(e) = self
                .shared
                .transition_locked(&mut inner, ConnectionState::Syncing)
            {
                tracing::warn!(error = %e, "connection state machine refused a transition");
            }
        }
        tracing::debug!(session, "authenticated");
        self.emit(ConnectionEvent::Authenticated { session });
        ControlFlow::Continue(())
    }

    fn on_auth_fail(&mut self, conn: &mut Conn, reason: String) -> Step {
        conn.auth_deadline = None;
        tracing::warn!(%reason, session = ?conn.session, "authentication failed");
        if let Some(generation) = conn.auth_generation {
            self.forget_rejected_token(generation);
        }
        self.emit(ConnectionEvent::AuthFailed {
            reason: reason.clone(),
        });
        if conn.session.is_some() {
            // Our server keeps the session on a failed re-AUTH; the old credentials hold.
            conn.refresh_at = Some(Instant::now() + self.config.token_retry);
            ControlFlow::Continue(())
        } else {
            ControlFlow::Break(Ending::lost(
                None,
                format!("authentication failed: {reason}"),
            ))
        }
    }

    /// A rejected static token is never sent again (the next connect reports
    /// `AuthRequired`); a provider is simply asked again. Credentials set since the rejected
    /// `AUTH` are kept.
    fn forget_rejected_token(&self, generation: u64) {
        let mut inner = self.shared.lock();
        if inner.token_generation == generation && matches!(inner.tokens, TokenSource::Static(_)) {
            inner.tokens = TokenSource::None;
            inner.token_generation += 1;
        }
    }
}

/// Appends `message` to `out`, replacing `BATCH` envelopes by the messages inside them.
fn unpack(message: Message, limits: &Limits, out: &mut Vec<Message>, depth: usize) {
    let Message::Batch(batch) = message else {
        out.push(message);
        return;
    };
    if depth >= MAX_BATCH_DEPTH {
        tracing::warn!(depth, "BATCH nested too deep: dropped");
        return;
    }
    match decode_batch_data(&batch.data.0) {
        Ok(parts) => {
            for part in parts {
                match decode_with(Frame::Binary(part), limits) {
                    Ok(inner) => unpack(inner, limits, out, depth + 1),
                    Err(e) => {
                        tracing::warn!(error = %e, "undecodable message inside BATCH dropped")
                    }
                }
            }
        }
        Err(e) => tracing::warn!(error = %e, "malformed BATCH dropped"),
    }
}

/// The next queued message, or never when there is no queue yet.
async fn recv(outbound: &mut Option<mpsc::Receiver<Message>>) -> Option<Message> {
    match outbound {
        Some(receiver) => receiver.recv().await,
        None => std::future::pending().await,
    }
}

/// Sleeps until `deadline`, or forever without one.
async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// The provider's answer, tagged with the token generation it was asked for.
async fn fetched(fetch: &mut Option<(u64, TokenFetch)>) -> (u64, Result<String, String>) {
    match fetch {
        Some((generation, future)) => (*generation, future.await),
        None => std::future::pending().await,
    }
}
