//! The bounded outbound mailbox of one connection (SPEC §4.9).
//!
//! The router pushes encoded frames without ever waiting; the connection's writer task takes
//! everything queued at once and writes it as one batch (write coalescing). The bound is in
//! bytes: a frame is always accepted into an empty mailbox, and a push that would take a
//! non-empty mailbox past the bound marks the connection a slow consumer instead.

use std::collections::VecDeque;

use bytes::Bytes;
use ganglion_codecs::Codec;
use ganglion_core::frame::{Encoding, OutFrame, Outgoing};
use ganglion_core::session::Outbox;
use ganglion_core::telemetry;
use parking_lot::Mutex;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// A close to send after the final frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Close {
    pub code: u16,
    pub reason: String,
}

impl Close {
    /// The websocket close reason is capped at 123 bytes, cut at a character boundary.
    pub fn new(code: u16, reason: &str) -> Close {
        let mut end = reason.len().min(123);
        while !reason.is_char_boundary(end) {
            end -= 1;
        }
        Close {
            code,
            reason: reason[..end].to_owned(),
        }
    }
}

/// What the writer gets from one [`Mailbox::next_batch`].
#[derive(Debug, Default)]
pub struct Batch {
    /// The frames, oldest first. Hand the emptied deque back to the next
    /// [`Mailbox::next_batch`]: its allocation then serves the next burst.
    pub frames: VecDeque<Bytes>,
    /// The mailbox is finished: write `frames`, then this close (if any), then stop.
    pub finish: Option<Option<Close>>,
}

#[derive(Debug)]
enum Status {
    Open,
    /// A push went past the bound; the queue was dropped and the session must end.
    Overflowed,
    /// The final frame is queued; nothing else is accepted.
    Finishing(Option<Close>),
    /// The writer has taken the final batch.
    Done,
}

/// The most frames' room a connection keeps between bursts: 1024 × 32 bytes, small beside the
/// 1 MiB of frames a mailbox may hold, and only kept by a connection that had such a burst.
const SPARE_FRAMES: usize = 1024;

#[derive(Debug)]
struct State {
    queue: VecDeque<Bytes>,
    bytes: usize,
    status: Status,
}

/// One connection's outbound queue.
pub struct Mailbox {
    /// The connection's codec; frames are encoded at push time so the bound counts real bytes.
    codec: &'static dyn Codec,
    limit: usize,
    state: Mutex<State>,
    /// Wakes the writer when frames arrive or the mailbox finishes.
    writable: Notify,
    /// Cancelled when the connection became a slow consumer.
    overflowed: CancellationToken,
}

// === impl Mailbox ===

impl Mailbox {
    pub fn new(codec: &'static dyn Codec, limit: usize) -> Mailbox {
        Mailbox {
            codec,
            limit,
            state: Mutex::new(State {
                queue: VecDeque::new(),
                bytes: 0,
                status: Status::Open,
            }),
            writable: Notify::new(),
            overflowed: CancellationToken::new(),
        }
    }

    fn encode(&self, frame: &Outgoing) -> Bytes {
        self.codec.encode_once(frame)
    }

    /// Resolves once the connection has become a slow consumer.
    pub async fn overflowed(&self) {
        self.overflowed.cancelled().await
    }

    /// Queues the last frame and the close that follows it; later pushes are refused. After
    /// an overflow the queue is already empty, so the final frame is always accepted.
    pub fn finish(&self, last: Option<OutFrame>, close: Option<Close>) {
        if let Some(frame) = &last {
            telemetry::frames_sent(frame.op).increment(1);
        }
        let bytes = last.map(|f| self.codec.encode(&f));
        let mut state = self.state.lock();
        if matches!(state.status, Status::Finishing(_) | Status::Done) {
            return;
        }
        if let Some(bytes) = bytes {
            state.bytes += bytes.len();
            state.queue.push_back(bytes);
        }
        state.status = Status::Finishing(close);
        drop(state);
        self.writable.notify_one();
    }

