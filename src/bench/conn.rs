//! A minimal msgpack WebSocket protocol connection for the load generator: connect, the
//! `AUTH` handshake, send and receive typed messages (unwrapping the 2026-01 server's `BATCH`
//! envelope), while counting every payload byte in both directions.
//!
//! It speaks the raw protocol like the TypeScript clients, so figures compare across servers.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream, connect_async_with_config};

use crate::protocol::codec::{Limits, decode_msgpack_fast};
use crate::protocol::{Auth, Frame, Message, Ping, decode, decode_batch_data, encode_msgpack};

use super::measure::Counters;

/// The socket read buffer: replies are small; larger frames still arrive whole.
const READ_BUFFER_BYTES: usize = 4 * 1024;

/// How long connecting plus the handshake may take.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(15);

/// Why a connection failed.
#[derive(Debug, thiserror::Error)]
pub enum ConnError {
    #[error("cannot connect to {url}: {reason}")]
    Connect { url: String, reason: String },
    #[error("connecting and authenticating took longer than {0:?}")]
    HandshakeTimeout(Duration),
    #[error("authentication failed: {0}")]
    AuthFailed(String),
    #[error("the server closed the connection")]
    Closed,
    #[error("websocket error: {0}")]
    Socket(String),
    #[error("cannot encode a message: {0}")]
    Encode(String),
}

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// One protocol connection. Frames the server sends that do not decode are skipped and
/// counted as errors, so one odd message does not end a run.
pub struct Conn {
    socket: Socket,
    counters: Arc<Counters>,
    /// Messages unpacked from a `BATCH` envelope and not yet handed out.
    pending: VecDeque<Message>,
    /// Whether this connection is counted in `open_conns` (from `AUTH_ACK` until dropped).
    counted: bool,
}

impl Conn {
    /// Opens a WebSocket to `url`, sends `AUTH` with `token` straight away (as the TypeScript
    /// clients do, so servers that never send `AUTH_REQUIRED` work too) and waits for `AUTH_ACK`.
    pub async fn open(url: &str, token: &str, counters: Arc<Counters>) -> Result<Self, ConnError> {
        tokio::time::timeout(HANDSHAKE_TIMEOUT, Self::handshake(url, token, counters))
            .await
            .map_err(|_| ConnError::HandshakeTimeout(HANDSHAKE_TIMEOUT))?
    }

    async fn handshake(url: &str, token: &str, counters: Arc<Counters>) -> Result<Self, ConnError> {
        // tungstenite zeroes its whole read buffer (128 KiB by default) on every read: at
        // thousands of small acks per second that was a fifth of the generator's CPU.
        let config = WebSocketConfig::default().read_buffer_size(READ_BUFFER_BYTES);
        // Nagle off, as browsers do: latency figures must not include its delay.
        let (socket, _) = connect_async_with_config(url, Some(config), true)
            .await
            .map_err(|e| ConnError::Connect {
                url: url.to_owned(),
                reason: e.to_string(),
            })?;
        let mut conn = Self {
            socket,
            counters,
            pending: VecDeque::new(),
            counted: false,
        };
        conn.send(&Message::Auth(Auth {
            token: token.to_owned(),
            protocol_version: None,
            device_token: None,
        }))
        .await?;
        loop {
            match conn.recv().await? {
                Message::AuthAck(_) => {
                    conn.counters.open_conns.fetch_add(1, Ordering::Relaxed);
                    conn.counted = true;
                    return Ok(conn);
                }
                Message::AuthFail(fail) => {
                    return Err(ConnError::AuthFailed(
                        fail.error.unwrap_or_else(|| "no reason given".to_owned()),
                    ));
                }
                _ => {}
            }
        }
    }

    /// Sends one message as a msgpack binary frame.
    pub async fn send(&mut self, message: &Message) -> Result<(), ConnError> {
        let bytes = encode_msgpack(message).map_err(|e| ConnError::Encode(e.to_string()))?;
        self.send_bytes(bytes).await
    }

    /// Sends an already encoded msgpack message.
    pub async fn send_bytes(&mut self, bytes: Vec<u8>) -> Result<(), ConnError> {
        self.feed_bytes(bytes).await?;
        self.flush().await
    }

    /// Queues an already encoded msgpack message without writing it out: messages fed
    /// together go to the socket in one write at [`Conn::flush`].
    pub async fn feed_bytes(&mut self, bytes: Vec<u8>) -> Result<(), ConnError> {
        let len = bytes.len() as u64;
        self.socket
            .feed(WsMessage::Binary(bytes.into()))
            .await
            .map_err(|e| ConnError::Socket(e.to_string()))?;
        self.counters.sent_bytes.fetch_add(len, Ordering::Relaxed);
        Ok(())
    }

    /// Writes out every message fed so far.
    pub async fn flush(&mut self) -> Result<(), ConnError> {
        self.socket
            .flush()
            .await
            .map_err(|e| ConnError::Socket(e.to_string()))
    }

    /// Sends a `PING`: servers close authenticated connections that stay silent too long.
    pub async fn ping(&mut self, now_millis: u64) -> Result<(), ConnError> {
        self.send(&Message::Ping(Ping {
            timestamp: now_millis,
        }))
        .await
    }

    /// The next application message. Cancel-safe: nothing is lost if the future is dropped.
    pub async fn recv(&mut self) -> Result<Message, ConnError> {
        loop {
            if let Some(message) = self.pending.pop_front() {
                return Ok(message);
            }
            let frame = self
                .socket
                .next()
                .await
                .ok_or(ConnError::Closed)?
                .map_err(|e| ConnError::Socket(e.to_string()))?;
            match frame {
                WsMessage::Binary(bytes) => {
                    self.count_received(bytes.len());
                    self.unpack(Frame::Binary(&bytes));
                }
                WsMessage::Text(text) => {
                    self.count_received(text.len());
                    self.unpack(Frame::Text(text.as_str()));
                }
                WsMessage::Close(_) => return Err(ConnError::Closed),
                _ => {}
            }
        }
    }

    fn count_received(&self, len: usize) {
        self.counters
            .received_bytes
            .fetch_add(len as u64, Ordering::Relaxed);
    }

    /// Decodes a frame into `pending`, opening a `BATCH` envelope into its inner messages.
    /// A msgpack reply is typed without its schema check first: validation protects a
    /// server's ingress, and the generator shares the server's cores. What does not type
    /// goes through the full decode, which counts it as an error.
    fn unpack(&mut self, frame: Frame<'_>) {
        let typed = match frame {
            Frame::Binary(bytes) => {
                decode_msgpack_fast(bytes, &Limits::default(), false).map(|fast| Ok(fast.message))
            }
            Frame::Text(_) => None,
        };
        match typed.unwrap_or_else(|| decode(frame)) {
            Ok(Message::Batch(batch)) => match decode_batch_data(&batch.data.0) {
                Ok(inner) => {
                    for bytes in inner {
                        self.unpack(Frame::Binary(bytes));
                    }
                }
                Err(_) => self.count_error(),
            },
            Ok(message) => self.pending.push_back(message),
            Err(_) => self.count_error(),
        }
    }

    fn count_error(&self) {
        self.counters.errors.fetch_add(1, Ordering::Relaxed);
    }

    /// Closes politely; errors are irrelevant at this point.
    pub async fn close(mut self) {
        let _ = self.socket.close(None).await;
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        if self.counted {
            self.counters.open_conns.fetch_sub(1, Ordering::Relaxed);
        }
    }
}
