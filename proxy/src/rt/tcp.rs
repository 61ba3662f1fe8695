//! A TCP socket on a worker's loop, or on tokio's off a worker thread.

use std::cell::UnsafeCell;
use std::io::{self, Write};
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::task::{Context, Poll, Waker};

use atomic_waker::AtomicWaker;
use bytes::{BufMut, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::{Worker, current_worker, take_budget};

const READ: usize = 1;
const WRITE: usize = 2;
/// The peer closed its side (or the socket failed): never cleared, as
/// tokio's own closed states, since the event that says so comes once and
/// a read that returned bytes before the end does not show it.
const READ_CLOSED: usize = 4;
const WRITE_CLOSED: usize = 8;
/// Each event adds one tick above the readiness bits, so that readiness
/// seen before a system call is cleared after it only if no event came in
/// between (an edge-triggered event is never lost).
const TICK: usize = 16;

/// `recv(2)` on `io` without glibc's wrapper. glibc's `recv` and `send`
/// are cancellation points: in a process with more than one thread each
/// call switches the thread's cancel state on and off around the system
/// call, two atomic read-modify-writes (about 150 instructions and 5% of
/// the proxy's user time per select-only transaction, measured with
/// `perf`). lagrouter never cancels a thread, so it makes the system call
/// itself, as a single-threaded program's glibc does.
#[inline]
fn recv(io: &mio::net::TcpStream, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: `buf` is valid for writes of `buf.len()` bytes for the call.
    unsafe { transfer(libc::SYS_recvfrom, io, buf.as_mut_ptr(), buf.len(), 0) }
}

/// `send(2)` on `io` without glibc's wrapper (see [`recv`]); a closed
/// peer is an error, not a `SIGPIPE`, as std's `write`.
#[inline]
fn send(io: &mio::net::TcpStream, buf: &[u8]) -> io::Result<usize> {
    // SAFETY: `buf` is valid for reads of `buf.len()` bytes for the call,
    // and sendto(2) does not write to it.
    unsafe {
        transfer(
            libc::SYS_sendto,
            io,
            buf.as_ptr().cast_mut(),
            buf.len(),
            libc::MSG_NOSIGNAL,
        )
    }
}

/// `recvfrom(2)` or `sendto(2)` (`nr`) of `len` bytes at `buf` on `io`,
/// with no address (null and zero, which both allow). Every argument is
/// passed a full register wide: `syscall` reads `long`s.
///
/// # Safety
///
/// `buf` must be valid for `len` bytes for the call: for writes when
/// receiving, for reads when sending.
#[inline]
unsafe fn transfer(
    nr: libc::c_long,
    io: &mio::net::TcpStream,
    buf: *mut u8,
    len: usize,
    flags: libc::c_int,
) -> io::Result<usize> {
    // SAFETY: the caller's promise on `buf`; the descriptor is `io`'s,
    // open for the borrow.
    let n = unsafe {
        libc::syscall(
            nr,
            io.as_raw_fd() as libc::c_long,
            buf,
            len,
            flags as libc::c_long,
            0 as libc::c_long,
            0 as libc::c_long,
        )
    };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// What makes the socket ready for `bit` (`READ` or `WRITE`).
#[inline]
fn ready_for(bit: usize) -> usize {
    bit | (bit << 2)
}

/// A socket's readiness and the wakers of its reader and writer, shared by
/// the socket and its worker's loop.
///
/// A reader on the loop's own thread, where the events are taken, waits
/// in `local_read`, with no atomics: that is every session reading its
/// client and the server connections of its own loop. A reader or writer
/// on another thread waits in an `AtomicWaker`, with a flag that says so.
/// Every event reports the socket writable (edge-triggered, both
/// interests) and most report it readable; without the flags each event
/// would pay the two atomic read-modify-writes of taking an empty waker.
pub(crate) struct IoState {
    ready: AtomicUsize,
    /// Touched only on the loop's thread (and by the last reference).
    local_read: UnsafeCell<Option<Waker>>,
    read: AtomicWaker,
    /// A reader registered in `read` and not woken since.
    read_waiting: AtomicBool,
    write: AtomicWaker,
    /// A writer registered in `write` and not woken since.
    write_waiting: AtomicBool,
}

// SAFETY: `local_read` is only touched on the thread of the loop the state
// is registered with (`on_event` runs there, and `poll_ready` uses it only
// there), or through the last reference when the state is dropped; the
// rest is atomics. A `Waker` may move between threads.
unsafe impl Sync for IoState {}

impl IoState {
    pub(super) fn on_event(&self, ev: &mio::event::Event) {
        let mut bits = 0;
        if ev.is_readable() {
            bits |= READ;
        }
        if ev.is_read_closed() || ev.is_error() {
            bits |= READ | READ_CLOSED;
        }
        if ev.is_writable() {
            bits |= WRITE;
        }
        if ev.is_write_closed() || ev.is_error() {
            bits |= WRITE | WRITE_CLOSED;
        }
        if bits == 0 {
            return;
        }
        // SeqCst: see `wake_waiting`.
        self.ready
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |r| {
                Some((r | bits).wrapping_add(TICK))
            })
            .ok();
        if bits & READ != 0 {
            // SAFETY: events are taken on the loop's thread, and a wake
            // does not poll: nothing registers a reader during the call.
            // The waker stays: a reader that waits again with the same
            // one (the usual case) registers nothing, and the task's
            // reference count is not touched. A reader that has stopped
            // waiting is polled once for nothing.
            if let Some(w) = unsafe { &*self.local_read.get() } {
                w.wake_by_ref();
            }
            wake_waiting(&self.read_waiting, &self.read);
        }
        if bits & WRITE != 0 {
            wake_waiting(&self.write_waiting, &self.write);
        }
    }

    /// Ready for `bit`: the readiness word seen; else registers `cx`.
    /// `on_loop`: this is the thread of the loop the socket is registered
    /// with.
    #[inline]
    fn poll_ready(&self, cx: &mut Context<'_>, bit: usize, on_loop: bool) -> Poll<usize> {
        let r = self.ready.load(Ordering::Acquire);
        if r & ready_for(bit) != 0 {
            return Poll::Ready(r);
        }
        if bit == READ && on_loop {
            // SAFETY: this is the loop's thread (the caller's word), so no
            // event is taken between the load above and the next one.
            let slot = unsafe { &mut *self.local_read.get() };
            if !slot.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                *slot = Some(cx.waker().clone());
            }
            return Poll::Pending;
        }
        let (w, waiting) = if bit == READ {
            (&self.read, &self.read_waiting)
        } else {
            (&self.write, &self.write_waiting)
        };
        waiting.store(true, Ordering::SeqCst);
        w.register(cx.waker());
        // An event between the load and the registration woke no one.
        let r = self.ready.load(Ordering::SeqCst);
        if r & ready_for(bit) != 0 {
            Poll::Ready(r)
        } else {
            Poll::Pending
        }
    }

    /// Clears `bit` if nothing happened since `seen` was read.
    #[inline]
    fn clear(&self, seen: usize, bit: usize) {
        let _ = self
            .ready
            .compare_exchange(seen, seen & !bit, Ordering::AcqRel, Ordering::Relaxed);
    }
}