    /// Waits for frames and takes all of them. `spare` (empty) becomes the queue the next
    /// frames go to, so a busy connection reuses two allocations instead of growing a new queue
    /// for every burst; a spare grown past [`SPARE_FRAMES`] is dropped, so an idle connection
    /// keeps little.
    pub async fn next_batch(&self, mut spare: VecDeque<Bytes>) -> Batch {
        spare.clear();
        if spare.capacity() > SPARE_FRAMES {
            spare = VecDeque::new();
        }
        loop {
            // Register interest before looking, so a push between the look and the wait is
            // not missed.
            let notified = self.writable.notified();
            {
                let mut state = self.state.lock();
                let finishing = match &mut state.status {
                    Status::Finishing(close) => Some(close.take()),
                    Status::Done => Some(None),
                    Status::Open | Status::Overflowed => None,
                };
                if !state.queue.is_empty() || finishing.is_some() {
                    state.bytes = 0;
                    let frames = std::mem::replace(&mut state.queue, spare);
                    if finishing.is_some() {
                        state.status = Status::Done;
                    }
                    return Batch {
                        frames,
                        finish: finishing,
                    };
                }
            }
            notified.await;
            // Woken by the first frame of a burst: let the rest of it arrive before taking.
            tokio::task::yield_now().await;
        }
    }

    /// Bytes queued and not yet taken by the writer.
    pub fn queued_bytes(&self) -> usize {
        self.state.lock().bytes
    }
}

impl Outbox for Mailbox {
    fn encoding(&self) -> Encoding {
        self.codec.encoding()
    }

