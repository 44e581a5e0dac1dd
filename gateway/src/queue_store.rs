//! The durable queue store: one redb file (`<queue.data_dir>/queues.redb`) with a table of
//! messages keyed by their record number, each a MessagePack record. Each commit is a redb write transaction with immediate
//! durability, which returns only after the data is synced to disk.

use std::path::{Path, PathBuf};

use ganglion_core::queue::{Prepared, QueueStore, StoreError, StoreOp, StoredMessage};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

/// Record key → MessagePack record. Keys increase with message creation, so new messages are
/// appended at the right edge of the tree and a commit dirties few pages.
const MESSAGES: TableDefinition<u64, &[u8]> = TableDefinition::new("messages");

/// The file inside the data directory.
pub const FILE_NAME: &str = "queues.redb";

/// Queue messages in a redb database.
pub struct RedbStore {
    db: Database,
    path: PathBuf,
}

/// Why the store could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("cannot create the queue data directory {path}: {source} (set queue.data_dir)")]
    Directory {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot open the queue store {path}: {source} (is another ganglion using it?)")]
    Database {
        path: PathBuf,
        source: Box<redb::Error>,
    },
}

impl RedbStore {
    /// Opens (creating if needed) the store in `dir`.
    pub fn open(dir: &Path) -> Result<RedbStore, OpenError> {
        std::fs::create_dir_all(dir).map_err(|source| OpenError::Directory {
            path: dir.to_owned(),
            source,
        })?;
        let path = dir.join(FILE_NAME);
        let fail = |e: redb::Error| OpenError::Database {
            path: path.clone(),
            source: Box::new(e),
        };
        let db = Database::create(&path).map_err(|e| fail(e.into()))?;
        // Create the table up front, so reading an empty store needs no special case.
        let txn = db.begin_write().map_err(|e| fail(e.into()))?;
        txn.open_table(MESSAGES).map_err(|e| fail(e.into()))?;
        txn.commit().map_err(|e| fail(e.into()))?;
        Ok(RedbStore { db, path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Records are MessagePack maps with named fields: compact, fast, and readable by any
/// MessagePack tool when a store needs inspecting.
fn encode(msg: &StoredMessage) -> Result<Vec<u8>, StoreError> {
    rmp_serde::to_vec_named(msg).map_err(|e| StoreError(format!("encoding a message: {e}")))
}

fn backend(e: impl Into<redb::Error>) -> StoreError {
    StoreError(e.into().to_string())
}

impl QueueStore for RedbStore {
    fn load(&self) -> Result<Vec<StoredMessage>, StoreError> {
        let txn = self.db.begin_read().map_err(backend)?;
        let table = txn.open_table(MESSAGES).map_err(backend)?;
        let mut messages = Vec::new();
        for row in table.iter().map_err(backend)? {
            let (key, value) = row.map_err(backend)?;
            match rmp_serde::from_slice::<StoredMessage>(value.value()) {
                Ok(msg) => messages.push(msg),
                Err(error) => {
                    let record = key.value();
                    tracing::error!(%error, record, "skipping an unreadable queue message");
                }
            }
        }
        Ok(messages)
    }

    fn encode(&self, msg: &StoredMessage) -> Option<Vec<u8>> {
        encode(msg).ok()
    }

    fn commit(&self, ops: &[Prepared]) -> Result<(), StoreError> {
        let txn = self.db.begin_write().map_err(backend)?;
        {
            let mut table = txn.open_table(MESSAGES).map_err(backend)?;
            for Prepared { op, record } in ops {
                match op {
                    StoreOp::Put(msg) => {
                        let encoded;
                        let bytes = match record {
                            Some(bytes) => bytes,
                            None => {
                                encoded = encode(msg)?;
                                &encoded
                            }
                        };
                        table
                            .insert(msg.record, bytes.as_slice())
                            .map_err(backend)?;
                    }
                    StoreOp::Delete { record } => {
                        table.remove(*record).map_err(backend)?;
                    }
                }
            }
        }
        txn.commit().map_err(backend)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ganglion_core::Value;
    use ganglion_core::queue::{ConsumerIdentity, MessageState};

    fn message(id: &str, record: u64, state: MessageState) -> StoredMessage {
        StoredMessage {
            id: id.into(),
            queue: "jobs".into(),
            nonce: Value::Int(7),
            target: Value::Object(Default::default()),
            payload: Value::Array(vec![
                Value::Float(1.0),
                Value::from("x"),
                Value::from_u64(u64::MAX),
            ]),
            enqueued_at: 10,
            seq: 3,
            record,
            deliveries: 2,
            last_consumer: Some(ConsumerIdentity {
                application_id: "w".into(),
                client_id: "c".into(),
            }),
            state,
            trace: None,
        }
    }

    #[test]
    fn messages_survive_reopening_exactly() {
        let dir = std::env::temp_dir().join(format!("ganglion-store-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let a = message("a", 1, MessageState::InFlight { delivered_at: 11 });
        let b = message("b", 2, MessageState::Parked { parked_at: 12 });
        {
            let store = RedbStore::open(&dir).unwrap();
            store
                .commit(&[
                    Prepared {
                        op: StoreOp::Put(Box::new(a.clone())),
                        record: store.encode(&a),
                    },
                    // A record not encoded in advance is encoded by the commit.
                    Prepared {
                        op: StoreOp::Put(Box::new(b.clone())),
                        record: None,
                    },
                ])
                .unwrap();
            store
                .commit(&[Prepared {
                    op: StoreOp::Delete { record: 2 },
                    record: None,
                }])
                .unwrap();
        }
        let store = RedbStore::open(&dir).unwrap();
        assert_eq!(store.load().unwrap(), vec![a]);
        drop(store);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
