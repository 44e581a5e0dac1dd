//! The journal: one writer thread in front of a [`QueueStore`] that commits changes in the
//! order they were submitted, many at a time.
//!
//! A durable commit costs an fsync, which takes milliseconds. Producers waiting for
//! QUEUE_CONFIRM would each pay one if they committed alone; instead the writer takes every job
//! waiting when it becomes free and commits them together (group commit), then runs each job's
//! continuation in submission order. So throughput grows with the number of concurrent
//! producers, and ordering is the submission order everywhere.

use std::sync::Arc;
use std::sync::mpsc::{self, Receiver, Sender};
use std::thread;

use super::store::{QueueStore, StoreError, StoreOp};

/// Most ops in one commit: bounds the latency a large batch adds to the first job in it.
const MAX_BATCH_OPS: usize = 8_192;

/// What runs after a job's commit, on the journal thread, with the commit's result.
pub type Continuation = Box<dyn FnOnce(Result<(), StoreError>) + Send>;

struct Job {
    ops: Vec<StoreOp>,
    then: Option<Continuation>,
}

/// The handle to the journal thread. Dropping it waits until every job submitted so far is
/// committed and the store is closed, so a node that stops leaves its store closed: reopened at
/// once (by the same process, or after it exits) without finding it still in use or unclean.
pub struct Journal {
    /// `None` only while dropping: closing the channel is what stops the writer.
    jobs: Option<Sender<Job>>,
    writer: Option<thread::JoinHandle<()>>,
}

impl Journal {
    /// Starts the writer thread.
    pub fn start(store: Arc<dyn QueueStore>) -> std::io::Result<Journal> {
        let (jobs, rx) = mpsc::channel();
        let writer = thread::Builder::new()
            .name("ganglion-journal".into())
            .spawn(move || run(store, rx))?;
        Ok(Journal {
            jobs: Some(jobs),
            writer: Some(writer),
        })
    }

    /// Queues changes without waiting (state changes whose loss in a crash only causes a
    /// redelivery).
    pub fn submit(&self, ops: Vec<StoreOp>) {
        if ops.is_empty() {
            return;
        }
        self.send(Job { ops, then: None });
    }

    /// Queues changes and runs `then` once they are committed (or failed), after every
    /// continuation submitted before it.
    pub fn submit_then(
        &self,
        ops: Vec<StoreOp>,
        then: impl FnOnce(Result<(), StoreError>) + Send + 'static,
    ) {
        self.send(Job {
            ops,
            then: Some(Box::new(then)),
        });
    }

    fn send(&self, job: Job) {
        let refused = match &self.jobs {
            Some(jobs) => jobs.send(job).err().map(|mpsc::SendError(job)| job),
            None => Some(job),
        };
        // The writer is gone (it only stops when the handle is dropped): fail the job.
        if let Some(then) = refused.and_then(|job| job.then) {
            then(Err(StoreError("the queue journal has stopped".into())));
        }
    }
}

impl Drop for Journal {
    fn drop(&mut self) {
        drop(self.jobs.take());
        let Some(writer) = self.writer.take() else {
            return;
        };
        // The last handle can be dropped by a continuation, on the writer thread itself: that
        // thread ends on its own once the continuation returns.
        if writer.thread().id() != thread::current().id() {
            let _ = writer.join();
        }
    }
}

fn run(store: Arc<dyn QueueStore>, jobs: Receiver<Job>) {
    while let Ok(first) = jobs.recv() {
        let mut batch = vec![first];
        let mut ops_len = batch[0].ops.len();
        while ops_len < MAX_BATCH_OPS {
            match jobs.try_recv() {
                Ok(job) => {
                    ops_len += job.ops.len();
                    batch.push(job);
                }
                Err(_) => break,
            }
        }
        let ops: Vec<StoreOp> = batch
            .iter_mut()
            .flat_map(|j| std::mem::take(&mut j.ops))
            .collect();
        let result = if ops.is_empty() {
            Ok(())
        } else {
            store.commit(&ops)
        };
        if let Err(error) = &result {
            tracing::error!(%error, ops = ops.len(), "queue store commit failed");
        }
        for job in batch {
            if let Some(then) = job.then {
                then(result.clone());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::queue::MemoryStore;
    use std::sync::mpsc::channel;

    #[test]
    fn continuations_run_in_submission_order_after_commit() {
        let store = Arc::new(MemoryStore::default());
        let journal = Journal::start(store.clone()).unwrap();
        let (tx, rx) = channel();
        for i in 0..100 {
            let tx = tx.clone();
            let store = store.clone();
            journal.submit_then(
                vec![StoreOp::Delete {
                    queue: "q".into(),
                    id: i.to_string(),
                }],
                move |result| {
                    assert!(result.is_ok());
                    assert!(store.load().is_ok());
                    tx.send(i).unwrap();
                },
            );
        }
        let order: Vec<i32> = (0..100).map(|_| rx.recv().unwrap()).collect();
        assert_eq!(order, (0..100).collect::<Vec<_>>());
    }

    /// Counts the ops it commits.
    #[derive(Default)]
    struct Counting(std::sync::atomic::AtomicUsize);

    impl QueueStore for Counting {
        fn load(&self) -> Result<Vec<crate::queue::StoredMessage>, StoreError> {
            Ok(Vec::new())
        }

        fn commit(&self, ops: &[StoreOp]) -> Result<(), StoreError> {
            self.0
                .fetch_add(ops.len(), std::sync::atomic::Ordering::SeqCst);
            Ok(())
        }
    }

    #[test]
    fn dropping_the_journal_commits_what_it_holds_and_releases_the_store() {
        let store = Arc::new(Counting::default());
        let journal = Journal::start(store.clone()).unwrap();
        for i in 0..1000 {
            journal.submit(vec![StoreOp::Delete {
                queue: "q".into(),
                id: i.to_string(),
            }]);
        }
        drop(journal);
        assert_eq!(store.0.load(std::sync::atomic::Ordering::SeqCst), 1000);
        // The writer thread held the only other reference, and has let it go.
        assert_eq!(Arc::strong_count(&store), 1);
    }

    struct Failing;

    impl QueueStore for Failing {
        fn load(&self) -> Result<Vec<crate::queue::StoredMessage>, StoreError> {
            Ok(Vec::new())
        }

        fn commit(&self, _ops: &[StoreOp]) -> Result<(), StoreError> {
            Err(StoreError("disk full".into()))
        }
    }

    #[test]
    fn a_failed_commit_is_reported_to_its_continuation() {
        let journal = Journal::start(Arc::new(Failing)).unwrap();
        let (tx, rx) = channel();
        journal.submit_then(
            vec![StoreOp::Delete {
                queue: "q".into(),
                id: "x".into(),
            }],
            move |result| tx.send(result).unwrap(),
        );
        assert_eq!(rx.recv().unwrap(), Err(StoreError("disk full".into())));
    }
}
