//! What the MessagePack and JSON fast paths for SEND and BROADCAST share (see
//! `docs/architecture.md`, "The fast path"): where `d`'s members are in the frame, and the last
//! target a thread checked.

use std::cell::RefCell;
use std::ops::Range;
use std::thread::LocalKey;

use bytes::Bytes;
use ganglion_core::{Encoding, FastDispatch, RawValue, Value};

/// The longest target remembered by a [`LastTarget`].
const MAX_REMEMBERED_TARGET: usize = 1024;

/// The bytes of the last SEND/BROADCAST target a thread checked (at most
/// [`MAX_REMEMBERED_TARGET`]), and whether they were in normal form; empty: nothing remembered.
/// One per encoding. A sender that repeats its target has it recognised by its bytes instead of
/// checked again: whether a value is valid depends on nothing but its bytes, since a target
/// always sits at the same depth (`d.target`).
pub(crate) type LastTarget = LocalKey<RefCell<(Vec<u8>, bool)>>;

/// The length of the remembered target when `rest` begins with it and `ends(len)` says the
/// value really ends there, and whether it was in normal form.
pub(crate) fn recall(
    last: &'static LastTarget,
    rest: &[u8],
    ends: impl Fn(usize) -> bool,
) -> Option<(usize, bool)> {
    last.with_borrow(|(bytes, normal)| {
        (!bytes.is_empty() && rest.starts_with(bytes) && ends(bytes.len()))
            .then_some((bytes.len(), *normal))
    })
}

/// Remembers a target just checked (unless it is long).
pub(crate) fn remember(last: &'static LastTarget, checked: &[u8], normal: bool) {
    if checked.len() <= MAX_REMEMBERED_TARGET {
        last.with_borrow_mut(|(bytes, was_normal)| {
            bytes.clear();
            bytes.extend_from_slice(checked);
            *was_normal = normal;
        });
    }
}

/// Where the members of a SEND/BROADCAST `d` are, and whether each is in normal form.
#[derive(Default)]
pub(crate) struct Members {
    target: Option<(Range<usize>, bool)>,
    payload: Option<(Range<usize>, bool)>,
    nonce: Option<(Range<usize>, bool)>,
}

impl Members {
    /// Records a member of `d`; a repeated member replaces the earlier one (the last occurrence
    /// wins, SPEC §2.4), and members other than these three are not kept.
    pub(crate) fn found(&mut self, key: &[u8], span: Range<usize>, normal: bool) {
        let found = Some((span, normal));
        match key {
            b"target" => self.target = found,
            b"payload" => self.payload = found,
            b"nonce" => self.nonce = found,
            _ => {}
        }
    }

    /// The members in wire form, when `d` has both a target and a payload (boxed, as
    /// [`Envelope::fast`](ganglion_core::Envelope::fast) keeps them, and built in place).
    pub(crate) fn fast(
        &self,
        t: &'static str,
        frame: &Bytes,
        encoding: Encoding,
        decode: fn(&[u8]) -> Option<Value>,
    ) -> Option<Box<FastDispatch>> {
        let raw = |(range, normal): &(Range<usize>, bool)| RawValue {
            encoding,
            bytes: frame.slice(range.clone()),
            normal: *normal,
            decode,
        };
        let (target, payload) = (self.target.as_ref()?, self.payload.as_ref()?);
        Some(Box::new(FastDispatch {
            t,
            target: raw(target),
            payload: raw(payload),
            nonce: self.nonce.as_ref().map(raw),
        }))
    }
}