/// Wakes the waker in `w` if `waiting` says one is there. SeqCst, after
/// the readiness update: a waiter sets the flag before it loads the
/// readiness, so either this sees the flag or the waiter sees the
/// readiness.
#[inline]
fn wake_waiting(waiting: &AtomicBool, w: &AtomicWaker) {
    if waiting.load(Ordering::SeqCst) && waiting.swap(false, Ordering::SeqCst) {
        w.wake();
    }
}

const BOTH: mio::Interest = mio::Interest::READABLE.add(mio::Interest::WRITABLE);

#[cfg(test)]
thread_local! {
    // Tests: the next registration on this thread fails as a full epoll
    // set's would.
    pub(super) static REFUSE_NEXT_REGISTRATION: std::cell::Cell<bool> =
        const { std::cell::Cell::new(false) };
}

/// Registers `io` with `worker`'s loop under a new state, whose address is
/// the token (the loop holds that reference until the socket is released).
/// Ready until a call says otherwise: a socket just connected, accepted or
/// moved usually is, and its first edge may have passed.
fn register(worker: &Worker, io: &mut mio::net::TcpStream) -> io::Result<(Arc<IoState>, usize)> {
    #[cfg(test)]
    if REFUSE_NEXT_REGISTRATION.take() {
        return Err(io::Error::from_raw_os_error(libc::ENOMEM));
    }
    let state = Arc::new(IoState {
        ready: AtomicUsize::new(READ | WRITE),
        local_read: UnsafeCell::new(None),
        read: AtomicWaker::new(),
        read_waiting: AtomicBool::new(false),
        write: AtomicWaker::new(),
        write_waiting: AtomicBool::new(false),
    });
    let token = Arc::into_raw(state.clone()) as usize;
    if let Err(e) = worker.registry.register(io, mio::Token(token), BOTH) {
        // SAFETY: made just above, never handed to the loop.
        drop(unsafe { Arc::from_raw(token as *const IoState) });
        return Err(e);
    }
    Ok((state, token))
}

