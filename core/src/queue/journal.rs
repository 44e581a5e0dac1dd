//! The journal: one writer thread in front of a [`QueueStore`] that commits changes in the
//! order they were submitted, many at a time.
//!
//! A durable commit costs an fsync, which takes milliseconds. Producers waiting for
//! QUEUE_CONFIRM would each pay one if they committed alone; instead the writer takes every job
//! waiting when it becomes free and commits them together (group commit). So throughput grows
//! with the number of concurrent producers, and ordering is the submission order everywhere.
//!
//! The work is split so that the writer thread only writes: records are encoded by the thread
//! that submits them, and continuations (confirms, dispatch) run on a second thread, in
//! submission order, while the writer already commits the next batch.

use std::sync::Arc;
use std::sync::mpsc::{self, Receiver, Sender};
use std::thread;

use super::store::{Prepared, QueueStore, StoreError, StoreOp};

/// Most ops in one commit: bounds the latency a large batch adds to the first job in it.
const MAX_BATCH_OPS: usize = 8_192;

/// What runs after a job's commit, on the journal thread, with the commit's result.
pub type Continuation = Box<dyn FnOnce(Result<(), StoreError>) + Send>;

struct Job {
    ops: Vec<Prepared>,
    then: Option<Continuation>,
}

/// Continuations of one committed batch, with the batch's result.
type Done = (Result<(), StoreError>, Vec<Continuation>);

/// The handle to the journal thread. Dropping it waits until every job submitted so far is
/// committed and the store is closed, so a node that stops leaves its store closed: reopened at
/// once (by the same process, or after it exits) without finding it still in use or unclean.
pub struct Journal {
    store: Arc<dyn QueueStore>,
    /// `None` only while dropping: closing the channel is what stops the writer.
    jobs: Option<Sender<Job>>,
    writer: Option<thread::JoinHandle<()>>,
    /// Runs continuations; it stops once the writer has stopped.
    finisher: Option<thread::JoinHandle<()>>,
}

impl Journal {
    /// Starts the writer thread.
    pub fn start(store: Arc<dyn QueueStore>) -> std::io::Result<Journal> {
        let (jobs, rx) = mpsc::channel();
        let (done, finished) = mpsc::channel();
        let finisher = thread::Builder::new()
            .name("ganglion-confirm".into())
            .spawn(move || finish(finished))?;
        let writer = {
            let store = store.clone();
            thread::Builder::new()
                .name("ganglion-journal".into())
                .spawn(move || write(store, rx, done))?
        };
        Ok(Journal {
            store,
            jobs: Some(jobs),
            writer: Some(writer),
            finisher: Some(finisher),
        })
    }

    /// Queues changes without waiting (state changes whose loss in a crash only causes a
    /// redelivery).
    pub fn submit(&self, ops: Vec<StoreOp>) {
        if ops.is_empty() {
            return;
        }
        let ops = self.prepare(ops);
        self.send(Job { ops, then: None });
    }

    /// Queues changes and runs `then` once they are committed (or failed), after every
    /// continuation submitted before it.
    pub fn submit_then(
        &self,
        ops: Vec<StoreOp>,
        then: impl FnOnce(Result<(), StoreError>) + Send + 'static,
    ) {
        let ops = self.prepare(ops);
        self.send(Job {
            ops,
            then: Some(Box::new(then)),
        });
    }

    /// Encodes records here, on the submitting thread.
    fn prepare(&self, ops: Vec<StoreOp>) -> Vec<Prepared> {
        ops.into_iter()
            .map(|op| {
                let record = match &op {
                    StoreOp::Put(msg) => self.store.encode(msg),
                    StoreOp::Delete { .. } => None,
                };
                Prepared { op, record }
            })
            .collect()
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
        // The last handle can be dropped by a continuation, on the finisher thread: that thread
        // ends on its own once the continuation returns, after the writer has.
        let here = thread::current().id();
        for handle in [self.writer.take(), self.finisher.take()]
            .into_iter()
            .flatten()
        {
            if handle.thread().id() != here {
                let _ = handle.join();
            }
        }
    }
}

fn write(store: Arc<dyn QueueStore>, jobs: Receiver<Job>, done: Sender<Done>) {
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
        let ops: Vec<Prepared> = batch
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
        let continuations: Vec<Continuation> = batch.into_iter().filter_map(|j| j.then).collect();
        if !continuations.is_empty() {
            let _ = done.send((result, continuations));
        }
    }
}

/// Runs continuations, batch after batch, in submission order.
fn finish(batches: Receiver<Done>) {
    while let Ok((result, continuations)) = batches.recv() {
        for then in continuations {
            then(result.clone());
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
            journal.submit_then(vec![StoreOp::Delete { record: i as u64 }], move |result| {
                assert!(result.is_ok());
                assert!(store.load().is_ok());
                tx.send(i).unwrap();
            });
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

        fn commit(&self, ops: &[Prepared]) -> Result<(), StoreError> {
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
            journal.submit(vec![StoreOp::Delete { record: i as u64 }]);
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

        fn commit(&self, _ops: &[Prepared]) -> Result<(), StoreError> {
            Err(StoreError("disk full".into()))
        }
    }

    #[test]
    fn a_failed_commit_is_reported_to_its_continuation() {
        let journal = Journal::start(Arc::new(Failing)).unwrap();
        let (tx, rx) = channel();
        journal.submit_then(vec![StoreOp::Delete { record: 0 }], move |result| {
            tx.send(result).unwrap()
        });
        assert_eq!(rx.recv().unwrap(), Err(StoreError("disk full".into())));
    }
}
