//! A byte-level PostgreSQL protocol client, for what drivers never send:
//! malformed packets, protocol 3.2, GSSENCRequest, FunctionCall.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::{Buf, BufMut, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// One backend message.
#[derive(Debug, Clone)]
pub struct Msg {
    pub tag: u8,
    pub body: Vec<u8>,
}

impl Msg {
    /// Fields of an ErrorResponse or NoticeResponse, by field type.
    pub fn fields(&self) -> HashMap<u8, String> {
        let mut out = HashMap::new();
        for f in self.body.split(|b| *b == 0) {
            if let Some((&t, v)) = f.split_first() {
                out.insert(t, String::from_utf8_lossy(v).into_owned());
            }
        }
        out
    }

    /// SQLSTATE of an ErrorResponse.
    pub fn code(&self) -> String {
        self.fields().get(&b'C').cloned().unwrap_or_default()
    }

    /// The SQLSTATEs of the ErrorResponses among `msgs`, in order.
    pub fn error_codes(msgs: &[Msg]) -> Vec<String> {
        msgs.iter()
            .filter(|m| m.tag == b'E')
            .map(Msg::code)
            .collect()
    }

    /// The columns of a DataRow as sent (empty for NULL).
    pub fn values(&self) -> Vec<Vec<u8>> {
        let n = i16::from_be_bytes(self.body[..2].try_into().unwrap());
        let mut at = 2;
        let mut out = Vec::new();
        for _ in 0..n {
            let len = i32::from_be_bytes(self.body[at..at + 4].try_into().unwrap());
            at += 4;
            let len = usize::try_from(len).unwrap_or(0);
            out.push(self.body[at..at + len].to_vec());
            at += len;
        }
        out
    }

    /// First column of a DataRow, as text (empty for NULL).
    pub fn first_value(&self) -> String {
        let len = i32::from_be_bytes(self.body[2..6].try_into().unwrap());
        let len = usize::try_from(len).unwrap_or(0);
        String::from_utf8_lossy(&self.body[6..6 + len]).into_owned()
    }
}

/// Why `recv` returned no message.
#[derive(Debug, PartialEq, Eq)]
pub enum End {
    Closed,
    Timeout,
}

pub struct RawConn {
    pub stream: TcpStream,
    buf: BytesMut,
}

/// A StartupMessage with `version` and parameters.
pub fn startup_message(version: i32, params: &[(&str, &str)]) -> Vec<u8> {
    let params: Vec<(&str, &[u8])> = params.iter().map(|(k, v)| (*k, v.as_bytes())).collect();
    startup_message_bytes(version, &params)
}

/// [`startup_message`] with values in any bytes.
pub fn startup_message_bytes(version: i32, params: &[(&str, &[u8])]) -> Vec<u8> {
    let mut body = BytesMut::new();
    body.put_i32(version);
    for (k, v) in params {
        body.put_slice(k.as_bytes());
        body.put_u8(0);
        body.put_slice(v);
        body.put_u8(0);
    }
    body.put_u8(0);
    let mut out = Vec::with_capacity(body.len() + 4);
    out.extend_from_slice(&(body.len() as i32 + 4).to_be_bytes());
    out.extend_from_slice(&body);
    out
}

/// `s` as a protocol string: its bytes and a NUL.
pub fn cstr(s: &str) -> Vec<u8> {
    let mut v = s.as_bytes().to_vec();
    v.push(0);
    v
}

/// A tagged frontend message.
pub fn message(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    out.extend_from_slice(&(body.len() as i32 + 4).to_be_bytes());
    out.extend_from_slice(body);
    out
}

/// A simple Query message.
pub fn query(sql: &str) -> Vec<u8> {
    query_bytes(sql.as_bytes())
}

/// A simple Query message whose text is `sql` as it is (in any encoding).
pub fn query_bytes(sql: &[u8]) -> Vec<u8> {
    message(b'Q', &[sql, b"\0"].concat())
}

/// Parse of `sql` as statement `name` (no parameter types).
pub fn parse(name: &str, sql: &str) -> Vec<u8> {
    parse_bytes(name, sql.as_bytes())
}

/// Parse of `sql`, as it is (in any encoding), as statement `name`.
pub fn parse_bytes(name: &str, sql: &[u8]) -> Vec<u8> {
    message(b'P', &[&cstr(name)[..], sql, b"\0\0\0"].concat())
}

/// Bind of `statement` to `portal`, with no parameters and text results.
pub fn bind(portal: &str, statement: &str) -> Vec<u8> {
    message(b'B', &[cstr(portal), cstr(statement), vec![0; 6]].concat())
}

/// Execute of `portal`, all rows.
pub fn execute(portal: &str) -> Vec<u8> {
    message(b'E', &[cstr(portal), vec![0; 4]].concat())
}

