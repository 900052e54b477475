//! One client connection: the HTTP front door, the WebSocket read loop, the writer task, and
//! the per-connection state handlers work with.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use tokio::time::{Instant, MissedTickBehavior, timeout as within};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::tungstenite::protocol::frame::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};

use crate::auth::Principal;
use crate::merkle::Combine;
use crate::net::Stream;
use crate::protocol::codec::{self, Frame};
use crate::protocol::{
    AuthRequired, ErrorDetail, ErrorMessage, ErrorPayload, Message, ShutdownPending, Violation,
};

use super::Shared;
use super::connections::{
    CLOSE_EVICTED, ConnHandle, ConnId, EVICTED_REASON, Outbound, QueuedBytes, SendError,
};
use super::dispatch::{self, Flow};
use super::http;
use super::limits::{LogLimiter, TokenBucket};
use super::metrics::Metrics;

/// Close code: authentication failed or a message arrived before authentication.
pub const CLOSE_UNAUTHORIZED: u16 = 4001;
/// Close code: no `PING` within the heartbeat timeout.
pub const CLOSE_HEARTBEAT: u16 = 4002;
/// Close code: too many invalid frames (policy violation).
pub const CLOSE_POLICY: u16 = 1008;
/// How long one socket write may take before the peer counts as gone.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// Close code: server shutting down.
pub const CLOSE_GOING_AWAY: u16 = 1001;

/// The per-connection state handlers read and change.
pub struct Session {
    /// Server-assigned id.
    pub id: ConnId,
    /// Remote address.
    pub peer: SocketAddr,
    /// Who authenticated on this connection.
    pub principal: Option<Principal>,
    /// The Merkle combine function this client computes, once known (see [`Session::note_generation`]).
    pub combine: Option<Combine>,
    out: ConnHandle,
    started: Instant,
    last_ping: Instant,
    invalid_frames: TokenBucket,
    invalid_log: LogLimiter,
}

impl Session {
    fn new(shared: &Shared, out: ConnHandle, peer: SocketAddr) -> Self {
        let limits = &shared.limits;
        Self {
            id: out.id,
            peer,
            principal: None,
            combine: None,
            out,
            started: Instant::now(),
            last_ping: Instant::now(),
            invalid_frames: TokenBucket::new(
                limits.invalid_frames,
                limits.invalid_frame_window_ms,
                0,
            ),
            invalid_log: LogLimiter::new(
                limits.invalid_frame_log_lines,
                limits.invalid_frame_window_ms,
            ),
        }
    }

    /// Records a `PING` (or a successful `AUTH`) for the heartbeat deadline.
    pub fn heartbeat(&mut self) {
        self.last_ping = Instant::now();
    }

    /// The connection's outbound handle.
    pub fn handle(&self) -> &ConnHandle {
        &self.out
    }

    /// Who is connected; before authentication an anonymous principal without roles, which
    /// no policy grants anything.
    pub fn principal(&self) -> &Principal {
        static ANONYMOUS: std::sync::OnceLock<Principal> = std::sync::OnceLock::new();
        self.principal
            .as_ref()
            .unwrap_or_else(|| ANONYMOUS.get_or_init(|| Principal::new("", Vec::<String>::new())))
    }

    /// True once `AUTH` succeeded.
    pub fn is_authenticated(&self) -> bool {
        self.principal.is_some()
    }

    /// The user id for logs (`-` before authentication).
    pub fn user(&self) -> &str {
        self.principal.as_ref().map_or("-", |p| p.user_id.as_str())
    }

    /// The combine function to answer Merkle requests with.
    pub fn combine(&self, shared: &Shared) -> Combine {
        self.combine.unwrap_or(shared.default_combine)
    }

    /// Records a hint about which client generation is connected: the 2026-01 client sends
    /// JS `undefined` (ext-0) and object `sort`s and sums Merkle hashes; the 2026-08 client
    /// strips `undefined`, sends array `sort`s and combines with fmix32 (PROTOCOL.md §6.5).
    pub fn note_generation(&mut self, combine: Combine) {
        if self.combine != Some(combine) {
            tracing::debug!(conn = self.id, ?combine, "client Merkle combine detected");
            self.combine = Some(combine);
        }
    }

