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
    /// Remove a message for good (acked, or deleted over HTTP).
    Delete { queue: String, id: String },
}

/// The store failed; the operation may or may not have been applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("queue store: {0}")]
pub struct StoreError(pub String);

/// Persistent storage for queue messages. Calls block; the journal runs them on its own thread.
pub trait QueueStore: Send + Sync + 'static {
    /// Every stored message, in any order.
    fn load(&self) -> Result<Vec<StoredMessage>, StoreError>;

    /// Applies `ops` atomically, in order, and returns only once they are on stable storage.
    fn commit(&self, ops: &[StoreOp]) -> Result<(), StoreError>;
}

/// Keeps messages in memory: durable only as long as the process.
#[derive(Debug, Default)]
pub struct MemoryStore {
    messages: Mutex<BTreeMap<(String, String), StoredMessage>>,
}

impl QueueStore for MemoryStore {
    fn load(&self) -> Result<Vec<StoredMessage>, StoreError> {
        Ok(self.messages.lock().values().cloned().collect())
    }

    fn commit(&self, ops: &[StoreOp]) -> Result<(), StoreError> {
        let mut messages = self.messages.lock();
        for op in ops {
            match op {
                StoreOp::Put(msg) => {
                    messages.insert((msg.queue.clone(), msg.id.clone()), (**msg).clone());
                }
                StoreOp::Delete { queue, id } => {
                    messages.remove(&(queue.clone(), id.clone()));
                }
            }
        }
        Ok(())
    }
}
