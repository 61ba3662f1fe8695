//! The byte stream to a node: plain TCP, or TLS over it as `[server_tls]`
//! and the node's `sslmode` say.

use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use crate::rt::TcpStream;
use bytes::BytesMut;
use lagrouter_config::SslMode;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tokio_rustls::rustls::pki_types::ServerName;

use super::conn::NodeAddr;
use crate::wait::{Counted, Direct, ReadPolls};

/// SSLRequest: length 8, code 80877103.
const SSL_REQUEST: [u8; 8] = [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f];

/// An open connection to a node, before or after login.
pub enum NodeStream {
    Plain(Counted<TcpStream>),
    /// Boxed: the TLS state is large and most deployments run plain.
    Tls(Box<TlsStream<Counted<TcpStream>>>),
}

/// What one step of [`NodeStream::write_or_read`] did.
#[derive(Debug, PartialEq, Eq)]
pub enum Progress {
    /// Wrote this many bytes of the output (0: the node stopped taking data).
    Wrote(usize),
    /// Nothing was left to write and all of it has reached the socket.
    Flushed,
    /// Read this many bytes (0: the node closed the connection).
    Read(usize),
}

impl NodeStream {
    /// Opens TCP to `node` and, unless its mode is `disable`, asks for TLS.
    /// A node that declines gets plain text under `prefer` and an error
    /// under the other modes. The error says why, for a 08006.
    pub async fn connect(node: &NodeAddr) -> Result<NodeStream, String> {
        let mut tcp = TcpStream::connect(&node.host, node.port)
            .await
            .map_err(|e| e.to_string())?;
        let mode = node.tls.mode;
        if mode == SslMode::Disable {
            return Ok(NodeStream::Plain(Counted::new(tcp)));
        }
        let Some(client) = node.tls.client.clone() else {
            return Err(format!("sslmode {mode}: no sslrootcert loaded"));
        };
        tcp.write_all(&SSL_REQUEST)
            .await
            .map_err(|e| e.to_string())?;
        // One byte exactly: anything the server sent after it would be
        // unencrypted data slipped in before the handshake (CVE-2021-23222).
        let answer = tcp
            .read_u8()
            .await
            .map_err(|e| format!("no answer to the TLS request (sslmode {mode}): {e}"))?;
        match answer {
            b'S' => {}
            b'N' if mode == SslMode::Prefer => return Ok(NodeStream::Plain(Counted::new(tcp))),
            b'N' => return Err(format!("the node does not accept TLS (sslmode {mode})")),
            other => {
                return Err(format!(
                    "unexpected answer {other:#04x} to the TLS request (sslmode {mode})"
                ));
            }
        }
        let name = ServerName::try_from(node.host.clone())
            .map_err(|e| format!("`{}` cannot name a TLS server: {e}", node.host))?;
        let tls = TlsConnector::from(client)
            .connect(name, Counted::new(tcp))
            .await
            .map_err(|e| format!("TLS handshake failed (sslmode {mode}): {e}"))?;
        Ok(NodeStream::Tls(Box::new(tls)))
    }

    /// Whether this is plain TCP (nothing held back to flush).
    pub fn is_plain(&self) -> bool {
        matches!(self, NodeStream::Plain(_))
    }

    /// Moves the socket onto the calling session's loop
    /// ([`TcpStream::adopt`]).
    pub fn adopt(&mut self) {
        match self {
            NodeStream::Plain(s) => s.get_mut().adopt(),
            NodeStream::Tls(s) => s.get_mut().0.get_mut().adopt(),
        }
    }

    /// The TCP socket underneath.
    pub fn tcp(&self) -> &TcpStream {
        match self {
            NodeStream::Plain(s) => s.get_ref(),
            NodeStream::Tls(s) => s.get_ref().0.get_ref(),
        }
    }

    /// Writes (a part of) `out`, or with `out` empty flushes what TLS
    /// holds back, or reads into `buf`: whichever the socket allows first,
    /// the write before the read. Reading while writing keeps a node that
    /// blocks on sending to us from blocking our writes to it.
    pub async fn write_or_read(&mut self, out: &[u8], buf: &mut BytesMut) -> io::Result<Progress> {
        poll_fn(|cx| {
            let mut this = Pin::new(&mut *self);
            let wrote = if out.is_empty() {
                this.as_mut().poll_flush(cx).map_ok(|()| Progress::Flushed)
            } else {
                this.as_mut().poll_write(cx, out).map_ok(Progress::Wrote)
            };
            if wrote.is_ready() {
                return wrote;
            }
            tokio_util::io::poll_read_buf(this, cx, buf).map_ok(Progress::Read)
        })
        .await
    }

    /// Writes all of `data` and flushes it to the socket.
    pub async fn send(&mut self, data: &[u8]) -> io::Result<()> {
        self.write_all(data).await?;
        self.flush().await
    }
}

impl Direct for NodeStream {
    #[inline]
    fn write_now(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            NodeStream::Plain(s) => s.write_now(buf),
            NodeStream::Tls(_) => Err(io::ErrorKind::WouldBlock.into()),
        }
    }

    #[inline]
    fn read_now(&mut self, buf: &mut BytesMut) -> io::Result<usize> {
        match self {
            NodeStream::Plain(s) => s.read_now(buf),
            NodeStream::Tls(_) => Err(io::ErrorKind::WouldBlock.into()),
        }
    }

    #[inline]
    fn poll_readable(&mut self, cx: &mut Context<'_>) -> Option<Poll<io::Result<()>>> {
        match self {
            NodeStream::Plain(s) => s.poll_readable(cx),
            NodeStream::Tls(_) => None,
        }
    }

    #[inline]
    fn read_ready(&self) -> Option<bool> {
        match self {
            NodeStream::Plain(s) => s.read_ready(),
            NodeStream::Tls(_) => None,
        }
    }
}

impl ReadPolls for NodeStream {
    #[inline]
    fn read_polls(&self) -> u64 {
        match self {
            NodeStream::Plain(s) => s.read_polls(),
            NodeStream::Tls(s) => s.get_ref().0.read_polls(),
        }
    }
}

impl AsyncRead for NodeStream {
    #[inline]
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            NodeStream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            NodeStream::Tls(s) => Pin::new(&mut **s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for NodeStream {
    #[inline]
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            NodeStream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            NodeStream::Tls(s) => Pin::new(&mut **s).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            NodeStream::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            NodeStream::Tls(s) => Pin::new(&mut **s).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            NodeStream::Plain(s) => s.is_write_vectored(),
            NodeStream::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            NodeStream::Plain(s) => Pin::new(s).poll_flush(cx),
            NodeStream::Tls(s) => Pin::new(&mut **s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            NodeStream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            NodeStream::Tls(s) => Pin::new(&mut **s).poll_shutdown(cx),
        }
    }
}