    /// Milliseconds since the connection opened (the time base of the per-connection limits).
    fn elapsed_ms(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Queues a message to this client.
    pub fn send(&self, shared: &Shared, message: impl Into<Message>) -> Result<(), SendError> {
        send_to(shared, &self.out, &message.into())
    }

    /// Queues a response carrying `rows` rows, encoding it on the worker pool when it is
    /// large (`Limits::pool_response_rows`) so the encoding does not stall other connections.
    pub async fn send_rows(
        &self,
        shared: &Shared,
        message: impl Into<Message>,
        rows: usize,
    ) -> Result<(), SendError> {
        let message = message.into();
        let type_name = message.type_name();
        match shared
            .workers
            .encode(message, rows, shared.limits.pool_response_rows)
            .await
        {
            Ok(bytes) => {
                self.out.send(Outbound::Binary(Bytes::from(bytes)))?;
                Metrics::inc(&shared.metrics.frames_out);
            }
            Err(e) => {
                tracing::error!(conn = self.id, r#type = type_name, error = %e, "encode failed");
            }
        }
        Ok(())
    }

    /// Queues a close of this connection after what is already queued.
    pub async fn close(&self, code: u16, reason: &str) {
        self.out.close(code, reason).await;
    }

    /// Queues `ERROR {code, message}`.
    pub fn send_error(&self, shared: &Shared, code: u32, message: impl Into<String>) {
        let _ = self.send(shared, ErrorMessage::new(code, message));
    }
}

/// Encodes `message` as msgpack and queues it on `conn`.
pub fn send_to(shared: &Shared, conn: &ConnHandle, message: &Message) -> Result<(), SendError> {
    match codec::encode_msgpack(message) {
        Ok(bytes) => {
            conn.send(Outbound::Binary(Bytes::from(bytes)))?;
            Metrics::inc(&shared.metrics.frames_out);
            Ok(())
        }
        Err(e) => {
            // Our own types failed to encode: a bug, not the client's fault. Say so loudly.
            tracing::error!(conn = conn.id, r#type = message.type_name(), error = %e, "encode failed");
            Ok(())
        }
    }
}

/// Serves one accepted stream until it closes.
pub async fn serve<S: Stream>(shared: Arc<Shared>, mut stream: S, peer: SocketAddr) {
    let head_deadline = Duration::from_millis(shared.limits.auth_timeout_ms);
    let (head, rest) = match tokio::time::timeout(head_deadline, http::read_head(&mut stream)).await
    {
        Ok(Ok(parsed)) => parsed,
        Ok(Err(e)) => {
            tracing::debug!(%peer, error = %e, "bad HTTP request");
            return;
        }
        Err(_) => return,
    };
    match head.websocket_key() {
        Some(key) => {
            if http::accept_upgrade(&mut stream, key).await.is_ok() {
                run_websocket(shared, stream, rest, peer).await;
            }
        }
        None => {
            let _ = serve_http(&shared, &mut stream, &head).await;
        }
    }
}

async fn serve_http<S: Stream>(
    shared: &Shared,
    stream: &mut S,
    head: &http::RequestHead,
) -> std::io::Result<()> {
    if head.method != "GET" {
        return http::respond(stream, 405, "text/plain", "method not allowed\n").await;
    }
    match head.path.as_str() {
        "/health" => http::respond(stream, 200, "text/plain", "ok\n").await,
        "/ready" => {
            let store_ok = shared.store.probe().await.is_ok();
            if store_ok && !shared.is_shutting_down() {
                http::respond(stream, 200, "text/plain", "ready\n").await
            } else {
                http::respond(stream, 503, "text/plain", "not ready\n").await
            }
        }
        "/metrics" => {
            let body = shared.metrics.render() + &shared.workers.metrics().render();
            http::respond(stream, 200, "text/plain; version=0.0.4", &body).await
        }
        _ => http::respond(stream, 404, "text/plain", "not found\n").await,
    }
}

fn websocket_config(shared: &Shared) -> WebSocketConfig {
    // Small buffers keep idle connections cheap (tungstenite's defaults are 128 KiB each way).
    // The write size is a threshold, not an allocation: frames fed below it wait for the
    // write loop's flush, so a burst of acks leaves in one write (not one per frame).
    WebSocketConfig::default()
        .read_buffer_size(4 * 1024)
        .write_buffer_size(16 * 1024)
        .max_message_size(Some(shared.limits.max_frame_bytes))
        .max_frame_size(Some(shared.limits.max_frame_bytes))
}

async fn run_websocket<S: Stream>(shared: Arc<Shared>, stream: S, rest: Vec<u8>, peer: SocketAddr) {
    let ws = WebSocketStream::from_partially_read(
        stream,
        rest,
        Role::Server,
        Some(websocket_config(&shared)),
    )
    .await;
    let (sink, mut source) = ws.split();
    let id = shared.connections.next_id();
    let (handle, outbound) = super::connections::bounded_outbound_queue(
        id,
        shared.limits.outbound_queue,
        shared.limits.outbound_queue_bytes,
    );
    if let Some(evicted) = shared.connections.admit(handle.clone()) {
        Metrics::inc(&shared.metrics.connections_evicted);
        tracing::info!(
            evicted = evicted.id,
            admitted = id,
            "connection limit reached: evicting the least recently active connection"
        );
        evicted.close(CLOSE_EVICTED, EVICTED_REASON).await;
    }
    Metrics::inc(&shared.metrics.connections_total);
    shared
        .metrics
        .connections_open
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let writer = tokio::spawn(write_loop(sink, outbound, handle.queued_bytes()));

    let mut session = Session::new(&shared, handle, peer);
    tracing::debug!(conn = id, %peer, "connection opened");
    let _ = session.send(&shared, AuthRequired {});
    read_loop(&shared, &mut session, &mut source).await;

    shared.connections.remove(id);
    shared.queries.remove_connection(id);
    shared.topics.remove_connection(id);
    super::locks::on_disconnect(&shared, id).await;
    shared.search.remove_connection(id);
    shared.counters.remove_connection(id);
    shared.journal.remove_connection(id);
    shared
        .metrics
        .connections_open
        .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    drop(session);
    let _ = writer.await;
    tracing::debug!(conn = id, "connection closed");
}

async fn read_loop<S: Stream>(
    shared: &Arc<Shared>,
    session: &mut Session,
    source: &mut futures_util::stream::SplitStream<WebSocketStream<S>>,
) {
    let mut ticker = tokio::time::interval(Duration::from_millis(500));
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut stop = shared.shutdown_signal();
    // Made once, not per frame: every connection's waiter sits on the one shutdown channel,
    // whose waiter list is locked on each registration and drop.
    let stopping = stop.changed();
    tokio::pin!(stopping);
    let handle = session.handle().clone();
    let killed = handle.killed();
    tokio::pin!(killed);
    loop {
        let flow = tokio::select! {
            // Evicted, too slow to read its frames, or closed by a handler.
            () = &mut killed => Flow::Closed,
            // Boxed: a frame's future is as large as the largest handler's, and inline it
            // would make every idle connection's task that large (REF: ≤ 16 KiB/connection).
            frame = source.next() => match frame {
                Some(Ok(WsMessage::Binary(bytes))) => Box::pin(handle_frame(shared, session, Incoming::Binary(bytes))).await,
                Some(Ok(WsMessage::Text(text))) => Box::pin(handle_frame(shared, session, Incoming::Text(text))).await,
                Some(Ok(WsMessage::Close(_))) | None | Some(Err(_)) => Flow::Closed,
                Some(Ok(_)) => Flow::Continue, // WebSocket-level ping/pong: tungstenite answers.
            },
            _ = ticker.tick() => check_deadlines(shared, session).await,
            _ = &mut stopping => {
                let _ = session.send(shared, ShutdownPending { retry_after: 5_000 });
                session.close(CLOSE_GOING_AWAY, "Server Shutdown").await;
                Flow::Closed
            }
        };
        if flow == Flow::Closed {
            return;
        }
    }
}

async fn check_deadlines(shared: &Shared, session: &mut Session) -> Flow {
    let limits = &shared.limits;
    if !session.is_authenticated() {
        if session.started.elapsed() >= Duration::from_millis(limits.auth_timeout_ms) {
            tracing::debug!(conn = session.id, "authentication deadline passed");
            session
                .close(CLOSE_UNAUTHORIZED, "Authentication timeout")
                .await;
            return Flow::Closed;
        }
    } else if session.last_ping.elapsed() >= Duration::from_millis(limits.heartbeat_timeout_ms) {
        tracing::info!(
            conn = session.id,
            user = session.user(),
            "heartbeat timeout"
        );
        session.close(CLOSE_HEARTBEAT, "Heartbeat timeout").await;
        return Flow::Closed;
    }
    Flow::Continue
}

/// A received data frame that owns its bytes, so it can be decoded on the worker pool.
enum Incoming {
    Binary(Bytes),
    Text(tokio_tungstenite::tungstenite::Utf8Bytes),
}

impl Incoming {
    fn frame(&self) -> Frame<'_> {
        match self {
            Self::Binary(bytes) => Frame::Binary(bytes),
            Self::Text(text) => Frame::Text(text.as_str()),
        }
    }

    fn len(&self) -> usize {
        match self {
            Self::Binary(bytes) => bytes.len(),
            Self::Text(text) => text.len(),
        }
    }
}

/// A frame refused before dispatch: its type (when known) and what is wrong with it.
struct Refused {
    type_name: Option<String>,
    violations: Vec<Violation>,
}

impl Refused {
    fn new(type_name: Option<String>, path: &str, reason: String) -> Self {
        Self {
            type_name,
            violations: vec![Violation {
                path: path.to_owned(),
                reason,
            }],
        }
    }
}

/// A decoded frame, and whether it carried JS `undefined` (a client-generation hint).
struct Decoded {
    message: Result<Message, Refused>,
    js_undefined: bool,
}

/// Decode → validate → type → dispatch, with the invalid-frame policy (SEC-03, SEC-04).
/// Large frames are decoded and validated on the worker pool: that work grows with the frame.
async fn handle_frame(shared: &Arc<Shared>, session: &mut Session, incoming: Incoming) -> Flow {
    Metrics::inc(&shared.metrics.frames_in);
    shared.connections.touch(session.id);
    let limits = codec::Limits {
        max_depth: shared.limits.max_nesting_depth,
        max_frame_bytes: shared.limits.max_frame_bytes,
    };
    let heavy = incoming.len() >= shared.limits.pool_frame_bytes;
    let validate = shared.validates_messages();
    let decoded = match shared
        .workers
        .run_if(heavy, move || {
            decode_frame(incoming.frame(), &limits, validate)
        })
        .await
    {
        Ok(decoded) => decoded,
        Err(e) => {
            tracing::error!(conn = session.id, error = %e, "decoding a frame on the worker pool failed");
            session.send_error(shared, 500, "The message could not be processed");
            return Flow::Continue;
        }
    };
    if decoded.js_undefined {
        session.note_generation(Combine::Sum);
    }
    match decoded.message {
        Ok(message) => dispatch::dispatch(shared, session, message).await,
        Err(refused) => {
            reject_invalid(
                shared,
                session,
                refused.type_name.as_deref(),
                refused.violations,
            )
            .await
        }
    }
}

/// Decodes a frame, noting JS `undefined` in the decoder's own pass; only a frame the decoder
/// refuses is walked again to look for it. msgpack frames try the codec's fast path first.
fn decode_frame(frame: Frame<'_>, limits: &codec::Limits, validate: bool) -> Decoded {
    if let Frame::Binary(bytes) = frame
        && let Some(fast) = codec::decode_msgpack_fast(bytes, limits, validate)
    {
        return Decoded {
            message: Ok(fast.message),
            js_undefined: fast.js_undefined,
        };
    }
    match decode_object(frame, limits) {
        Ok(decoded) => Decoded {
            message: type_value(decoded.value, validate),
            js_undefined: decoded.js_undefined,
        },
        Err(refused) => Decoded {
            message: Err(refused),
            js_undefined: matches!(frame, Frame::Binary(bytes) if contains_js_undefined(bytes)),
        },
    }
}

/// Decodes a frame to a normalised map.
fn decode_object(frame: Frame<'_>, limits: &codec::Limits) -> Result<codec::DecodedValue, Refused> {
    // decode_value accepts any top-level value; a non-map is reported as such rather than as
    // the missing `type` that would follow from it.
    codec::decode_value_noting_undefined(frame, limits)
        .and_then(|decoded| {
            if decoded.value.is_object() {
                Ok(decoded)
            } else {
                Err(codec::DecodeError::NotAnObject)
            }
        })
        .map_err(|e| Refused::new(None, "", e.to_string()))
}

/// Schema-checks (unless `validate` is off, for benchmarks only) and types a decoded message.
fn type_value(value: serde_json::Value, validate: bool) -> Result<Message, Refused> {
    let type_name = value
        .get("type")
        .and_then(|t| t.as_str())
        .map(str::to_owned)
        .ok_or_else(|| Refused::new(None, "/type", "message has no string `type`".to_owned()))?;
    if validate && let Err(violations) = crate::protocol::validate(&type_name, &value) {
        return Err(Refused {
            type_name: Some(type_name),
            violations,
        });
    }
    codec::decode_typed(value).map_err(|e| Refused::new(Some(type_name), "", e.to_string()))
}

/// True when a msgpack frame carries ext-0 (`d4 00 00`, JS `undefined`), which only the
/// 2026-01 client sends. The frame is walked value by value, so the three bytes count only
/// where a value starts: inside a string, binary, number or other ext body they are data, and
/// such a false positive used to flip the session's Merkle combine to `Sum`. A malformed or
/// truncated frame counts as not carrying it (the decoder reports the frame itself).
fn contains_js_undefined(bytes: &[u8]) -> bool {
    use rmp::Marker;
    let mut pos = 0usize;
    // Values still to visit: a container adds its items, iteratively (no recursion limit).
    let mut remaining: u64 = 1;
    while remaining > 0 {
        let Some(&first) = bytes.get(pos) else {
            return false;
        };
        remaining -= 1;
        pos += 1;
        let be_len = |at: usize, width: usize| -> Option<usize> {
            let field = bytes.get(at..at.checked_add(width)?)?;
            Some(field.iter().fold(0usize, |n, b| (n << 8) | usize::from(*b)))
        };
        let (skip, items) = match Marker::from_u8(first) {
            Marker::FixExt1 if bytes.get(pos..pos + 2) == Some(&[0x00, 0x00]) => return true,
            Marker::FixPos(_)
            | Marker::FixNeg(_)
            | Marker::Null
            | Marker::True
            | Marker::False
            | Marker::Reserved => (0, 0),
            Marker::U8 | Marker::I8 => (1, 0),
            Marker::U16 | Marker::I16 => (2, 0),
            Marker::U32 | Marker::I32 | Marker::F32 => (4, 0),
            Marker::U64 | Marker::I64 | Marker::F64 => (8, 0),
            Marker::FixStr(n) => (usize::from(n), 0),
            Marker::Str8 | Marker::Bin8 => match be_len(pos, 1) {
                Some(n) => (1 + n, 0),
                None => return false,
            },
            Marker::Str16 | Marker::Bin16 => match be_len(pos, 2) {
                Some(n) => (2 + n, 0),
                None => return false,
            },
            Marker::Str32 | Marker::Bin32 => match be_len(pos, 4) {
                Some(n) => (4 + n, 0),
                None => return false,
            },
            Marker::FixExt1 => (2, 0),
            Marker::FixExt2 => (3, 0),
            Marker::FixExt4 => (5, 0),
            Marker::FixExt8 => (9, 0),
            Marker::FixExt16 => (17, 0),
            Marker::Ext8 => match be_len(pos, 1) {
                Some(n) => (2 + n, 0),
                None => return false,
            },
            Marker::Ext16 => match be_len(pos, 2) {
                Some(n) => (3 + n, 0),
                None => return false,
            },
            Marker::Ext32 => match be_len(pos, 4) {
                Some(n) => (5 + n, 0),
                None => return false,
            },
            Marker::FixArray(n) => (0, u64::from(n)),
            Marker::FixMap(n) => (0, 2 * u64::from(n)),
            Marker::Array16 => match be_len(pos, 2) {
                Some(n) => (2, n as u64),
                None => return false,
            },
            Marker::Map16 => match be_len(pos, 2) {
                Some(n) => (2, 2 * n as u64),
                None => return false,
            },
            Marker::Array32 => match be_len(pos, 4) {
                Some(n) => (4, n as u64),
                None => return false,
            },
            Marker::Map32 => match be_len(pos, 4) {
                Some(n) => (4, 2 * n as u64),
                None => return false,
            },
        };
        pos = pos.saturating_add(skip);
        remaining = remaining.saturating_add(items);
    }
    false
}

async fn reject_invalid(
    shared: &Shared,
    session: &mut Session,
    type_name: Option<&str>,
    violations: Vec<Violation>,
) -> Flow {
    Metrics::inc(&shared.metrics.invalid_frames);
    let now = session.elapsed_ms();
    if let Some(suppressed) = session.invalid_log.allow(now) {
        let first: Vec<String> = violations
            .iter()
            .take(3)
            .map(|v| format!("{}: {}", v.path, v.reason))
            .collect();
        tracing::warn!(
            conn = session.id,
            user = session.user(),
            r#type = type_name.unwrap_or("-"),
            violations = ?first,
            suppressed,
            "invalid message rejected"
        );
    }
    let message = match type_name {
        Some(t) => format!("Invalid message format: {t} violates its schema"),
        None => "Invalid message format".to_owned(),
    };
    let details = violations
        .into_iter()
        .take(20)
        .map(|v| ErrorDetail {
            path: v.path,
            reason: v.reason,
        })
        .collect();
    let _ = session.send(
        shared,
        ErrorMessage {
            payload: ErrorPayload {
                code: 400,
                message,
                details: Some(details),
            },
        },
    );
    if session.invalid_frames.try_take(now) {
        Flow::Continue
    } else {
        Metrics::inc(&shared.metrics.invalid_frame_closes);
        tracing::warn!(
            conn = session.id,
            user = session.user(),
            "too many invalid messages: closing"
        );
        session
            .close(CLOSE_POLICY, "Too many invalid messages")
            .await;
        Flow::Closed
    }
}

/// Drains a connection's outbound queue onto the socket, flushing when the queue runs dry
/// so bursts go out in few syscalls.
async fn write_loop<S: Stream>(
    mut sink: futures_util::stream::SplitSink<WebSocketStream<S>, WsMessage>,
    mut outbound: tokio::sync::mpsc::Receiver<Outbound>,
    queued: Arc<QueuedBytes>,
) {
    // A peer that stops reading must not pin this task and its socket forever.
    while let Some(first) = outbound.recv().await {
        let mut next = Some(first);
        while let Some(frame) = next.take() {
            // Off the queue: the frame now counts against the socket, not the bound.
            queued.release(frame.len());
            let ws_message = match frame {
                Outbound::Binary(bytes) => WsMessage::Binary(bytes),
                Outbound::Text(text) => WsMessage::Text(text.into()),
                Outbound::Close(code, reason) => {
                    let close = CloseFrame {
                        code: CloseCode::from(code),
                        reason: reason.into(),
                    };
                    let _ = within(WRITE_TIMEOUT, sink.send(WsMessage::Close(Some(close)))).await;
                    return;
                }
            };
            if !matches!(
                within(WRITE_TIMEOUT, sink.feed(ws_message)).await,
                Ok(Ok(()))
            ) {
                return;
            }
            next = outbound.try_recv().ok();
        }
        if !matches!(within(WRITE_TIMEOUT, sink.flush()).await, Ok(Ok(()))) {
            return;
        }
    }
    let _ = within(WRITE_TIMEOUT, sink.close()).await;
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use rmpv::Value as Mp;

    use super::*;

    #[test]
    fn ext0_counts_where_a_value_starts() {
        // {"a": undefined}
        assert!(contains_js_undefined(&[0x81, 0xa1, b'a', 0xd4, 0x00, 0x00]));
        // [1, [undefined]] (nested in an array after a u16)
        assert!(contains_js_undefined(&[
            0x92, 0xcd, 0x01, 0x02, 0x91, 0xd4, 0x00, 0x00
        ]));
        // A map value after a str8 key.
        assert!(contains_js_undefined(&[
            0x81, 0xd9, 0x01, b'k', 0xd4, 0x00, 0x00
        ]));
    }

    #[test]
    fn ext0_bytes_inside_data_do_not_count() {
        // {"s": "\xd4\x00\x00"}: the bytes are a string's content.
        assert!(!contains_js_undefined(&[
            0x81, 0xa1, b's', 0xa3, 0xd4, 0x00, 0x00
        ]));
        // {"b": bin8 [d4 00 00]}
        assert!(!contains_js_undefined(&[
            0x81, 0xa1, b'b', 0xc4, 0x03, 0xd4, 0x00, 0x00
        ]));
        // {"f": f64 with d4 00 00 in its mantissa}
        assert!(!contains_js_undefined(&[
            0x81, 0xa1, b'f', 0xcb, 0x41, 0xd4, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01
        ]));
        // {"t": u32 0x00d40000} and an ext8 body carrying the bytes.
        assert!(!contains_js_undefined(&[
            0x82, 0xa1, b't', 0xce, 0x00, 0xd4, 0x00, 0x00, 0xa1, b'e', 0xc7, 0x03, 0x05, 0xd4,
            0x00, 0x00
        ]));
        // A fixext1 of another type or value is not `undefined`.
        assert!(!contains_js_undefined(&[0x91, 0xd4, 0x01, 0x00]));
    }

    #[test]
    fn the_frame_that_misfired_in_the_simulation_no_longer_does() {
        // An OP_BATCH-like frame whose HLC millis (u64) contain d4 00 00.
        let millis: u64 = 0x0000_01a2_d400_00ff;
        let mut frame = vec![0x81, 0xa6];
        frame.extend_from_slice(b"millis");
        frame.push(0xcf);
        frame.extend_from_slice(&millis.to_be_bytes());
        assert!(frame.windows(3).any(|w| w == [0xd4, 0x00, 0x00]));
        assert!(!contains_js_undefined(&frame));
    }

    #[test]
    fn malformed_frames_do_not_count() {
        assert!(!contains_js_undefined(&[]));
        assert!(!contains_js_undefined(&[0x92, 0xa5, b'x']));
        assert!(!contains_js_undefined(&[0xdd, 0xff, 0xff, 0xff, 0xff]));
    }

    fn js_undefined_of(bytes: &[u8]) -> bool {
        decode_frame(Frame::Binary(bytes), &codec::Limits::default(), true).js_undefined
    }

    #[test]
    fn the_decoder_notes_js_undefined_in_its_own_pass() {
        // A valid OP_BATCH whose op carries `orRecord: undefined`, as the 2026-01 client sends.
        let mut frame = vec![0x82, 0xa4];
        frame.extend_from_slice(b"type");
        frame.push(0xa8);
        frame.extend_from_slice(b"OP_BATCH");
        frame.push(0xa7);
        frame.extend_from_slice(b"payload");
        frame.extend_from_slice(&[0x81, 0xa3, b'o', b'p', b's', 0x91, 0x84]);
        for (key, value) in [("mapName", "m"), ("key", "k"), ("opType", "REMOVE")] {
            frame.push(0xa0 | key.len() as u8);
            frame.extend_from_slice(key.as_bytes());
            frame.push(0xa0 | value.len() as u8);
            frame.extend_from_slice(value.as_bytes());
        }
        frame.push(0xa8);
        frame.extend_from_slice(b"orRecord");
        frame.extend_from_slice(&[0xd4, 0x00, 0x00]);
        let decoded = decode_frame(Frame::Binary(&frame), &codec::Limits::default(), true);
        assert!(decoded.js_undefined);
        assert!(matches!(decoded.message, Ok(Message::OpBatch(_))));
    }

    #[test]
    fn only_the_fixext1_form_of_undefined_counts() {
        // {"a": ext8 of type 0 holding the byte 0}: undefined to the decoder, but not the
        // form the 2026-01 client writes.
        let frame = [0x81, 0xa1, b'a', 0xc7, 0x01, 0x00, 0x00];
        assert!(!contains_js_undefined(&frame));
        assert!(!js_undefined_of(&frame));
    }

    #[test]
    fn a_refused_frame_is_still_searched_for_undefined() {
        // [undefined, NaN]: the NaN refuses the frame after the decoder passed the undefined.
        let mut frame = vec![0x92, 0xd4, 0x00, 0x00, 0xcb];
        frame.extend_from_slice(&f64::NAN.to_be_bytes());
        assert!(js_undefined_of(&frame));
        // {1: undefined}: a non-string key stops the decoder before the value.
        assert!(js_undefined_of(&[0x81, 0x01, 0xd4, 0x00, 0x00]));
        // [undefined, <truncated>] and trailing bytes after {"a": undefined}.
        assert!(js_undefined_of(&[0x92, 0xd4, 0x00, 0x00]));
        assert!(js_undefined_of(&[0x81, 0xa1, b'a', 0xd4, 0x00, 0x00, 0xc0]));
    }

    fn leaf() -> impl Strategy<Value = Mp> {
        prop_oneof![
            Just(Mp::Nil),
            any::<u64>().prop_map(Mp::from),
            any::<f64>().prop_map(Mp::F64),
            "[a-z]{0,3}".prop_map(Mp::from),
            Just(Mp::Binary(vec![0xd4, 0x00, 0x00])),
            Just(Mp::Ext(0, vec![0])),
            (any::<i8>(), proptest::collection::vec(any::<u8>(), 0..3))
                .prop_map(|(t, d)| Mp::Ext(t, d)),
        ]
    }

    fn tree() -> impl Strategy<Value = Mp> {
        leaf().prop_recursive(4, 32, 5, |inner| {
            let key = prop_oneof![
                8 => "[a-z]{0,3}".prop_map(Mp::from),
                1 => inner.clone(),
            ];
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..5).prop_map(Mp::Array),
                proptest::collection::vec((key, inner), 0..5).prop_map(Mp::Map),
            ]
        })
    }

