//! Waiting on a client and its server at once without polling the side
//! that did not wake.
//!
//! A session inside a transaction waits for whichever of its two sockets
//! has bytes first. A combinator such as `tokio::select!` polls every
//! branch at every wake-up, and a socket's read that is not ready
//! registers its waker again each time (a lock and a waker comparison in
//! tokio's IO driver, about 170 instructions with the read futures around
//! it). Inside a transaction each statement wakes the session twice, once
//! per side, so half of those polls only register again what was already
//! registered: a third of all reads in a TPC-B transaction.
//!
//! [`ReadWait`] gives each side a waker of its own, which notes that its
//! side woke before it wakes the task. A side is polled only if it woke,
//! or if its read was polled by someone else since this wait last saw it
//! not ready (then the registration may no longer be this wait's): every
//! read of a socket goes through a [`Counted`] wrapper, innermost (under
//! TLS too), which counts them.
//!
//! A socket on a worker's loop needs no waker of its own for that: its
//! readiness word says whether a read event came since it was last
//! drained ([`Direct::read_ready`]), and the task's own waker, registered
//! when it was seen not ready, stays registered until such an event. The
//! side's waker (a flag, a lock, a second wake-up call on every event) is
//! then left out; it serves TLS and sockets on tokio's driver.
//!
//! Over plain TCP the reads and writes themselves skip the async adapters
//! ([`Direct`], [`poll_read_direct`]): a wait registers with the socket's
//! read readiness alone, and bytes are moved with `try_read`/`try_write`,
//! on the worker's loop ([`crate::rt::TcpStream`]) or, for a socket left on
//! tokio's, on tokio's.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// A byte stream whose reads are counted (see the module doc): the socket
/// under a client's or a node's connection, TLS or not.
#[derive(Debug)]
pub struct Counted<T> {
    inner: T,
    reads: u64,
}

impl<T> Counted<T> {
    pub fn new(inner: T) -> Self {
        Counted { inner, reads: 0 }
    }

    pub fn get_ref(&self) -> &T {
        &self.inner
    }

    pub fn get_mut(&mut self) -> &mut T {
        &mut self.inner
    }
}

/// How many times the read side of the socket under a stream was polled
/// (wrapping): while it has not moved, no one else polled it.
pub trait ReadPolls {
    fn read_polls(&self) -> u64;
}

impl<T> ReadPolls for Counted<T> {
    fn read_polls(&self) -> u64 {
        self.reads
    }
}

impl<T> ReadPolls for tokio_rustls::server::TlsStream<Counted<T>> {
    fn read_polls(&self) -> u64 {
        self.get_ref().0.reads
    }
}

/// Reads and writes straight on the socket, without a future, for the hot
/// path. Plain TCP nearly always takes a request or an answer whole at
/// once, and has the bytes a wake-up announced: `try_write`/`try_read` is
/// then one readiness check and one system call, where a polled one also
/// goes through the task's budget, the IO driver's registration and the
/// read-buffer adapters (about 150 instructions a call, 4% of a
/// select-only transaction). `Err(WouldBlock)` means "use the async
/// path": the socket is not ready, or the stream holds state of its own
/// (TLS), which must go through its `AsyncRead`/`AsyncWrite`. The defaults
/// always say so.
pub trait Direct {
    /// Writes what of `buf` the socket takes now.
    fn write_now(&mut self, _buf: &[u8]) -> io::Result<usize> {
        Err(io::ErrorKind::WouldBlock.into())
    }

    /// Reads what the socket has into `buf`'s spare capacity (which must
    /// not be empty): 0 at the end of the stream.
    fn read_now(&mut self, _buf: &mut bytes::BytesMut) -> io::Result<usize> {
        Err(io::ErrorKind::WouldBlock.into())
    }

    /// Polls the socket's read readiness, registering `cx`'s waker when it
    /// is not ready; `None` for a stream without direct reads.
    fn poll_readable(&mut self, _cx: &mut Context<'_>) -> Option<Poll<io::Result<()>>> {
        None
    }