/// A socket registered with a worker's loop.
struct Own {
    io: mio::net::TcpStream,
    state: Arc<IoState>,
    token: usize,
    worker: Arc<Worker>,
}

impl Drop for Own {
    fn drop(&mut self) {
        let _ = self.worker.registry.deregister(&mut self.io);
        self.worker.release(self.token);
    }
}

impl Own {
    /// One system call on the socket, `seen` the readiness read before
    /// it: clears `bit` on `WouldBlock`, and when `drained` says the call
    /// emptied the socket.
    #[inline]
    fn call<T>(
        &self,
        seen: usize,
        bit: usize,
        op: impl FnOnce(&mio::net::TcpStream) -> io::Result<T>,
        drained: impl FnOnce(&T) -> bool,
    ) -> io::Result<T> {
        let r = op(&self.io);
        match &r {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.state.clear(seen, bit),
            Ok(v) if drained(v) => self.state.clear(seen, bit),
            _ => {}
        }
        r
    }

    /// [`Self::call`] if the socket looks ready for `bit`, else
    /// `WouldBlock` without a system call.
    #[inline]
    fn try_op<T>(
        &self,
        bit: usize,
        op: impl FnOnce(&mio::net::TcpStream) -> io::Result<T>,
        drained: impl FnOnce(&T) -> bool,
    ) -> io::Result<T> {
        let seen = self.state.ready.load(Ordering::Acquire);
        if seen & ready_for(bit) == 0 {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        self.call(seen, bit, op, drained)
    }

    /// [`IoState::poll_ready`], told whether this is the thread of the
    /// socket's loop.
    #[inline]
    fn poll_ready(&self, cx: &mut Context<'_>, bit: usize) -> Poll<usize> {
        let on_loop = super::is_current_worker(&self.worker);
        self.state.poll_ready(cx, bit, on_loop)
    }

    fn poll_op<T>(
        &self,
        cx: &mut Context<'_>,
        bit: usize,
        mut op: impl FnMut(&mio::net::TcpStream) -> io::Result<T>,
    ) -> Poll<io::Result<T>> {
        if !take_budget() {
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        loop {
            let seen = match self.poll_ready(cx, bit) {
                Poll::Ready(r) => r,
                Poll::Pending => return Poll::Pending,
            };
            match self.call(seen, bit, &mut op, |_| false) {
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                    ) => {}
                r => return Poll::Ready(r),
            }
        }
    }
}

enum Inner {
    Own(Own),
    Tokio(tokio::net::TcpStream),
}

/// A TCP stream to a client or a node. On a worker's thread it runs on
/// that worker's loop; elsewhere (a session run on a plain tokio runtime,
/// as some tests do) it stays tokio's.
pub struct TcpStream(Inner);

impl std::fmt::Debug for TcpStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match self.0 {
            Inner::Own(_) => "worker",
            Inner::Tokio(_) => "tokio",
        };
        f.debug_struct("TcpStream")
            .field("loop", &kind)
            .field("peer", &self.peer_addr().ok())
            .finish()
    }
}