pub fn sync() -> Vec<u8> {
    message(b'S', &[])
}

impl RawConn {
    pub async fn connect(addr: SocketAddr) -> RawConn {
        let stream = tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(addr))
            .await
            .expect("connect timed out")
            .expect("connect");
        stream.set_nodelay(true).ok();
        RawConn {
            stream,
            buf: BytesMut::new(),
        }
    }

    /// Logs in as a `trust` user and reads up to ReadyForQuery.
    pub async fn login_trust(addr: SocketAddr, user: &str) -> RawConn {
        RawConn::login_trust_with(addr, user, &[]).await
    }

    /// [`Self::login_trust`] with more startup parameters.
    pub async fn login_trust_with(
        addr: SocketAddr,
        user: &str,
        params: &[(&str, &str)],
    ) -> RawConn {
        let params: Vec<(&str, &[u8])> = params.iter().map(|(k, v)| (*k, v.as_bytes())).collect();
        RawConn::login_trust_bytes(addr, user, &params).await
    }

    /// [`Self::login_trust_with`] with values in any bytes.
    pub async fn login_trust_bytes(
        addr: SocketAddr,
        user: &str,
        params: &[(&str, &[u8])],
    ) -> RawConn {
        let mut c = RawConn::connect(addr).await;
        let mut all = vec![("user", user.as_bytes()), ("database", &b"app"[..])];
        all.extend_from_slice(params);
        c.send(&startup_message_bytes(196608, &all))
            .await
            .expect("send startup");
        let msgs = c.until_ready(Duration::from_secs(15)).await;
        let auth = msgs
            .iter()
            .find(|m| m.tag == b'R')
            .expect("no auth message");
        assert_eq!(auth.body, [0, 0, 0, 0], "trust login asked for a password");
        c
    }

    /// The socket, once everything read from it was received.
    pub fn into_stream(self) -> TcpStream {
        assert!(self.buf.is_empty(), "unread bytes: {:?}", &self.buf[..]);
        self.stream
    }

    pub async fn send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(bytes).await?;
        self.stream.flush().await
    }

    /// The next raw byte (for the one-byte answers to SSL/GSS requests).
    pub async fn read_byte(&mut self, within: Duration) -> Result<u8, End> {
        if !self.buf.is_empty() {
            return Ok(self.buf.get_u8());
        }
        match tokio::time::timeout(within, self.stream.read_u8()).await {
            Ok(Ok(b)) => Ok(b),
            Ok(Err(_)) => Err(End::Closed),
            Err(_) => Err(End::Timeout),
        }
    }

    /// The next message within `within`.
    pub async fn recv(&mut self, within: Duration) -> Result<Msg, End> {
        let deadline = Instant::now() + within;
        loop {
            if self.buf.len() >= 5 {
                let len = i32::from_be_bytes(self.buf[1..5].try_into().unwrap());
                assert!(len >= 4, "proxy sent a message with length {len}");
                let total = len as usize + 1;
                if self.buf.len() >= total {
                    let mut m = self.buf.split_to(total);
                    let tag = m.get_u8();
                    m.advance(4);
                    return Ok(Msg {
                        tag,
                        body: m.to_vec(),
                    });
                }
            }
            let left = deadline.saturating_duration_since(Instant::now());
            self.buf.reserve(8192);
            match tokio::time::timeout(left, self.stream.read_buf(&mut self.buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return Err(End::Closed),
                Ok(Ok(_)) => {}
                Err(_) => return Err(End::Timeout),
            }
        }
    }

    /// Messages up to and including ReadyForQuery; panics on an error
    /// response during login, on close or at the deadline.
    pub async fn until_ready(&mut self, within: Duration) -> Vec<Msg> {
        let deadline = Instant::now() + within;
        let mut out = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.recv(left).await {
                Ok(m) => {
                    let done = m.tag == b'Z';
                    out.push(m);
                    if done {
                        return out;
                    }
                }
                Err(e) => panic!("no ReadyForQuery ({e:?}); got {out:?}"),
            }
        }
    }

    /// Reads until an ErrorResponse (returned) or the connection closes
    /// (`None`); panics if neither happens within `within`.
    pub async fn error_or_close(&mut self, within: Duration) -> Option<Msg> {
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.recv(left).await {
                Ok(m) if m.tag == b'E' => return Some(m),
                Ok(_) => {}
                Err(End::Closed) => return None,
                Err(End::Timeout) => panic!("neither an error nor a close within {within:?}"),
            }
        }
    }

    /// Waits for the peer to close, ignoring what it sends; panics at the deadline.
    pub async fn closed(&mut self, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.recv(left).await {
                Ok(_) => {}
                Err(End::Closed) => return,
                Err(End::Timeout) => panic!("connection still open after {within:?}"),
            }
        }
    }
}