    /// Whether the socket had a read event since its readiness was last
    /// cleared, without polling it ([`crate::rt::TcpStream::read_ready`]):
    /// `None` where the stream cannot tell.
    fn read_ready(&self) -> Option<bool> {
        None
    }
}

/// Reads into `buf` as `tokio_util::io::poll_read_buf` does, straight on
/// the socket where the stream has direct reads ([`Direct`]): a wait that
/// finds nothing only registers the waker, and bytes are read with one
/// `try_read`, without the read-buffer adapters around each poll.
#[inline]
pub fn poll_read_direct<S>(
    stream: &mut S,
    cx: &mut Context<'_>,
    buf: &mut bytes::BytesMut,
) -> Poll<io::Result<usize>>
where
    S: AsyncRead + Direct + Unpin,
{
    loop {
        match stream.poll_readable(cx) {
            None => return tokio_util::io::poll_read_buf(Pin::new(stream), cx, buf),
            Some(Poll::Pending) => return Poll::Pending,
            Some(Poll::Ready(Err(e))) => return Poll::Ready(Err(e)),
            // Ends: a read that finds nothing clears the readiness it saw,
            // and the next poll then registers, unless bytes came since.
            Some(Poll::Ready(Ok(()))) => match stream.read_now(buf) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                r => return Poll::Ready(r),
            },
        }
    }
}

impl Direct for Counted<crate::rt::TcpStream> {
    #[inline]
    fn write_now(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.inner.try_write(buf)
    }

    /// A read counts as a poll of the socket (see [`ReadPolls`]); a short
    /// one clears the readiness ([`crate::rt::TcpStream::try_read_buf`]).
    #[inline]
    fn read_now(&mut self, buf: &mut bytes::BytesMut) -> io::Result<usize> {
        self.reads = self.reads.wrapping_add(1);
        self.inner.try_read_buf(buf)
    }

    /// Counts as a read poll: it registers the waker of the socket's reads.
    #[inline]
    fn poll_readable(&mut self, cx: &mut Context<'_>) -> Option<Poll<io::Result<()>>> {
        self.reads = self.reads.wrapping_add(1);
        Some(self.inner.poll_read_ready(cx))
    }

    #[inline]
    fn read_ready(&self) -> Option<bool> {
        self.inner.read_ready()
    }
}

impl<T> Direct for tokio_rustls::server::TlsStream<Counted<T>> {}

impl<T: AsyncRead + Unpin> AsyncRead for Counted<T> {
    #[inline]
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.reads = this.reads.wrapping_add(1);
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Counted<T> {
    #[inline]
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// The side of a [`ReadWait`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Server = 1,
    Client = 2,
}

/// Which sides woke, and the task to wake. The task's waker stays until a
/// poll from another task replaces it: a side's wake does not take it, so
/// a poll of the same task need not register it again.
#[derive(Default)]
struct Woken {
    sides: AtomicU8,
    task: Mutex<Option<Waker>>,
}

/// One side's waker: notes the side, then wakes the task.
struct SideWaker {
    woken: Arc<Woken>,
    side: Side,
}

impl Wake for SideWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.sides.fetch_or(self.side as u8, Ordering::AcqRel);
        let task = self.woken.task.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(t) = &*task {
            t.wake_by_ref();
        }
    }
}

/// A session's wait on its client and server reads (see the module doc).
pub struct ReadWait {
    woken: Arc<Woken>,
    server_waker: Waker,
    client_waker: Waker,
    /// The server read was last seen not ready with this server
    /// connection (its number in [`ReadWait::attached`]) and this count
    /// of reads of its socket.
    server_idle: Option<(u64, u64)>,
    /// The same for the client read: the count of reads of its socket.
    client_idle: Option<u64>,
    /// Counts the server connections attached, so that a new one (whose
    /// read count may equal the last one's) is never taken for it.
    attachments: u64,
    /// The task's waker as registered in [`Woken::task`].
    task: Option<Waker>,
    /// Whether the sides' own wakers are used: from the first answer of a
    /// server connection on. Until then both sides are polled with the
    /// task's waker, as a `select!` would: a transaction of one statement
    /// waits once for its answer and has nothing to save.
    gating: bool,
}

