//! CancelRequest routing: the proxy hands each client its own key and
//! forwards a cancel to whichever server connection runs that client's
//! query at the moment.

use std::collections::HashMap;
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
    target: Mutex<Option<Arc<CancelTarget>>>,
    /// Wakes a wait the proxy runs itself (`lagrouter.wait_replicas`).
    pub local: tokio::sync::Notify,
}

impl CancelSlot {
    /// Sets (attach) or clears (release) the target.
    pub fn set(&self, target: Option<Arc<CancelTarget>>) {
        if let Ok(mut t) = self.target.lock() {
            *t = target;
        }
    }
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
                local: tokio::sync::Notify::new(),
            });
            slots.insert(pid, slot.clone());
            return CancelKey {
                pid,
                secret,
                slot,
                registry: self.clone(),
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
                    slot.target.lock().ok().and_then(|t| t.clone())
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
