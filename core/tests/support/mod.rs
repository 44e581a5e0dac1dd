//! What the router tests share.

use ganglion_core::frame::{Encoding, OutFrame, Outgoing};
use ganglion_core::session::Outbox;
use parking_lot::Mutex;

/// An outbox that keeps every frame pushed into it.
#[derive(Default)]
pub struct Recorder(Mutex<Vec<OutFrame>>);

impl Outbox for Recorder {
    fn encoding(&self) -> Encoding {
        Encoding::Json
    }

    fn push(&self, frame: &Outgoing) -> bool {
        self.0.lock().push(frame.frame().clone());
        true
    }
}

impl Recorder {
    /// The frames pushed since the last call.
    pub fn take(&self) -> Vec<OutFrame> {
        std::mem::take(&mut *self.0.lock())
    }
}
