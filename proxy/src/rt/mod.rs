//! The sessions' own event loop: `server.workers` threads, each polling
//! its sessions' sockets with one epoll set (mio) and running the sessions
//! woken by it, one after another.
//!
//! Why not tokio's scheduler: measured with callgrind, tokio's
//! current-thread scheduler and IO driver cost lagrouter about 900
//! instructions per wake-up (2,137 of a select-only transaction's 6,967,
//! a third of every transaction's user time): the IO driver's registration
//! and readiness bookkeeping, the task harness's state machine and
//! reference counts, the budget, the busy-time clock reads. A bare relay
//! on mio costs 290 instructions per select-only transaction where the
//! same relay on tokio costs 3,155 (the bench's `mio-relay` and
//! `tokio-relay` targets). This loop keeps what a session needs and no
//! more: a wake-up is one readiness update, one waker call that pushes the
//! task on its worker's queue, and one poll of the task's future.
//!
//! Everything else stays on tokio: the listener, the maintenance tasks,
//! connects (name lookups), cancel requests and blocking work run on the
//! runtime that started the proxy, whose handle every worker thread enters
//! (`tokio::spawn` and `tokio::net` work from a session). A socket moves
//! to a worker's loop once connected ([`TcpStream::from_tokio`]); until
//! then its readiness comes from tokio's driver, which wakes the session
//! across threads.
//!
//! Sessions (tasks) stay on the worker they were spawned on. A server
//! connection moves between sessions, so between workers: its socket stays
//! registered with the loop that took it over, and a waker of another
//! worker's task is woken across threads (a queue under a lock and an
//! eventfd write), as tokio's would be.

use std::cell::{Cell, RefCell, UnsafeCell};
use std::collections::VecDeque;
use std::future::Future;
use std::io;
use std::mem::ManuallyDrop;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, RawWaker, RawWakerVTable, Waker};
use std::time::Instant;

mod tcp;
#[cfg(test)]
mod tests;

pub use tcp::TcpStream;

type BoxFuture = Pin<Box<dyn Future<Output = ()> + Send>>;

/// The token of a worker's own waker; a socket's token is the address of
/// its [`tcp::IoState`], never 0.
const WAKE: mio::Token = mio::Token(0);

/// Tasks polled in a row before the loop looks at its sockets again, so
/// that tasks that keep waking each other cannot starve the others' IO.
const TASKS_PER_TURN: usize = 128;

/// Socket operations a task may do in one poll before it is asked to
/// yield (as tokio's budget does): a client that always has bytes must not
/// hold its worker.
const BUDGET: u32 = 128;

/// A task that is not in its worker's task list yet.
const NO_SLOT: usize = usize::MAX;
/// A task that has finished, and left its worker's task list.
const DONE: usize = usize::MAX - 1;

/// What a worker shares with other threads: its epoll set's registry, its
/// waker and the queues other threads fill.
pub(crate) struct Worker {
    registry: mio::Registry,
    waker: mio::Waker,
    /// Tasks woken or spawned from other threads.
    remote: Mutex<Vec<Arc<Task>>>,
    has_remote: AtomicBool,
    /// Tokens of sockets dropped since the last turn: their state is freed
    /// at the start of the next, after the events that may name them.
    released: Mutex<Vec<usize>>,
    has_released: AtomicBool,
    stop: AtomicBool,
}

impl Worker {
    fn push_remote(&self, task: Arc<Task>) {
        let was_empty = {
            let mut q = self.remote.lock().unwrap_or_else(PoisonError::into_inner);
            q.push(task);
            q.len() == 1
        };
        self.has_remote.store(true, Ordering::Release);
        // The worker takes the whole queue at once: whoever found it empty
        // wakes it, the others ride on that.
        if was_empty {
            let _ = self.waker.wake();
        }
    }

    pub(crate) fn release(&self, token: usize) {
        self.released
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(token);
        self.has_released.store(true, Ordering::Release);
    }

    fn free_released(&self) {
        // A load first: this runs every turn, and most turns free nothing.
        if !self.has_released.load(Ordering::Acquire)
            || !self.has_released.swap(false, Ordering::AcqRel)
        {
            return;
        }
        let tokens =
            std::mem::take(&mut *self.released.lock().unwrap_or_else(PoisonError::into_inner));
        for t in tokens {
            // SAFETY: the token was made by `Arc::into_raw` when the socket
            // was registered, and is released once, after deregistering.
            drop(unsafe { Arc::from_raw(t as *const tcp::IoState) });
        }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.has_released.store(true, Ordering::Relaxed);
        self.free_released();
    }
}

