//! TEMPORARY STUB, replaced by the codecs branch.
use bytes::Bytes;
use ganglion_core::{Encoding, OutFrame, Value};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameKind {
    Text,
    Binary,
}

pub fn frame_kind(e: Encoding) -> FrameKind {
    match e {
        Encoding::Json => FrameKind::Text,
        _ => FrameKind::Binary,
    }
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct DecodeError(pub String);

pub fn decode(_e: Encoding, b: &[u8]) -> Result<Value, DecodeError> {
    serde_json::from_slice(b).map_err(|e| DecodeError(e.to_string()))
}

pub fn encode(_e: Encoding, f: &OutFrame) -> Bytes {
    Bytes::from(format!("{{\"op\":{},\"ts\":{}}}", f.op, f.ts))
}
pub mod json {
    pub fn encode_list(_items: &[ganglion_core::Out]) -> Vec<u8> {
        b"[]".to_vec()
    }
}