impl TcpStream {
    /// Takes over a socket accepted or connected on tokio: onto this
    /// thread's worker loop if it has one.
    ///
    /// If the loop's epoll set refuses the socket (`ENOMEM`, or `ENOSPC`
    /// at `fs.epoll.max_user_watches`), it goes back to tokio's driver and
    /// is served from there (each wake-up then crosses threads), rather
    /// than dropped with the client never told why. An error here means
    /// tokio refused it too.
    pub fn from_tokio(s: tokio::net::TcpStream) -> io::Result<TcpStream> {
        let Some(worker) = current_worker() else {
            return Ok(TcpStream(Inner::Tokio(s)));
        };
        let std = s.into_std()?;
        let mut io = mio::net::TcpStream::from_std(std);
        match register(&worker, &mut io) {
            Ok((state, token)) => Ok(TcpStream(Inner::Own(Own {
                io,
                state,
                token,
                worker,
            }))),
            Err(e) => {
                tracing::warn!("a worker's loop refused a socket ({e}); it stays on tokio's");
                let s = tokio::net::TcpStream::from_std(io.into())?;
                Ok(TcpStream(Inner::Tokio(s)))
            }
        }
    }

    /// Moves the socket onto this thread's worker loop when it is on
    /// another worker's: a server connection checked out by a session of
    /// another loop would otherwise have every answer woken across threads
    /// (with `server.workers` above 1). Two `epoll_ctl` calls; nothing on
    /// the socket's own loop or off a worker thread. If the new loop
    /// refuses it, the socket goes back to its old one.
    pub fn adopt(&mut self) {
        let Inner::Own(o) = &mut self.0 else {
            return;
        };
        if super::is_current_worker(&o.worker) {
            return;
        }
        let Some(worker) = current_worker() else {
            return;
        };
        // Out of the old set first: mio ties a source to one registry.
        if o.worker.registry.deregister(&mut o.io).is_err() {
            return;
        }
        let Ok((state, token)) = register(&worker, &mut o.io) else {
            // Back where it was, ready (an edge may have passed meanwhile);
            // failing that too, the next read or write reports it.
            o.state.ready.fetch_or(READ | WRITE, Ordering::AcqRel);
            let _ = o
                .worker
                .registry
                .register(&mut o.io, mio::Token(o.token), BOTH);
            return;
        };
        o.worker.release(o.token);
        o.state = state;
        o.token = token;
        o.worker = worker;
    }

    /// Whether the socket is on the loop of the thread calling.
    pub fn on_this_worker(&self) -> bool {
        match &self.0 {
            Inner::Own(o) => super::is_current_worker(&o.worker),
            Inner::Tokio(_) => false,
        }
    }

    /// Connects to `host:port` (name lookup and connect on tokio), then
    /// takes the socket over ([`Self::from_tokio`]).
    pub async fn connect(host: &str, port: u16) -> io::Result<TcpStream> {
        let tcp = tokio::net::TcpStream::connect((host, port)).await?;
        tcp.set_nodelay(true)?;
        TcpStream::from_tokio(tcp)
    }

    pub fn peer_addr(&self) -> io::Result<SocketAddr> {
        match &self.0 {
            Inner::Own(o) => o.io.peer_addr(),
            Inner::Tokio(s) => s.peer_addr(),
        }
    }

    pub fn set_nodelay(&self, on: bool) -> io::Result<()> {
        match &self.0 {
            Inner::Own(o) => o.io.set_nodelay(on),
            Inner::Tokio(s) => s.set_nodelay(on),
        }
    }

    /// Whether the socket runs on a worker's loop (not tokio's).
    pub fn on_worker(&self) -> bool {
        matches!(self.0, Inner::Own(_))
    }

    /// Reads what the socket has now; `WouldBlock` when nothing. Always
    /// asks the kernel (a liveness probe must see a close the loop has
    /// not yet been told of).
    pub fn try_read(&self, buf: &mut [u8]) -> io::Result<usize> {
        match &self.0 {
            Inner::Own(o) => {
                let seen = o.state.ready.load(Ordering::Acquire);
                o.call(seen, READ, |io| recv(io, buf), |_| false)
            }
            Inner::Tokio(s) => s.try_read(buf),
        }
    }

    /// Writes what the socket takes now; `WouldBlock` when nothing.
    #[inline]
    pub fn try_write(&self, buf: &[u8]) -> io::Result<usize> {
        match &self.0 {
            Inner::Own(o) => o.try_op(WRITE, |io| send(io, buf), |_| false),
            Inner::Tokio(s) => s.try_write(buf),
        }
    }