/// A spawned future and what its wakers need.
struct Task {
    /// Polled and dropped only on its worker's thread (or by the last
    /// reference, which then has it alone).
    future: UnsafeCell<Option<BoxFuture>>,
    /// In a run queue (or being pushed on one): a second wake is a no-op.
    queued: AtomicBool,
    /// Its key in the worker's task list ([`NO_SLOT`] before its first
    /// poll, [`DONE`] after its last); touched on the worker's thread.
    slot: AtomicUsize,
    worker: Arc<Worker>,
}

// SAFETY: `future` is only touched on the worker's thread (see above); the
// rest is atomics and an `Arc` of a `Sync` type.
unsafe impl Send for Task {}
unsafe impl Sync for Task {}

impl Task {
    fn wake_by_ref(self: &Arc<Self>) {
        match local_of(&self.worker) {
            Some(l) => self.queue_here(l),
            None => {
                if !self.queued.swap(true, Ordering::AcqRel) {
                    self.worker.push_remote(self.clone());
                }
            }
        }
    }

    /// As [`Self::wake_by_ref`]; a wake from another thread takes a
    /// count for the remote queue and gives this one back, where it
    /// could hand this one over: two atomic operations on a path that
    /// locks the queue and writes to the worker's eventfd anyway.
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    /// Queues the task on its own worker's thread: its key in the task
    /// list, no reference count taken (the list holds one), and the
    /// queued flag set with a load and a store instead of a
    /// read-modify-write (most wakes come from the task's own loop). A
    /// wake from another thread at the same moment may then queue it a
    /// second time: it is polled once more for nothing, never not at all
    /// (its flag is cleared before each poll). A task that has finished
    /// is not queued.
    #[inline]
    fn queue_here(&self, l: &Local) {
        let key = self.slot.load(Ordering::Relaxed);
        if key >= DONE || self.queued.load(Ordering::Acquire) {
            return;
        }
        self.queued.store(true, Ordering::Release);
        l.queue.borrow_mut().push_back(key);
    }
}

/// A worker's thread-local state while its loop runs.
struct Local {
    worker: *const Worker,
    /// The worker's tasks: the list holds each one's reference while it
    /// runs, so that the run queue and a local wake need none.
    tasks: RefCell<slab::Slab<Arc<Task>>>,
    /// Keys in `tasks` of the tasks to poll. A key may outlive its task
    /// (one that woke itself and then finished) and name a newer one: that
    /// one is polled once for nothing, which a future allows.
    queue: RefCell<VecDeque<usize>>,
    /// Socket operations left to the task being polled.
    budget: Cell<u32>,
    /// The clock, read once per turn after the poll (see [`now`]).
    now: Cell<Instant>,
}

impl Local {
    /// Queues a task that came through the remote queue or was spawned
    /// here: a new one enters the task list; the list's reference stands
    /// for the queue's, and the one given is dropped.
    fn adopt(&self, task: Arc<Task>) {
        let key = match task.slot.load(Ordering::Relaxed) {
            DONE => return,
            NO_SLOT => {
                let key = self.tasks.borrow_mut().insert(task.clone());
                task.slot.store(key, Ordering::Relaxed);
                key
            }
            key => key,
        };
        self.queue.borrow_mut().push_back(key);
    }
}

thread_local! {
    static CURRENT: Cell<*const Local> = const { Cell::new(std::ptr::null()) };
}

/// This thread's loop state if this is `worker`'s thread.
#[inline]
fn local_of<'a>(worker: &Arc<Worker>) -> Option<&'a Local> {
    let l = CURRENT.with(Cell::get);
    // SAFETY: set only while the worker's loop runs on this thread,
    // pointing at a `Local` on that loop's stack; the reference is used
    // within the caller's call, inside that loop.
    unsafe { l.as_ref() }.filter(|l| std::ptr::eq(l.worker, Arc::as_ptr(worker)))
}

/// Whether `worker`'s loop runs on this thread.
#[inline]
pub(crate) fn is_current_worker(worker: &Arc<Worker>) -> bool {
    local_of(worker).is_some()
}

/// The worker whose loop runs on this thread, if any.
pub(crate) fn current_worker() -> Option<Arc<Worker>> {
    CURRENT.with(|c| {
        // SAFETY: as in `local_of`.
        unsafe { c.get().as_ref() }.map(|l| {
            // SAFETY: the loop holds an `Arc<Worker>` for as long as it
            // runs, so the count is at least one.
            unsafe {
                Arc::increment_strong_count(l.worker);
                Arc::from_raw(l.worker)
            }
        })
    })
}

