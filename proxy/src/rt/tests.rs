use std::io::{Read, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{Engine, TcpStream};

const WAIT: Duration = Duration::from_secs(10);

fn tokio_rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap()
}

/// A loopback connection: the client's end (blocking std), and the end
/// accepted on tokio, as the listener accepts clients.
fn loopback(rt: &tokio::runtime::Runtime) -> (std::net::TcpStream, tokio::net::TcpStream) {
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let accept = rt.spawn(async move { listener.accept().await.unwrap().0 });
    let client = std::net::TcpStream::connect(addr).unwrap();
    (client, rt.block_on(accept).unwrap())
}

#[test]
fn spawned_tasks_run_on_every_worker() {
    let engine = Engine::start(2, None).unwrap();
    let (tx, rx) = mpsc::channel();
    for i in 0..10 {
        let tx = tx.clone();
        engine.spawn(async move {
            let name = std::thread::current().name().unwrap_or("").to_string();
            tx.send((i, name)).unwrap();
        });
    }
    let mut seen: Vec<(i32, String)> = (0..10).map(|_| rx.recv_timeout(WAIT).unwrap()).collect();
    seen.sort();
    assert_eq!(
        seen.iter().map(|s| s.0).collect::<Vec<_>>(),
        (0..10).collect::<Vec<_>>()
    );
    for name in ["lagrouter-worker-0", "lagrouter-worker-1"] {
        assert!(
            seen.iter().any(|s| s.1 == name),
            "no task ran on {name}: {seen:?}"
        );
    }
}

#[test]
fn a_task_woken_from_another_thread_runs_again() {
    let engine = Engine::start(1, None).unwrap();
    let (wake_tx, wake_rx) = tokio::sync::oneshot::channel::<u32>();
    let (tx, rx) = mpsc::channel();
    engine.spawn(async move {
        let v = wake_rx.await.unwrap();
        tx.send(v).unwrap();
    });
    std::thread::sleep(Duration::from_millis(50));
    assert!(
        rx.try_recv().is_err(),
        "the task finished before it was woken"
    );
    std::thread::spawn(move || wake_tx.send(7).unwrap())
        .join()
        .unwrap();
    assert_eq!(rx.recv_timeout(WAIT).unwrap(), 7);
}

#[test]
fn a_panicking_task_leaves_its_worker_running() {
    let engine = Engine::start(1, None).unwrap();
    engine.spawn(async { panic!("this task panics on purpose") });
    let (tx, rx) = mpsc::channel();
    engine.spawn(async move { tx.send(()).unwrap() });
    rx.recv_timeout(WAIT).unwrap();
}

/// Signals when dropped.
struct DropFlag(Arc<AtomicUsize>);