    /// Reads what the socket has into `buf`'s spare capacity (made
    /// non-empty first). A read shorter than the space offered drained the
    /// socket and clears its readiness, so the next wait registers at once
    /// instead of first reading `EAGAIN`; bytes that arrived after the
    /// read (a newer event) keep it.
    #[inline]
    pub fn try_read_buf(&self, buf: &mut BytesMut) -> io::Result<usize> {
        if buf.capacity() == buf.len() {
            buf.reserve(64);
        }
        let spare = buf.capacity() - buf.len();
        match &self.0 {
            Inner::Own(o) => o.try_op(READ, |io| read_into(io, buf), |&n| n > 0 && n < spare),
            Inner::Tokio(tcp) => {
                let mut got = 0;
                let r = tcp.try_io(tokio::io::Interest::READABLE, || {
                    got = tcp.try_read_buf(buf)?;
                    if got > 0 && got < spare {
                        // Not an error: asks try_io to clear the readiness.
                        return Err(io::ErrorKind::WouldBlock.into());
                    }
                    Ok(got)
                });
                match r {
                    // Bytes read: the error is the closure's own.
                    Err(_) if got > 0 => Ok(got),
                    r => r,
                }
            }
        }
    }

    /// Whether a read event came since the socket's read readiness was
    /// last cleared (or it closed): one load, no system call, nothing
    /// registered. `None` for a socket on tokio's driver, which cannot
    /// tell. A waker registered for reads stays registered while this is
    /// `Some(false)`: an event sets the readiness before it takes the
    /// waker, and only a read clears it.
    #[inline]
    pub fn read_ready(&self) -> Option<bool> {
        match &self.0 {
            Inner::Own(o) => Some(o.state.ready.load(Ordering::Acquire) & ready_for(READ) != 0),
            Inner::Tokio(_) => None,
        }
    }

    /// Polls read readiness, registering `cx`'s waker when not ready.
    #[inline]
    pub fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &self.0 {
            Inner::Own(o) => {
                if !take_budget() {
                    cx.waker().wake_by_ref();
                    return Poll::Pending;
                }
                o.poll_ready(cx, READ).map(|_| Ok(()))
            }
            Inner::Tokio(s) => s.poll_read_ready(cx),
        }
    }
}

/// Reads into `buf`'s spare capacity, as tokio's `try_read_buf` does.
#[inline]
fn read_into(io: &mio::net::TcpStream, buf: &mut BytesMut) -> io::Result<usize> {
    let dst = buf.chunk_mut();
    // SAFETY: as tokio's `try_read_buf`: the kernel only writes into the
    // spare bytes, and `advance_mut` counts no more than it wrote.
    let dst = unsafe { &mut *(dst as *mut _ as *mut [std::mem::MaybeUninit<u8>] as *mut [u8]) };
    let n = recv(io, dst)?;
    // SAFETY: `n` bytes were just written by the read.
    unsafe { buf.advance_mut(n) };
    Ok(n)
}

impl AsyncRead for TcpStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match &mut self.get_mut().0 {
            Inner::Own(o) => {
                let r = o.poll_op(cx, READ, |io| {
                    // SAFETY: as in `read_into`; `assume_init` below counts
                    // only what the read wrote.
                    let dst = unsafe { &mut *(buf.unfilled_mut() as *mut _ as *mut [u8]) };
                    recv(io, dst)
                });
                match r {
                    Poll::Ready(Ok(n)) => {
                        // SAFETY: `n` bytes were written by the read.
                        unsafe { buf.assume_init(n) };
                        buf.advance(n);
                        Poll::Ready(Ok(()))
                    }
                    Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
                    Poll::Pending => Poll::Pending,
                }
            }
            Inner::Tokio(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for TcpStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match &mut self.get_mut().0 {
            Inner::Own(o) => o.poll_op(cx, WRITE, |io| send(io, buf)),
            Inner::Tokio(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match &mut self.get_mut().0 {
            Inner::Own(o) => o.poll_op(cx, WRITE, |mut io| io.write_vectored(bufs)),
            Inner::Tokio(s) => Pin::new(s).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().0 {
            Inner::Own(o) => Poll::Ready(o.io.shutdown(std::net::Shutdown::Write)),
            Inner::Tokio(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}