impl Default for ReadWait {
    fn default() -> Self {
        let woken = Arc::new(Woken::default());
        let waker = |side| {
            Waker::from(Arc::new(SideWaker {
                woken: woken.clone(),
                side,
            }))
        };
        ReadWait {
            server_waker: waker(Side::Server),
            client_waker: waker(Side::Client),
            woken,
            server_idle: None,
            client_idle: None,
            attachments: 0,
            task: None,
            gating: false,
        }
    }
}

impl Drop for ReadWait {
    /// A side's waker may outlive the session, registered with a server
    /// connection back in its pool: it then holds no task.
    fn drop(&mut self) {
        *self.woken.task.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }
}

impl std::fmt::Debug for ReadWait {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReadWait")
            .field("server_idle", &self.server_idle)
            .field("client_idle", &self.client_idle)
            .finish_non_exhaustive()
    }
}

impl ReadWait {
    /// A server connection was attached (or the attached one changed).
    pub fn attached(&mut self) {
        self.attachments = self.attachments.wrapping_add(1);
        self.server_idle = None;
        self.gating = false;
    }

    /// Starts one poll of the wait: takes the sides that woke since the
    /// last, and makes sure their wakers wake this task. Pass the result
    /// to [`Self::poll_read`] for each side, and to [`Self::keep`] when
    /// returning before every side in it was polled.
    #[inline]
    pub fn begin_poll(&mut self, cx: &Context<'_>) -> u8 {
        if !self.gating {
            return 0;
        }
        // The task's waker first, then the sides: a side that wakes after
        // the load below wakes this task.
        if !self.task.as_ref().is_some_and(|t| t.will_wake(cx.waker())) {
            let waker = cx.waker().clone();
            *self.woken.task.lock().unwrap_or_else(|p| p.into_inner()) = Some(waker.clone());
            self.task = Some(waker);
        }
        // A plain load first: most polls start with nothing woken.
        if self.woken.sides.load(Ordering::Acquire) == 0 {
            return 0;
        }
        self.woken.sides.swap(0, Ordering::AcqRel)
    }