    proptest! {
        #[test]
        fn noting_undefined_while_decoding_agrees_with_the_separate_walk(
            value in tree(),
            cut in any::<proptest::sample::Index>(),
            extra in proptest::collection::vec(any::<u8>(), 0..3),
            damage in any::<bool>(),
        ) {
            let mut bytes = Vec::new();
            rmpv::encode::write_value(&mut bytes, &value).unwrap();
            if damage {
                bytes.truncate(cut.index(bytes.len() + 1));
                bytes.extend_from_slice(&extra);
            }
            prop_assert_eq!(js_undefined_of(&bytes), contains_js_undefined(&bytes));
        }
    }

    /// A topic name the schema's pattern refuses but typed decoding accepts.
    const BAD_TOPIC_SUB: &str = r#"{"type":"TOPIC_SUB","payload":{"topic":"no spaces allowed"}}"#;

    #[test]
    fn the_schema_check_refuses_what_typed_decoding_would_accept() {
        let limits = codec::Limits::default();
        let refused = match decode_frame(Frame::Text(BAD_TOPIC_SUB), &limits, true).message {
            Err(refused) => refused,
            Ok(message) => panic!("validated decode accepted {message:?}"),
        };
        assert_eq!(refused.type_name.as_deref(), Some("TOPIC_SUB"));
        assert!(
            refused
                .violations
                .iter()
                .any(|v| v.path == "/payload/topic")
        );
    }

    #[test]
    fn the_benchmark_switch_skips_only_the_schema_check() {
        let limits = codec::Limits::default();
        match decode_frame(Frame::Text(BAD_TOPIC_SUB), &limits, false).message {
            Ok(Message::TopicSub(sub)) => assert_eq!(sub.payload.topic, "no spaces allowed"),
            other => panic!(
                "expected the unvalidated TOPIC_SUB, got {:?}",
                other.is_ok()
            ),
        }
        // Typed decoding still refuses what fits no message type.
        let untyped = r#"{"type":"TOPIC_SUB","payload":{}}"#;
        assert!(
            decode_frame(Frame::Text(untyped), &limits, false)
                .message
                .is_err()
        );
    }
}
