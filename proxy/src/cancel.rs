//! CancelRequest routing: the proxy hands each client its own key and
//! forwards a cancel to whichever server connection runs that client's
//! query at the moment.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use bytes::{BufMut, BytesMut};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::auth::scram::constant_time_eq;

/// The server connection a client is attached to.
#[derive(Debug, Clone)]
pub struct CancelTarget {
    pub addr: String,
    pub pid: i32,
    pub secret: Vec<u8>,
}

/// One client's cancel key and current target.
#[derive(Debug)]
pub struct CancelSlot {
    secret: i32,
    /// The server connection the client was last attached to.
    target: Mutex<Option<Arc<CancelTarget>>>,
    /// Whether the client is attached to `target` now. A release only
    /// clears this (no lock), and an attach to the connection already in
    /// `target` only sets it: two lock round trips a transaction fewer.
    /// `target` is written before this is set, and a cancel reads both
    /// under the lock, so a cancel that sees it set sees its target.
    attached: AtomicBool,
    /// Wakes a wait the proxy runs itself (`lagrouter.wait_replicas`).
    pub local: tokio::sync::Notify,
}

/// Every connected client's cancel key.
#[derive(Default)]
pub struct CancelRegistry {
    slots: Mutex<HashMap<i32, Arc<CancelSlot>>>,
}

/// Removes the client's key when its session ends.
pub struct CancelKey {
    pub pid: i32,
    pub secret: i32,
    pub slot: Arc<CancelSlot>,
    registry: Arc<CancelRegistry>,
    /// The address of what the session last put in the slot's `target`
    /// (0: nothing), compared without the lock. An address, not a second
    /// reference: only the session writes `target`, so the allocation at
    /// this address is the one the slot holds, alive and not reused, and
    /// an equal address is the same target. (A reference would cost a
    /// count taken and one given back at every change of connection.)
    current: usize,
}

impl CancelKey {
    /// The client now runs on the connection of `target`.
    pub fn attach(&mut self, target: &Arc<CancelTarget>) {
        let at = Arc::as_ptr(target) as usize;
        if self.current != at {
            let mut t = self.slot.target.lock().unwrap_or_else(|p| p.into_inner());
            *t = Some(target.clone());
            self.current = at;
        }
        self.slot.attached.store(true, Ordering::Release);
    }

    /// The client runs on no server connection now: a cancel is ignored.
    pub fn detach(&mut self) {
        self.slot.attached.store(false, Ordering::Release);
    }
}

impl Drop for CancelKey {
    fn drop(&mut self) {
        if let Ok(mut s) = self.registry.slots.lock() {
            s.remove(&self.pid);
        }
    }
}

impl CancelRegistry {
    /// Issues a new random key for a client.
    pub fn register(self: &Arc<Self>) -> CancelKey {
        let mut slots = self.slots.lock().expect("cancel registry lock");
        loop {
            let pid: i32 = rand::random::<i32>() & 0x7fff_ffff;
            if pid == 0 || slots.contains_key(&pid) {
                continue;
            }
            let secret: i32 = rand::random();
            let slot = Arc::new(CancelSlot {
                secret,
                target: Mutex::new(None),
                attached: AtomicBool::new(false),
                local: tokio::sync::Notify::new(),
            });
            slots.insert(pid, slot.clone());
            return CancelKey {
                pid,
                secret,
                slot,
                registry: self.clone(),
                current: 0,
            };
        }
    }

    /// Forwards a cancel if the key matches a client running a query.
    /// Unknown keys are ignored silently, as PostgreSQL does.
    pub async fn cancel(&self, pid: i32, secret: &[u8]) {
        let target = {
            let slots = match self.slots.lock() {
                Ok(s) => s,
                Err(_) => return,
            };
            match slots.get(&pid) {
                Some(slot) if constant_time_eq(&slot.secret.to_be_bytes(), secret) => {
                    // Only a wait in progress is woken; no permit is kept.
                    slot.local.notify_waiters();
                    // `attached` read under the lock: an attach to another
                    // connection writes `target` (under it) before it sets
                    // `attached`, so a cancel that holds the lock never
                    // pairs the old target with the new attachment.
                    let t = slot.target.lock().ok();
                    t.and_then(|t| t.clone().filter(|_| slot.attached.load(Ordering::Acquire)))
                }
                _ => None,
            }
        };
        let Some(t) = target else { return };
        let mut msg = BytesMut::new();
        msg.put_i32((12 + t.secret.len()) as i32);
        msg.put_i32(crate::protocol::frontend::CANCEL_REQUEST);
        msg.put_i32(t.pid);
        msg.put_slice(&t.secret);
        match TcpStream::connect(&t.addr).await {
            Ok(mut s) => {
                if let Err(e) = s.write_all(&msg).await {
                    tracing::warn!(addr = %t.addr, error = %e, "forwarding cancel request failed");
                }
            }
            Err(e) => {
                tracing::warn!(addr = %t.addr, error = %e, "cannot connect to forward cancel request")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;
    use tokio::net::TcpListener;

    /// What a cancel with the client's key forwards to `node`: the backend
    /// pid it names, or `None` when nothing arrives.
    async fn forwarded(reg: &CancelRegistry, key: &CancelKey, node: &TcpListener) -> Option<i32> {
        reg.cancel(key.pid, &key.secret.to_be_bytes()).await;
        let accept = tokio::time::timeout(std::time::Duration::from_millis(200), node.accept());
        let (mut s, _) = accept.await.ok()?.ok()?;
        let mut msg = [0u8; 16];
        s.read_exact(&mut msg).await.ok()?;
        Some(i32::from_be_bytes(msg[8..12].try_into().unwrap()))
    }

    #[tokio::test]
    async fn a_cancel_reaches_only_the_connection_attached_now() {
        let node = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = node.local_addr().unwrap().to_string();
        let target = |pid| {
            Arc::new(CancelTarget {
                addr: addr.clone(),
                pid,
                secret: vec![0, 0, 0, 7],
            })
        };
        let (a, b) = (target(11), target(22));
        let reg = Arc::new(CancelRegistry::default());
        let mut key = reg.register();
        assert_eq!(forwarded(&reg, &key, &node).await, None, "never attached");
        key.attach(&a);
        assert_eq!(forwarded(&reg, &key, &node).await, Some(11));
        key.detach();
        assert_eq!(forwarded(&reg, &key, &node).await, None, "released");
        // Back on the same connection: only the flag changes.
        key.attach(&a);
        assert_eq!(forwarded(&reg, &key, &node).await, Some(11));
        key.detach();
        key.attach(&b);
        assert_eq!(forwarded(&reg, &key, &node).await, Some(22));
        // A wrong secret forwards nothing.
        reg.cancel(key.pid, &(key.secret ^ 1).to_be_bytes()).await;
        let accept = tokio::time::timeout(std::time::Duration::from_millis(200), node.accept());
        assert!(accept.await.is_err(), "a wrong secret was forwarded");
    }
}