    /// Polls `side`'s read of `stream` into `buf`, unless it is known not
    /// to be ready: it was seen not ready, nothing read the socket since,
    /// and `side` did not wake (its socket says so, [`Direct::read_ready`],
    /// or else its waker did not note it in `woke`, from
    /// [`Self::begin_poll`]).
    /// Not ready is `Pending`. `cx` is the task's, used until the server
    /// connection's first answer.
    #[inline]
    pub fn poll_read<S>(
        &mut self,
        cx: &mut Context<'_>,
        side: Side,
        woke: u8,
        stream: &mut S,
        buf: &mut bytes::BytesMut,
    ) -> Poll<io::Result<usize>>
    where
        S: AsyncRead + ReadPolls + Direct + Unpin,
    {
        if !self.gating {
            let r = poll_read_direct(stream, cx, buf);
            if side == Side::Server && matches!(r, Poll::Ready(Ok(n)) if n > 0) {
                self.gating = true;
            }
            return r;
        }
        let idle = match side {
            Side::Server => self.server_idle == Some((self.attachments, stream.read_polls())),
            Side::Client => self.client_idle == Some(stream.read_polls()),
        };
        // A socket on a worker's loop tells by itself whether it woke, and
        // keeps the task's own waker registered until it does: the side's
        // waker, its lock and its flag are not needed there.
        let ready = stream.read_ready();
        let side_woke = ready.unwrap_or(woke & side as u8 != 0);
        if idle && !side_woke {
            return Poll::Pending;
        }
        // A side that woke has its bytes: read them without the poll.
        if side_woke {
            match stream.read_now(buf) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                r => {
                    match side {
                        Side::Server => self.server_idle = None,
                        Side::Client => self.client_idle = None,
                    }
                    return Poll::Ready(r);
                }
            }
        }
        let waker = match (ready, side) {
            (Some(_), _) => cx.waker(),
            (None, Side::Server) => &self.server_waker,
            (None, Side::Client) => &self.client_waker,
        };
        let r = poll_read_direct(stream, &mut Context::from_waker(waker), buf);
        let seen = r.is_pending().then(|| stream.read_polls());
        match side {
            Side::Server => self.server_idle = seen.map(|n| (self.attachments, n)),
            Side::Client => self.client_idle = seen,
        }
        r
    }

    /// Ends a poll that returns ready before it polled every side in
    /// `woke`: those sides are kept for the next.
    pub fn keep(&self, woke: u8, polled: u8) {
        let left = woke & !polled;
        if left != 0 {
            self.woken.sides.fetch_or(left, Ordering::AcqRel);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BytesMut;
    use tokio::io::{AsyncWriteExt, DuplexStream};

    impl Direct for Counted<DuplexStream> {}

    /// A wait on two sockets: in memory, or loopback TCP (which the
    /// session's reads without a poll, [`Direct::read_now`], take).
    struct Waiting<T> {
        w: ReadWait,
        server: Counted<T>,
        client: Counted<T>,
    }

    impl<T> Waiting<T> {
        fn with(server: T, client: T) -> Waiting<T> {
            let mut w = ReadWait::default();
            w.attached();
            let server = Counted::new(server);
            let client = Counted::new(client);
            Waiting { w, server, client }
        }
    }

    impl Waiting<DuplexStream> {
        /// The wait, and the sockets' other ends (server's, client's).
        fn new() -> (Waiting<DuplexStream>, DuplexStream, DuplexStream) {
            let (s_peer, s) = tokio::io::duplex(64);
            let (c_peer, c) = tokio::io::duplex(64);
            (Waiting::with(s, c), s_peer, c_peer)
        }
    }

    /// A connected loopback pair: (ours, the peer's).
    async fn tcp_pair() -> (tokio::net::TcpStream, tokio::net::TcpStream) {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let peer = tokio::net::TcpStream::connect(l.local_addr().unwrap());
        let (ours, peer) = tokio::join!(l.accept(), peer);
        let peer = peer.unwrap();
        peer.set_nodelay(true).unwrap();
        (ours.unwrap().0, peer)
    }

    impl Waiting<crate::rt::TcpStream> {
        /// Over loopback TCP: on a worker's loop when called on a worker's
        /// thread, on tokio's elsewhere.
        async fn tcp() -> (
            Waiting<crate::rt::TcpStream>,
            tokio::net::TcpStream,
            tokio::net::TcpStream,
        ) {
            let (s, s_peer) = tcp_pair().await;
            let (c, c_peer) = tcp_pair().await;
            let own = |t| crate::rt::TcpStream::from_tokio(t).unwrap();
            (Waiting::with(own(s), own(c)), s_peer, c_peer)
        }
    }

    impl<T: AsyncRead + Unpin> Waiting<T>
    where
        Counted<T>: Direct,
    {
        /// Polls both sides the way the session does, server first: the
        /// side that had bytes and how many.
        fn poll(&mut self, cx: &mut Context<'_>) -> Option<(Side, usize)> {
            let mut buf = BytesMut::with_capacity(64);
            let w = &mut self.w;
            let woke = w.begin_poll(cx);
            if let Poll::Ready(r) = w.poll_read(cx, Side::Server, woke, &mut self.server, &mut buf)
            {
                w.keep(woke, Side::Server as u8);
                return Some((Side::Server, r.unwrap()));
            }
            if let Poll::Ready(r) = w.poll_read(cx, Side::Client, woke, &mut self.client, &mut buf)
            {
                return Some((Side::Client, r.unwrap()));
            }
            None
        }

        fn polls(&self) -> (u64, u64) {
            (self.server.read_polls(), self.client.read_polls())
        }
    }

    /// Counts the task's wake-ups.
    struct CountWakes(std::sync::atomic::AtomicUsize);

    impl Wake for CountWakes {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[tokio::test]
    async fn each_side_is_polled_when_it_woke_or_was_read_elsewhere() {
        let (mut t, mut s_peer, mut c_peer) = Waiting::new();
        let wakes = Arc::new(CountWakes(Default::default()));
        let task = Waker::from(wakes.clone());
        let mut cx = Context::from_waker(&task);

        // Until the server's first answer, both sides are polled each time
        // with the task's waker.
        assert_eq!(t.poll(&mut cx), None);
        assert_eq!(t.poll(&mut cx), None);
        s_peer.write_all(b"1").await.unwrap();
        assert_eq!(t.poll(&mut cx), Some((Side::Server, 1)));
        assert_eq!(t.polls(), (3, 2));

        assert_eq!(t.poll(&mut cx), None);
        assert_eq!(t.polls(), (4, 3));
        // Woken by nothing: neither side is polled again.
        assert_eq!(t.poll(&mut cx), None);
        assert_eq!(t.polls(), (4, 3));

        // The client writes: only its side woke; the server is not polled.
        let before = wakes.0.load(Ordering::SeqCst);
        c_peer.write_all(b"Q").await.unwrap();
        assert_eq!(
            wakes.0.load(Ordering::SeqCst),
            before + 1,
            "the task was woken"
        );
        assert_eq!(t.poll(&mut cx), Some((Side::Client, 1)));
        assert_eq!(t.polls(), (4, 4));

        // Both write before the next poll: the server's bytes come first,
        // and the client's wake is kept for the poll after.
        s_peer.write_all(b"A").await.unwrap();
        c_peer.write_all(b"B").await.unwrap();
        assert_eq!(t.poll(&mut cx), Some((Side::Server, 1)));
        assert_eq!(
            t.poll(&mut cx),
            Some((Side::Client, 1)),
            "the client's wake was not lost"
        );

        // Someone else reads the server's socket (and registers the task's
        // own waker there): the wait polls it again, and sees its bytes.
        assert_eq!(t.poll(&mut cx), None);
        let mut other = BytesMut::with_capacity(8);
        let read = tokio_util::io::poll_read_buf(Pin::new(&mut t.server), &mut cx, &mut other);
        assert!(read.is_pending());
        s_peer.write_all(b"C").await.unwrap();
        assert_eq!(t.poll(&mut cx), Some((Side::Server, 1)));

        // A new server connection is polled whatever its read count.
        assert_eq!(t.poll(&mut cx), None);
        let (mut s2_peer, s2) = tokio::io::duplex(64);
        let mut server2 = Counted::new(s2);
        server2.reads = t.server.reads;
        s2_peer.write_all(b"D").await.unwrap();
        t.server = server2;
        t.w.attached();
        assert_eq!(t.poll(&mut cx), Some((Side::Server, 1)));
    }

    /// Bytes written from other threads, at every moment of the wait's
    /// polls, each wake a chance to be lost: the wait must see them all.
    /// In memory, and over TCP, where a side that woke is read without a
    /// poll and a short read clears the socket's readiness.
    #[test]
    fn no_wake_is_lost_across_threads() {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(3)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let (t, s_peer, c_peer) = Waiting::new();
            let waits = sees_every_byte(t, s_peer, c_peer, true).await;
            assert!(waits >= 2, "in memory: {waits} waits");
            // Over TCP, with each side's waker and with the task's (the
            // wait before a connection's first answer).
            for gating in [true, false] {
                let (t, s_peer, c_peer) = Waiting::tcp().await;
                let waits = sees_every_byte(t, s_peer, c_peer, gating).await;
                assert!(waits >= 2, "TCP, gating {gating}: {waits} waits");
            }
        });
    }

    /// A direct read takes what is there, from an empty buffer too (as
    /// an idle session's is), then waits registered, and sees the end.
    #[tokio::test]
    async fn direct_reads_see_the_bytes_then_wait_then_the_end() {
        let (ours, mut peer) = tcp_pair().await;
        let mut ours = Counted::new(crate::rt::TcpStream::from_tokio(ours).unwrap());
        peer.write_all(&[7u8; 100]).await.unwrap();
        let wakes = Arc::new(CountWakes(Default::default()));
        let waker = Waker::from(wakes.clone());
        let mut cx = Context::from_waker(&waker);
        let mut buf = BytesMut::new();
        let mut polls = 0;
        while buf.len() < 100 {
            polls += 1;
            assert!(polls < 1000, "{} of 100 bytes", buf.len());
            match poll_read_direct(&mut ours, &mut cx, &mut buf) {
                Poll::Ready(r) => assert!(r.unwrap() > 0),
                Poll::Pending => tokio::task::yield_now().await,
            }
        }
        assert_eq!(&buf[..], &[7u8; 100][..]);
        let woken = wakes.0.load(Ordering::SeqCst);
        assert!(poll_read_direct(&mut ours, &mut cx, &mut buf).is_pending());
        drop(peer);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while wakes.0.load(Ordering::SeqCst) == woken {
            assert!(
                std::time::Instant::now() < deadline,
                "the end woke the reader"
            );
            tokio::task::yield_now().await;
        }
        assert!(matches!(
            poll_read_direct(&mut ours, &mut cx, &mut buf),
            Poll::Ready(Ok(0))
        ));
    }

    const BYTES: usize = 20_000;

    /// Waits until the wait saw all [`BYTES`], written one at a time from
    /// other tasks: how many waits that took.
    /// Reads until every byte the writers send came: how many waits.
    async fn read_every_byte<T>(mut t: Waiting<T>) -> u64
    where
        T: AsyncRead + Unpin,
        Counted<T>: Direct,
    {
        let (mut got, mut waits) = (0, 0u64);
        while got < BYTES {
            let (_, n) = std::future::poll_fn(|cx| match t.poll(cx) {
                Some(r) => Poll::Ready(r),
                None => Poll::Pending,
            })
            .await;
            got += n;
            waits += 1;
        }
        waits
    }

    /// The same on a worker's loop (`crate::rt`): the sockets are its own,
    /// and the writers run on tokio's threads, so every wake crosses
    /// threads through the loop's epoll set.
    #[test]
    fn no_wake_is_lost_on_a_workers_loop() {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let engine = crate::rt::Engine::start(1, Some(rt.handle().clone())).unwrap();
        for gating in [true, false] {
            let (tx, rx) = std::sync::mpsc::channel();
            engine.spawn(async move {
                let (mut t, s_peer, c_peer) = Waiting::tcp().await;
                assert!(t.server.get_ref().on_worker() && t.client.get_ref().on_worker());
                // The sockets tell the wait whether they woke: the sides'
                // wakers are not used (the path this test is for).
                assert!(t.server.read_ready().is_some() && t.client.read_ready().is_some());
                t.w.gating = gating;
                let writers = spawn_writers(s_peer, c_peer);
                let waits = read_every_byte(t).await;
                for wr in writers {
                    wr.await.unwrap();
                }
                tx.send(waits).unwrap();
            });
            // Bounded: a lost wake leaves the reader waiting for good.
            let waits = rx
                .recv_timeout(std::time::Duration::from_secs(60))
                .expect("every byte was seen on the worker's loop: no wake was lost");
            assert!(waits >= 2, "worker's loop, gating {gating}: {waits} waits");
        }
    }

    /// Writes half the bytes to each side from tasks of their own.
    fn spawn_writers<P>(s_peer: P, c_peer: P) -> [tokio::task::JoinHandle<P>; 2]
    where
        P: tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        [(s_peer, 3), (c_peer, 5)].map(|(mut peer, every)| {
            tokio::spawn(async move {
                for i in 0..BYTES / 2 {
                    peer.write_all(b"x").await.unwrap();
                    if i % every == 0 {
                        tokio::task::yield_now().await;
                    }
                }
                peer
            })
        })
    }

    async fn sees_every_byte<T, P>(mut t: Waiting<T>, s_peer: P, c_peer: P, gating: bool) -> u64
    where
        T: AsyncRead + Unpin + Send + 'static,
        Counted<T>: Direct,
        P: tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        t.w.gating = gating;
        let writers = spawn_writers(s_peer, c_peer);
        let reader = tokio::spawn(read_every_byte(t));
        // Bounded: a lost wake leaves the reader waiting for good.
        let r = tokio::time::timeout(std::time::Duration::from_secs(60), reader)
            .await
            .expect("every byte was seen: no wake was lost")
            .unwrap();
        for wr in writers {
            wr.await.unwrap();
        }
        r
    }
}