    fn push(&self, frame: &Outgoing) -> bool {
        let bytes = self.encode(frame);
        let mut state = self.state.lock();
        if !matches!(state.status, Status::Open) {
            return false;
        }
        if !state.queue.is_empty() && state.bytes + bytes.len() > self.limit {
            state.queue.clear();
            state.bytes = 0;
            state.status = Status::Overflowed;
            drop(state);
            self.overflowed.cancel();
            return false;
        }
        // The writer takes everything queued at once, so only the first frame after it took
        // a batch needs to wake it; the rest of a burst joins that frame.
        let first = state.queue.is_empty();
        state.bytes += bytes.len();
        state.queue.push_back(bytes);
        drop(state);
        if first {
            self.writable.notify_one();
        }
        telemetry::frames_sent(frame.frame().op).increment(1);
        true
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;
    use ganglion_core::frame::Out;

    fn frame(payload_len: usize) -> Outgoing {
        Outgoing::new(OutFrame::delivery(
            "SEND",
            Out::Null,
            Out::str("x".repeat(payload_len)),
        ))
    }

    #[tokio::test]
    async fn a_frame_is_always_accepted_into_an_empty_mailbox() {
        let mailbox = Mailbox::new(&ganglion_codecs::Json, 10);
        assert!(mailbox.push(&frame(100)));
        let batch = mailbox.next_batch(VecDeque::new()).await;
        assert_eq!(batch.frames.len(), 1);
        assert!(batch.finish.is_none());
        assert!(mailbox.push(&frame(100)));
    }

    #[tokio::test]
    async fn going_past_the_bound_drops_the_queue_and_signals_overflow() {
        let size = ganglion_codecs::Json.encode(frame(50).frame()).len();
        let mailbox = Mailbox::new(&ganglion_codecs::Json, 2 * size + 10);
        assert!(mailbox.push(&frame(50)));
        assert!(mailbox.push(&frame(50)));
        assert_eq!(mailbox.queued_bytes(), 2 * size);
        assert!(
            !mailbox.push(&frame(50)),
            "a third frame goes past the bound"
        );
        assert_eq!(mailbox.queued_bytes(), 0);
        mailbox.overflowed().await;
        assert!(
            !mailbox.push(&frame(1)),
            "an overflowed mailbox refuses frames"
        );
        mailbox.finish(
            Some(OutFrame::new(8, Out::Null)),
            Some(Close::new(1008, "slow consumer")),
        );
        let batch = mailbox.next_batch(VecDeque::new()).await;
        assert_eq!(batch.frames.len(), 1, "only the final frame is written");
        assert_eq!(batch.finish, Some(Some(Close::new(1008, "slow consumer"))));
    }

    /// Only the first frame after the writer took a batch wakes it: a waiting writer is woken,
    /// and frames pushed while it was busy are all in its next batch.
    #[tokio::test(start_paused = true)]
    async fn a_waiting_writer_is_woken_by_the_first_frame_and_finds_the_whole_burst() {
        let mailbox = Arc::new(Mailbox::new(&ganglion_codecs::Msgpack, 1 << 20));
        let writer = |mailbox: Arc<Mailbox>| {
            tokio::spawn(async move { mailbox.next_batch(VecDeque::new()).await.frames.len() })
        };
        let waiting = writer(mailbox.clone());
        // The writer runs until it waits on the empty mailbox.
        tokio::task::yield_now().await;
        assert!(mailbox.push(&frame(10)));
        let woken = tokio::time::timeout(Duration::from_secs(1), waiting).await;
        assert_eq!(woken.expect("the first frame wakes the writer").unwrap(), 1);

        for _ in 0..3 {
            assert!(mailbox.push(&frame(10)));
        }
        let waiting = writer(mailbox.clone());
        let taken = tokio::time::timeout(Duration::from_secs(1), waiting).await;
        assert_eq!(taken.expect("queued frames are taken").unwrap(), 3);

        let waiting = writer(mailbox.clone());
        tokio::task::yield_now().await;
        assert!(mailbox.push(&frame(10)));
        let woken = tokio::time::timeout(Duration::from_secs(1), waiting).await;
        assert_eq!(
            woken.expect("an emptied mailbox wakes it again").unwrap(),
            1
        );
    }

    #[tokio::test]
    async fn the_writer_takes_everything_queued_in_one_batch() {
        let mailbox = Mailbox::new(&ganglion_codecs::Msgpack, 1 << 20);
        for _ in 0..10 {
            assert!(mailbox.push(&frame(10)));
        }
        let batch = mailbox.next_batch(VecDeque::new()).await;
        assert_eq!(batch.frames.len(), 10);
    }

    #[tokio::test]
    async fn the_writers_spare_queue_takes_the_next_burst_unless_it_grew_large() {
        let mailbox = Mailbox::new(&ganglion_codecs::Msgpack, 1 << 20);
        assert!(mailbox.push(&frame(10)));
        let small = VecDeque::with_capacity(16);
        let _ = mailbox.next_batch(small).await;
        for _ in 0..10 {
            assert!(mailbox.push(&frame(10)));
        }
        let batch = mailbox.next_batch(VecDeque::new()).await;
        assert_eq!(batch.frames.len(), 10);
        assert_eq!(
            batch.frames.capacity(),
            16,
            "the burst went into the spare's allocation"
        );

        assert!(mailbox.push(&frame(10)));
        let large = VecDeque::with_capacity(SPARE_FRAMES * 4);
        let _ = mailbox.next_batch(large).await;
        assert!(mailbox.push(&frame(10)));
        let batch = mailbox.next_batch(VecDeque::new()).await;
        assert!(
            batch.frames.capacity() < SPARE_FRAMES,
            "a large spare is not kept: {}",
            batch.frames.capacity()
        );
    }

    #[test]
    fn close_reasons_are_cut_at_a_character_boundary() {
        let reason = "é".repeat(100);
        let close = Close::new(1008, &reason);
        assert!(close.reason.len() <= 123);
        assert_eq!(close.reason.len(), 122);
    }
}
