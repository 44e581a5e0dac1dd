//! Where queued messages are kept: the [`QueueStore`] trait, and [`MemoryStore`] for tests and
//! for nodes that accept losing queues on restart. The durable store (redb) lives in the gateway.

use std::collections::BTreeMap;

use parking_lot::Mutex;

use super::message::StoredMessage;

/// One change to persist.
#[derive(Debug, Clone, PartialEq)]
pub enum StoreOp {
    /// Insert or replace the record of a message.
    Put(Box<StoredMessage>),
    /// Remove a message for good (acked, or deleted over HTTP), by its record key.
    Delete { record: u64 },
}

/// The store failed; the operation may or may not have been applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("queue store: {0}")]
pub struct StoreError(pub String);

/// A change on its way to the store, with the record it writes encoded in advance (by
/// [`QueueStore::encode`], on the thread that made the change, so the single writer thread
/// only writes).
#[derive(Debug, Clone, PartialEq)]
pub struct Prepared {
    pub op: StoreOp,
    /// The encoded record of a `Put`, for stores that write bytes.
    pub record: Option<Vec<u8>>,
}

/// Persistent storage for queue messages. Calls block; the journal runs them on its own thread.
pub trait QueueStore: Send + Sync + 'static {
    /// Every stored message, in any order.
    fn load(&self) -> Result<Vec<StoredMessage>, StoreError>;

    /// The bytes a `Put` of `msg` will write, if this store writes bytes. Called before the
    /// change reaches the writer thread.
    fn encode(&self, _msg: &StoredMessage) -> Option<Vec<u8>> {
        None
    }

    /// Applies `ops` atomically, in order, and returns only once they are on stable storage.
    fn commit(&self, ops: &[Prepared]) -> Result<(), StoreError>;
}

/// Keeps messages in memory: durable only as long as the process.
#[derive(Debug, Default)]
pub struct MemoryStore {
    messages: Mutex<BTreeMap<u64, StoredMessage>>,
}

impl QueueStore for MemoryStore {
    fn load(&self) -> Result<Vec<StoredMessage>, StoreError> {
        Ok(self.messages.lock().values().cloned().collect())
    }

    fn commit(&self, ops: &[Prepared]) -> Result<(), StoreError> {
        let mut messages = self.messages.lock();
        for Prepared { op, .. } in ops {
            match op {
                StoreOp::Put(msg) => {
                    messages.insert(msg.record, (**msg).clone());
                }
                StoreOp::Delete { record } => {
                    messages.remove(record);
                }
            }
        }
        Ok(())
    }
}
