//! Codec errors.

use std::borrow::Cow;
use std::fmt;

use ganglion_core::Encoding;

/// An inbound frame that is not an object of the data model (SPEC §2.4).
///
/// Its [`Display`](fmt::Display) text is the human-readable `extra_info` of op 8
/// `decode: payload: unrecoverable`; the text is implementation-defined and clients must not
/// parse it. Construction is cheap: the hand-written decoders pass a `&'static str` and a byte
/// offset, and only the rare third-party message (serde_json's) is an owned string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeError {
    detail: Cow<'static, str>,
    /// Where in the frame the problem was found, when the decoder knows.
    offset: Option<usize>,
}

/// The only way a codec can refuse to encode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EncodeError {
    /// The encoding has no codec in this build. Every encoding of SPEC §2 has one today; the
    /// variant stays so that callers handle an encoding that is specified before it is built.
    #[error("the {0} encoding is not supported yet")]
    Unsupported(Encoding),
}

// === impl DecodeError ===

impl DecodeError {
    pub fn new(detail: impl Into<Cow<'static, str>>) -> DecodeError {
        DecodeError {
            detail: detail.into(),
            offset: None,
        }
    }

    /// An error found at byte `offset` of the frame.
    pub fn at(detail: &'static str, offset: usize) -> DecodeError {
        DecodeError {
            detail: Cow::Borrowed(detail),
            offset: Some(offset),
        }
    }

    /// What is wrong, without the offset.
    pub fn detail(&self) -> &str {
        &self.detail
    }

    /// The byte offset the problem was found at, when known.
    pub fn offset(&self) -> Option<usize> {
        self.offset
    }
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.offset {
            Some(offset) => write!(f, "{} at byte {offset}", self.detail),
            None => f.write_str(&self.detail),
        }
    }
}

impl std::error::Error for DecodeError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_message_names_the_offset_when_there_is_one() {
        assert_eq!(
            DecodeError::at("truncated input", 7).to_string(),
            "truncated input at byte 7"
        );
        assert_eq!(DecodeError::new("bad").to_string(), "bad");
        assert_eq!(DecodeError::at("x", 3).detail(), "x");
        assert_eq!(DecodeError::at("x", 3).offset(), Some(3));
    }

    #[test]
    fn unsupported_encoding_names_the_encoding() {
        assert_eq!(
            EncodeError::Unsupported(Encoding::Etf).to_string(),
            "the etf encoding is not supported yet"
        );
    }
}