/// The time: on a worker's thread, as read when its loop last came back
/// from the poll (at most one turn old: the sessions woken by those
/// events, at most [`TASKS_PER_TURN`] of them), else the clock. The
/// sessions' per-transaction reads (routing's `now`, a pooled
/// connection's last use) take it from here: a clock read costs a few
/// hundred cycles in a virtual machine, and a busy loop's turn serves
/// many transactions. Nothing here needs better than a turn: the lag and
/// stall limits are tens of milliseconds and up.
#[inline]
pub(crate) fn now() -> Instant {
    CURRENT.with(|c| {
        // SAFETY: as in `local_of`.
        match unsafe { c.get().as_ref() } {
            Some(l) => l.now.get(),
            None => Instant::now(),
        }
    })
}

/// Takes one socket operation from the running task's budget: `false`
/// when it is spent (the caller then wakes the task and yields). Always
/// `true` off a worker's thread.
#[inline]
pub(crate) fn take_budget() -> bool {
    CURRENT.with(|c| {
        // SAFETY: as in `local_of`.
        match unsafe { c.get().as_ref() } {
            Some(l) => {
                let b = l.budget.get();
                if b == 0 {
                    return false;
                }
                l.budget.set(b - 1);
                true
            }
            None => true,
        }
    })
}

// A task's waker is its `Arc<Task>`; the loop polls with a borrowed one
// (no reference count taken) that `clone` turns into an owned one.
static VTABLE: RawWakerVTable = RawWakerVTable::new(clone_waker, wake, wake_by_ref, drop_waker);

unsafe fn clone_waker(p: *const ()) -> RawWaker {
    // SAFETY: `p` is an `Arc<Task>`'s pointer, alive while a waker is.
    unsafe { Arc::increment_strong_count(p as *const Task) };
    RawWaker::new(p, &VTABLE)
}

unsafe fn wake(p: *const ()) {
    // SAFETY: an owned waker holds one count, given up here.
    unsafe { Arc::from_raw(p as *const Task) }.wake();
}

unsafe fn wake_by_ref(p: *const ()) {
    // SAFETY: the waker's count keeps the task alive for this call.
    let task = ManuallyDrop::new(unsafe { Arc::from_raw(p as *const Task) });
    task.wake_by_ref();
}

unsafe fn drop_waker(p: *const ()) {
    // SAFETY: an owned waker holds one count, given up here.
    drop(unsafe { Arc::from_raw(p as *const Task) });
}

/// The sessions' worker threads.
pub struct Engine {
    workers: Vec<Arc<Worker>>,
    next: AtomicUsize,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("workers", &self.workers.len())
            .finish()
    }
}

