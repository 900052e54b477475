//! The HTTP front door: every connection starts here.
//!
//! A request is either a WebSocket upgrade (on any path; TopGun 2026-01 clients use the bare
//! URL, 2026-08 clients `/ws`) or one of the plain endpoints `/health`, `/ready`, `/metrics`.
//! We parse the request head ourselves so both kinds share one port without a web framework.

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::net::Stream;

/// The largest request head we read; anything longer is refused.
const MAX_HEAD_BYTES: usize = 16 * 1024;

/// A parsed HTTP request head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestHead {
    /// `GET`, `POST`, ...
    pub method: String,
    /// The request target without the query string.
    pub path: String,
    /// Header names lower-cased, in arrival order.
    pub headers: Vec<(String, String)>,
}

impl RequestHead {
    /// The first header with this (lower-case) name.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The client's `Sec-WebSocket-Key` if this is a valid WebSocket upgrade request.
    pub fn websocket_key(&self) -> Option<&str> {
        let upgrade = self.header("upgrade")?;
        let connection = self.header("connection")?;
        let is_upgrade = upgrade.eq_ignore_ascii_case("websocket")
            && connection
                .split(',')
                .any(|t| t.trim().eq_ignore_ascii_case("upgrade"));
        if self.method == "GET" && is_upgrade {
            self.header("sec-websocket-key")
        } else {
            None
        }
    }
}

/// Why a request head could not be read.
#[derive(Debug, thiserror::Error)]
pub enum HeadError {
    #[error("connection closed before a full request head")]
    Closed,
    #[error("request head larger than {MAX_HEAD_BYTES} bytes")]
    TooLarge,
    #[error("malformed request head")]
    Malformed,
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// Reads one request head; returns it with any bytes that arrived after it (the start of the
/// first WebSocket frame, for pipelining clients).
pub async fn read_head<S: Stream>(stream: &mut S) -> Result<(RequestHead, Vec<u8>), HeadError> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(HeadError::Closed);
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = find_head_end(&buf) {
            let rest = buf.split_off(end);
            let head = parse_head(&buf).ok_or(HeadError::Malformed)?;
            return Ok((head, rest));
        }
        if buf.len() > MAX_HEAD_BYTES {
            return Err(HeadError::TooLarge);
        }
    }
}

fn find_head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4)
}

fn parse_head(raw: &[u8]) -> Option<RequestHead> {
    let text = std::str::from_utf8(raw).ok()?;
    let mut lines = text.split("\r\n");
    let mut request_line = lines.next()?.split(' ');
    let method = request_line.next()?.to_owned();
    let target = request_line.next()?;
    let path = target.split('?').next().unwrap_or(target).to_owned();
    let headers = lines
        .filter(|l| !l.is_empty())
        .map(|l| {
            let (name, value) = l.split_once(':')?;
            Some((name.trim().to_ascii_lowercase(), value.trim().to_owned()))
        })
        .collect::<Option<Vec<_>>>()?;
    Some(RequestHead {
        method,
        path,
        headers,
    })
}

/// Writes the `101 Switching Protocols` answer to a WebSocket upgrade.
pub async fn accept_upgrade<S: Stream>(stream: &mut S, key: &str) -> std::io::Result<()> {
    let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
    let response = format!(
        "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Accept: {accept}\r\n\r\n"
    );
    stream.write_all(response.as_bytes()).await?;
    stream.flush().await
}

/// Writes a complete plain HTTP response and closes the exchange.
pub async fn respond<S: Stream>(
    stream: &mut S,
    status: u16,
    content_type: &str,
    body: &str,
) -> std::io::Result<()> {
    let reason = match status {
        200 => "OK",
        404 => "Not Found",
        405 => "Method Not Allowed",
        503 => "Service Unavailable",
        _ => "Error",
    };
    let response = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn parses_upgrade_on_any_path_and_keeps_trailing_bytes() {
        let (mut client, mut server) = tokio::io::duplex(4096);
        client
            .write_all(b"GET /ws?x=1 HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: keep-alive, Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n\x82\x00")
            .await
            .unwrap();
        let (head, rest) = read_head(&mut server).await.unwrap();
        assert_eq!(head.path, "/ws");
        assert_eq!(head.websocket_key(), Some("dGhlIHNhbXBsZSBub25jZQ=="));
        assert_eq!(rest, vec![0x82, 0x00]);
    }

    #[tokio::test]
    async fn plain_get_is_not_an_upgrade() {
        let (mut client, mut server) = tokio::io::duplex(4096);
        client
            .write_all(b"GET /health HTTP/1.1\r\nHost: a\r\n\r\n")
            .await
            .unwrap();
        let (head, _) = read_head(&mut server).await.unwrap();
        assert_eq!(head.websocket_key(), None);
        assert_eq!(head.path, "/health");
    }

    #[tokio::test]
    async fn oversized_head_is_refused() {
        let (mut client, mut server) = tokio::io::duplex(64 * 1024);
        let mut junk = b"GET / HTTP/1.1\r\n".to_vec();
        junk.extend(std::iter::repeat_n(b'a', MAX_HEAD_BYTES + 10));
        client.write_all(&junk).await.unwrap();
        assert!(matches!(
            read_head(&mut server).await,
            Err(HeadError::TooLarge)
        ));
    }

    #[test]
    fn accept_key_matches_rfc_6455_example() {
        assert_eq!(
            tokio_tungstenite::tungstenite::handshake::derive_accept_key(
                b"dGhlIHNhbXBsZSBub25jZQ=="
            ),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }
}