impl Drop for DropFlag {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

#[test]
fn stop_drops_the_tasks_still_waiting() {
    let engine = Engine::start(1, None).unwrap();
    let dropped = Arc::new(AtomicUsize::new(0));
    let (never_tx, never_rx) = tokio::sync::oneshot::channel::<()>();
    let flag = DropFlag(dropped.clone());
    engine.spawn(async move {
        let _flag = flag;
        let _ = never_rx.await;
    });
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(dropped.load(Ordering::SeqCst), 0);
    engine.stop();
    let start = std::time::Instant::now();
    while dropped.load(Ordering::SeqCst) == 0 {
        assert!(start.elapsed() < WAIT, "the waiting task was not dropped");
        std::thread::sleep(Duration::from_millis(5));
    }
    drop(never_tx);
}

/// A session-like echo on a worker: the socket is accepted on tokio and
/// taken over by the worker's loop, then serves many round trips and a
/// large transfer that fills the socket buffers both ways.
#[test]
fn a_socket_taken_over_echoes_round_trips_and_large_writes() {
    let rt = tokio_rt();
    let engine = Engine::start(1, Some(rt.handle().clone())).unwrap();
    let (on_worker_tx, on_worker_rx) = mpsc::channel();
    let (mut client, accepted) = loopback(&rt);
    client.set_read_timeout(Some(WAIT)).unwrap();
    engine.spawn(async move {
        let mut s = TcpStream::from_tokio(accepted).unwrap();
        on_worker_tx.send(s.on_worker()).unwrap();
        let mut buf = vec![0u8; 4096];
        loop {
            let n = s.read(&mut buf).await.unwrap();
            if n == 0 {
                let _ = s.shutdown().await;
                return;
            }
            s.write_all(&buf[..n]).await.unwrap();
        }
    });
    assert!(
        on_worker_rx.recv_timeout(WAIT).unwrap(),
        "not on the worker's loop"
    );
    for i in 0..1000u32 {
        client.write_all(&i.to_be_bytes()).unwrap();
        let mut got = [0u8; 4];
        client.read_exact(&mut got).unwrap();
        assert_eq!(u32::from_be_bytes(got), i);
    }
    // 8 MiB: more than both directions' socket buffers hold, so the
    // echo's writes wait for writability while the client still sends.
    let big: Vec<u8> = (0..8 << 20).map(|i| (i % 251) as u8).collect();
    let mut writer = client.try_clone().unwrap();
    let sent = big.clone();
    let w = std::thread::spawn(move || {
        writer.write_all(&sent).unwrap();
        writer.shutdown(std::net::Shutdown::Write).unwrap();
    });
    let mut back = Vec::new();
    client.read_to_end(&mut back).unwrap();
    w.join().unwrap();
    assert_eq!(back.len(), big.len());
    assert!(back == big, "echoed bytes differ");
}

#[test]
fn off_a_worker_a_socket_stays_on_tokio() {
    let rt = tokio_rt();
    rt.block_on(async {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let c = tokio::net::TcpStream::connect(l.local_addr().unwrap())
            .await
            .unwrap();
        let s = TcpStream::from_tokio(c).unwrap();
        assert!(!s.on_worker());
    });
}

/// Bytes and the peer's close that arrive together come as one event: the
/// short read that takes the bytes must not hide the close from the next
/// wait (it would wait forever).
#[test]
fn a_close_that_came_with_the_last_bytes_is_seen() {
    let rt = tokio_rt();
    let engine = Engine::start(1, Some(rt.handle().clone())).unwrap();
    let (mut client, accepted) = loopback(&rt);
    let (armed_tx, armed_rx) = mpsc::channel();
    let (tx, rx) = mpsc::channel();
    engine.spawn(async move {
        let s = TcpStream::from_tokio(accepted).unwrap();
        let mut buf = bytes::BytesMut::with_capacity(4096);
        // Nothing yet: the readiness the socket started with is used up.
        let first = s.try_read_buf(&mut buf).unwrap_err();
        assert_eq!(first.kind(), std::io::ErrorKind::WouldBlock);
        armed_tx.send(()).unwrap();
        loop {
            std::future::poll_fn(|cx| s.poll_read_ready(cx))
                .await
                .unwrap();
            match s.try_read_buf(&mut buf) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => panic!("{e}"),
            }
        }
        tx.send(buf.len()).unwrap();
    });
    armed_rx.recv_timeout(WAIT).unwrap();
    // Holds the (only) worker while the bytes and the close arrive, so
    // that its loop sees them in one event.
    let (busy_tx, busy_rx) = mpsc::channel();
    engine.spawn(async move {
        busy_tx.send(()).unwrap();
        std::thread::sleep(Duration::from_millis(200));
    });
    busy_rx.recv_timeout(WAIT).unwrap();
    client.write_all(b"0123456789").unwrap();
    client.shutdown(std::net::Shutdown::Write).unwrap();
    assert_eq!(rx.recv_timeout(WAIT).expect("the close was never seen"), 10);
}

/// A two-worker engine, a client connected to it, and the accepted end
/// taken over on worker 0 (its first task; tasks are spawned on the
/// workers in turn, so the caller's next one runs on worker 1), handed to
/// whoever awaits the receiver.
fn socket_of_worker_0() -> (
    tokio::runtime::Runtime,
    Engine,
    std::net::TcpStream,
    tokio::sync::oneshot::Receiver<TcpStream>,
) {
    let rt = tokio_rt();
    let engine = Engine::start(2, Some(rt.handle().clone())).unwrap();
    let (client, accepted) = loopback(&rt);
    client.set_read_timeout(Some(WAIT)).unwrap();
    let (hand_tx, hand_rx) = tokio::sync::oneshot::channel();
    engine.spawn(async move {
        let s = TcpStream::from_tokio(accepted).unwrap();
        assert!(s.on_this_worker());
        hand_tx.send(s).unwrap();
    });
    (rt, engine, client, hand_rx)
}

