//! The client's network seam: a [`Connector`] opens a byte stream to the host and port of a
//! `ws://` URL. Production uses [`TcpConnector`]; simulations plug in a virtual network. This
//! file is the only place the client names a concrete socket type.

use std::io;

use futures_util::future::BoxFuture;

/// Opens byte streams for the connection manager.
pub trait Connector: Send + Sync + 'static {
    /// Opens a byte stream to the host:port of `url` (ws://host:port/path).
    fn connect<'a>(
        &'a self,
        url: &'a str,
    ) -> BoxFuture<'a, io::Result<Box<dyn crate::net::Stream>>>;
}

/// Tokio TCP with `TCP_NODELAY` (small frames such as `PING` must not wait for Nagle).
#[derive(Debug, Default, Clone, Copy)]
pub struct TcpConnector;

impl Connector for TcpConnector {
    fn connect<'a>(
        &'a self,
        url: &'a str,
    ) -> BoxFuture<'a, io::Result<Box<dyn crate::net::Stream>>> {
        Box::pin(async move {
            let (host, port) = host_port(url)?;
            let stream = tokio::net::TcpStream::connect((host, port)).await?;
            stream.set_nodelay(true)?;
            Ok(Box::new(stream) as Box<dyn crate::net::Stream>)
        })
    }
}

/// The host and port a `ws://` URL names (port 80 when absent). `wss://` is refused: this
/// connector speaks plain TCP, and silently downgrading would leak the token.
pub fn host_port(url: &str) -> io::Result<(&str, u16)> {
    let invalid =
        |why: &str| io::Error::new(io::ErrorKind::InvalidInput, format!("{why}: {url:?}"));
    let rest = match url.split_once("://") {
        Some((scheme, rest)) if scheme.eq_ignore_ascii_case("ws") => rest,
        Some((scheme, _)) if scheme.eq_ignore_ascii_case("wss") => {
            return Err(invalid("wss:// needs a TLS connector"));
        }
        _ => return Err(invalid("not a ws:// URL")),
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let authority = authority.rsplit_once('@').map_or(authority, |(_, a)| a);
    let (host, port) = if let Some(bracketed) = authority.strip_prefix('[') {
        // IPv6 literal: [::1]:8080
        let (host, after) = bracketed
            .split_once(']')
            .ok_or_else(|| invalid("unclosed IPv6 bracket"))?;
        (host, after.strip_prefix(':'))
    } else {
        match authority.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        }
    };
    if host.is_empty() {
        return Err(invalid("no host"));
    }
    let port = match port {
        Some(p) => p.parse().map_err(|_| invalid("bad port"))?,
        None => 80,
    };
    Ok((host, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_hosts_ports_and_paths() {
        assert_eq!(
            host_port("ws://127.0.0.1:8080").unwrap(),
            ("127.0.0.1", 8080)
        );
        assert_eq!(
            host_port("ws://example.com/ws").unwrap(),
            ("example.com", 80)
        );
        assert_eq!(host_port("WS://h:1/p?q=1").unwrap(), ("h", 1));
        assert_eq!(host_port("ws://[::1]:9000/ws").unwrap(), ("::1", 9000));
        assert_eq!(host_port("ws://user@h:7").unwrap(), ("h", 7));
    }

    #[test]
    fn refuses_other_schemes_and_broken_authorities() {
        for url in [
            "wss://h:1",
            "http://h:1",
            "h:1",
            "ws://",
            "ws://h:port",
            "ws://[::1",
        ] {
            assert!(host_port(url).is_err(), "{url}");
        }
    }

    #[tokio::test]
    async fn tcp_connector_reaches_a_listener_and_reports_refusal() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("ws://{}/ws", listener.local_addr().unwrap());
        let (client, server) = tokio::join!(TcpConnector.connect(&url), listener.accept());
        assert!(client.is_ok());
        assert!(server.is_ok());
        drop(listener);
        assert!(TcpConnector.connect(&url).await.is_err());
    }
}