impl Engine {
    /// Starts `workers` threads. Each enters `tokio` (when given), so that
    /// sessions can spawn on it and open its sockets.
    pub fn start(workers: usize, tokio: Option<tokio::runtime::Handle>) -> io::Result<Engine> {
        let mut started = Vec::with_capacity(workers);
        let engine = |started: Vec<Arc<Worker>>| Engine {
            workers: started,
            next: AtomicUsize::new(0),
        };
        for i in 0..workers.max(1) {
            let poll = mio::Poll::new()?;
            let worker = Arc::new(Worker {
                registry: poll.registry().try_clone()?,
                waker: mio::Waker::new(poll.registry(), WAKE)?,
                remote: Mutex::new(Vec::new()),
                has_remote: AtomicBool::new(false),
                released: Mutex::new(Vec::new()),
                has_released: AtomicBool::new(false),
                stop: AtomicBool::new(false),
            });
            let w = worker.clone();
            let tokio = tokio.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("lagrouter-worker-{i}"))
                .spawn(move || {
                    let _entered = tokio.as_ref().map(|h| h.enter());
                    run(w, poll);
                });
            if let Err(e) = spawned {
                // Stops the ones started (dropping the engine does).
                drop(engine(started));
                return Err(e);
            }
            started.push(worker);
        }
        Ok(engine(started))
    }

    /// Runs `future` on the next worker, in turn.
    pub fn spawn<F>(&self, future: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.workers.len();
        let worker = &self.workers[i];
        let task = Arc::new(Task {
            future: UnsafeCell::new(Some(Box::pin(future))),
            queued: AtomicBool::new(true),
            slot: AtomicUsize::new(NO_SLOT),
            worker: worker.clone(),
        });
        match local_of(worker) {
            Some(l) => l.adopt(task),
            None => worker.push_remote(task),
        }
    }

    /// Stops the workers: each drops the tasks it still has (their sockets
    /// close) and its thread ends. Tasks spawned later never run.
    pub fn stop(&self) {
        for w in &self.workers {
            w.stop.store(true, Ordering::Release);
            let _ = w.waker.wake();
        }
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A worker's loop: runs until [`Engine::stop`].
fn run(worker: Arc<Worker>, mut poll: mio::Poll) {
    let local = Local {
        worker: Arc::as_ptr(&worker),
        tasks: RefCell::new(slab::Slab::new()),
        queue: RefCell::new(VecDeque::with_capacity(64)),
        budget: Cell::new(BUDGET),
        now: Cell::new(Instant::now()),
    };
    CURRENT.with(|c| c.set(&local));
    let mut events = mio::Events::with_capacity(256);
    loop {
        if worker.has_remote.load(Ordering::Acquire) {
            worker.has_remote.store(false, Ordering::Release);
            let remote =
                std::mem::take(&mut *worker.remote.lock().unwrap_or_else(PoisonError::into_inner));
            for task in remote {
                local.adopt(task);
            }
        }
        for _ in 0..TASKS_PER_TURN {
            let Some(key) = local.queue.borrow_mut().pop_front() else {
                break;
            };
            local.budget.set(BUDGET);
            run_task(&local, key);
        }
        if worker.stop.load(Ordering::Acquire) {
            break;
        }
        worker.free_released();
        let busy = !local.queue.borrow().is_empty() || worker.has_remote.load(Ordering::Acquire);
        let timeout = busy.then_some(std::time::Duration::ZERO);
        let polled = poll.poll(&mut events, timeout);
        local.now.set(Instant::now());
        if let Err(e) = polled {
            if e.kind() != io::ErrorKind::Interrupted {
                tracing::error!("a worker's event loop failed: {e}");
                break;
            }
            continue;
        }
        for ev in events.iter() {
            if ev.token() == WAKE {
                continue;
            }
            // SAFETY: the token is a registered socket's state, freed only
            // by `free_released`, after this batch.
            let state = unsafe { &*(ev.token().0 as *const tcp::IoState) };
            state.on_event(ev);
        }
    }
    // Stopping: the tasks' futures go now, on this thread, with their
    // sockets (a waker a socket holds would otherwise keep its own task).
    CURRENT.with(|c| c.set(std::ptr::null()));
    let tasks = std::mem::take(&mut *local.tasks.borrow_mut());
    for (_, task) in tasks {
        // SAFETY: this is the task's worker thread.
        drop(unsafe { (*task.future.get()).take() });
    }
    drop(local);
    worker.free_released();
}

/// Polls the task at `key` in `local`'s task list, if one is there.
fn run_task(local: &Local, key: usize) {
    // A pointer, not a borrow of the list: the poll may spawn (insert).
    let Some(task) = local.tasks.borrow().get(key).map(Arc::as_ptr) else {
        return;
    };
    // SAFETY: the list keeps the task alive until it is removed below,
    // after its last use here; only this function removes a task.
    let task = unsafe { &*task };
    task.queued.store(false, Ordering::Release);
    // SAFETY: only this worker's thread touches the future.
    let slot = unsafe { &mut *task.future.get() };
    let Some(future) = slot.as_mut() else {
        return;
    };
    // SAFETY: a borrowed waker: the list's reference outlives it, and it
    // is never dropped (ManuallyDrop), so no count is given back that was
    // not taken.
    let waker = ManuallyDrop::new(unsafe {
        Waker::from_raw(RawWaker::new(std::ptr::from_ref(task).cast(), &VTABLE))
    });
    let mut cx = Context::from_waker(&waker);
    let done = match catch_unwind(AssertUnwindSafe(|| future.as_mut().poll(&mut cx))) {
        Ok(Poll::Pending) => false,
        Ok(Poll::Ready(())) => true,
        Err(_) => {
            tracing::error!("a session panicked: it is dropped, and its client disconnected");
            true
        }
    };
    if done {
        let future = slot.take();
        if catch_unwind(AssertUnwindSafe(|| drop(future))).is_err() {
            tracing::error!("a session panicked while it was dropped");
        }
        task.slot.store(DONE, Ordering::Relaxed);
        // Dropped after the list's borrow ends.
        let removed = local.tasks.borrow_mut().try_remove(key);
        drop(removed);
    }
}