/// A socket handed to a session of another worker moves to that worker's
/// loop when adopted, and keeps working there.
#[test]
fn an_adopted_socket_moves_to_the_callers_loop() {
    let (_rt, engine, mut client, hand_rx) = socket_of_worker_0();
    let (tx, rx) = mpsc::channel();
    engine.spawn(async move {
        let mut s = hand_rx.await.unwrap();
        let before = s.on_this_worker();
        s.adopt();
        let after = s.on_this_worker();
        let mut buf = [0u8; 5];
        s.read_exact(&mut buf).await.unwrap();
        s.write_all(&buf).await.unwrap();
        tx.send((
            before,
            after,
            std::thread::current().name().map(String::from),
        ))
        .unwrap();
    });
    client.write_all(b"hello").unwrap();
    let mut back = [0u8; 5];
    client.read_exact(&mut back).unwrap();
    assert_eq!(&back, b"hello");
    let (before, after, thread) = rx.recv_timeout(WAIT).unwrap();
    assert_eq!(thread.as_deref(), Some("lagrouter-worker-1"));
    assert!(!before, "the socket was on worker 1's loop before adopt");
    assert!(after, "adopt did not move the socket to worker 1's loop");
}

/// A socket read from another loop's thread (a server connection of one
/// loop checked out by a session of another, not moved): its reader waits
/// in the shared waker, not the loop's own slot, and every read wakes it.
#[test]
fn a_socket_read_from_another_loops_thread_wakes_its_reader() {
    let (_rt, engine, mut client, hand_rx) = socket_of_worker_0();
    let (tx, rx) = mpsc::channel();
    engine.spawn(async move {
        let mut s = hand_rx.await.unwrap();
        tx.send(s.on_this_worker()).unwrap();
        let mut buf = [0u8; 4];
        for _ in 0..200 {
            s.read_exact(&mut buf).await.unwrap();
            s.write_all(&buf).await.unwrap();
        }
    });
    assert!(
        !rx.recv_timeout(WAIT).unwrap(),
        "the socket is on the reader's own loop"
    );
    for i in 0..200u32 {
        // The reader waits before each message arrives.
        if i % 20 == 0 {
            std::thread::sleep(Duration::from_millis(5));
        }
        client.write_all(&i.to_be_bytes()).unwrap();
        let mut got = [0u8; 4];
        client.read_exact(&mut got).unwrap();
        assert_eq!(u32::from_be_bytes(got), i);
    }
}

/// A writer that waits for room is woken by writability alone: the task
/// reads nothing, so no read event can wake it instead.
#[test]
fn a_waiting_writer_is_woken_when_the_peer_reads() {
    let rt = tokio_rt();
    let engine = Engine::start(1, Some(rt.handle().clone())).unwrap();
    let (mut client, accepted) = loopback(&rt);
    client.set_read_timeout(Some(WAIT)).unwrap();
    let big: Vec<u8> = (0..8 << 20).map(|i| (i % 253) as u8).collect();
    let sent = big.clone();
    let (tx, rx) = mpsc::channel();
    engine.spawn(async move {
        let mut s = TcpStream::from_tokio(accepted).unwrap();
        let on_worker = s.on_worker();
        s.write_all(&sent).await.unwrap();
        s.shutdown().await.unwrap();
        tx.send(on_worker).unwrap();
    });
    // The writer fills both socket buffers and waits.
    std::thread::sleep(Duration::from_millis(200));
    assert!(rx.try_recv().is_err(), "8 MiB did not fill the socket");
    let mut back = Vec::new();
    client.read_to_end(&mut back).unwrap();
    assert!(back == big, "got {} of {} bytes", back.len(), big.len());
    assert!(rx.recv_timeout(WAIT).unwrap(), "not on the worker's loop");
}

/// A socket the worker's epoll set refuses stays on tokio's driver and
/// is served from there: the client is not dropped.
#[test]
fn a_socket_the_loop_refuses_is_served_from_tokio() {
    let rt = tokio_rt();
    let engine = Engine::start(1, Some(rt.handle().clone())).unwrap();
    let (mut client, accepted) = loopback(&rt);
    client.set_read_timeout(Some(WAIT)).unwrap();
    let (tx, rx) = mpsc::channel();
    engine.spawn(async move {
        super::tcp::REFUSE_NEXT_REGISTRATION.set(true);
        let mut s = TcpStream::from_tokio(accepted).unwrap();
        let refused = !super::tcp::REFUSE_NEXT_REGISTRATION.get();
        let mut buf = [0u8; 5];
        s.read_exact(&mut buf).await.unwrap();
        s.write_all(&buf).await.unwrap();
        tx.send((refused, s.on_worker())).unwrap();
    });
    client.write_all(b"hello").unwrap();
    let mut back = [0u8; 5];
    client.read_exact(&mut back).unwrap();
    assert_eq!(
        &back, b"hello",
        "the refused socket carried bytes both ways"
    );
    let (refused, on_worker) = rx.recv_timeout(WAIT).unwrap();
    assert!(refused, "the registration was refused");
    assert!(!on_worker, "the refused socket is on tokio's driver");
}

