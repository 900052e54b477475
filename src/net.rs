//! The network seam.
//!
//! The server accepts byte streams from a [`Listener`]; production uses tokio TCP, the
//! simulations plug in turmoil's virtual network. Nothing else in the crate names a concrete
//! socket type, so the same server code runs in both worlds.

use std::future::Future;
use std::io;
use std::net::SocketAddr;

use tokio::io::{AsyncRead, AsyncWrite};

/// A byte stream to or from one peer.
pub trait Stream: AsyncRead + AsyncWrite + Unpin + Send + 'static {}

impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> Stream for T {}

/// A source of inbound connections.
pub trait Listener: Send + 'static {
    /// The stream type of an accepted connection.
    type Conn: Stream;

    /// Waits for the next inbound connection.
    fn accept(&mut self) -> impl Future<Output = io::Result<(Self::Conn, SocketAddr)>> + Send;

    /// The address this listener is bound to.
    fn local_addr(&self) -> io::Result<SocketAddr>;
}

/// A tokio TCP listener with `TCP_NODELAY` on every accepted socket (small frames must not
/// wait for Nagle).
pub struct TcpListener(tokio::net::TcpListener);

impl TcpListener {
    /// Binds to `addr`.
    pub async fn bind(addr: SocketAddr) -> io::Result<Self> {
        tokio::net::TcpListener::bind(addr).await.map(Self)
    }
}

impl Listener for TcpListener {
    type Conn = tokio::net::TcpStream;

    async fn accept(&mut self) -> io::Result<(Self::Conn, SocketAddr)> {
        let (stream, peer) = self.0.accept().await?;
        stream.set_nodelay(true)?;
        Ok((stream, peer))
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.0.local_addr()
    }
}