#[test]
fn the_loops_clock_is_read_once_per_turn_and_moves_with_the_turns() {
    use std::time::Instant;
    // Off a worker: the clock itself.
    let before = Instant::now();
    let off = super::now();
    assert!(off >= before && off <= Instant::now());

    let engine = Engine::start(1, None).unwrap();
    let (wake_tx, wake_rx) = tokio::sync::oneshot::channel::<()>();
    let (tx, rx) = mpsc::channel();
    engine.spawn(async move {
        // Within one poll: one reading, whatever time passes.
        let first = super::now();
        std::thread::sleep(Duration::from_millis(20));
        let same_turn = super::now();
        wake_rx.await.unwrap();
        // Woken by another thread after 100 ms: a later turn's reading.
        let next_turn = super::now();
        tx.send((first, same_turn, next_turn)).unwrap();
    });
    std::thread::sleep(Duration::from_millis(100));
    let woken_at = Instant::now();
    wake_tx.send(()).unwrap();
    let (first, same_turn, next_turn) = rx.recv_timeout(WAIT).unwrap();
    let done = Instant::now();
    assert_eq!(first, same_turn, "one turn, one reading");
    assert!(
        next_turn >= woken_at && next_turn <= done,
        "the turn after the wake-up reads the clock anew: {:?} after the wake-up",
        next_turn.saturating_duration_since(woken_at)
    );
}

/// A task that wakes itself in its last poll leaves its key in the run
/// queue; the next task spawned takes that key and is polled once more for
/// nothing. A waker of a finished task, woken on the worker or from
/// another thread, does nothing.
#[test]
fn a_finished_tasks_key_and_wakers_are_harmless() {
    use std::future::poll_fn;
    use std::sync::Mutex;
    use std::task::{Poll, Waker};

    let engine = Arc::new(Engine::start(1, None).unwrap());
    let a_polls = Arc::new(AtomicUsize::new(0));
    let b_polls = Arc::new(AtomicUsize::new(0));
    let a_waker: Arc<Mutex<Option<Waker>>> = Arc::default();
    let (go_tx, go_rx) = tokio::sync::oneshot::channel::<u32>();
    let (done_tx, done_rx) = mpsc::channel();
    let (a, b, aw, e) = (
        a_polls.clone(),
        b_polls.clone(),
        a_waker.clone(),
        engine.clone(),
    );
    // The parent spawns A then X on its own worker: they run in that
    // order, in one turn.
    engine.spawn(async move {
        let aw2 = aw.clone();
        e.spawn(poll_fn(move |cx| {
            a.fetch_add(1, Ordering::SeqCst);
            *aw2.lock().unwrap() = Some(cx.waker().clone());
            cx.waker().wake_by_ref();
            Poll::Ready(())
        }));
        let e2 = e.clone();
        e.spawn(async move {
            // A is done: its waker, woken here, queues nothing.
            let w = aw.lock().unwrap().clone().expect("A ran first");
            w.wake_by_ref();
            // B takes the key A left (the last one freed).
            let mut go = Some(go_rx);
            e2.spawn(poll_fn(move |cx| {
                b.fetch_add(1, Ordering::SeqCst);
                match std::pin::Pin::new(go.as_mut().unwrap()).poll(cx) {
                    Poll::Ready(v) => {
                        done_tx.send(v.unwrap()).unwrap();
                        Poll::Ready(())
                    }
                    Poll::Pending => Poll::Pending,
                }
            }));
        });
    });
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(a_polls.load(Ordering::SeqCst), 1, "A is polled once");
    assert_eq!(
        b_polls.load(Ordering::SeqCst),
        2,
        "B is polled for its own wake and for A's key"
    );
    // From another thread: A's waker still does nothing.
    let w = a_waker.lock().unwrap().take().unwrap();
    std::thread::spawn(move || w.wake()).join().unwrap();
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(a_polls.load(Ordering::SeqCst), 1, "A is not polled again");
    go_tx.send(9).unwrap();
    assert_eq!(done_rx.recv_timeout(WAIT).unwrap(), 9, "B ran to its end");
    assert_eq!(b_polls.load(Ordering::SeqCst), 3);
}
