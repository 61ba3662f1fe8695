//! Splitting a byte stream into protocol frames.

use bytes::{Buf, BytesMut};

/// PostgreSQL's own limit on a message (`PQ_LARGE_MESSAGE_LIMIT`, 1 GiB).
pub const MAX_MESSAGE_LEN: usize = 1 << 30;

/// Largest startup-phase packet accepted (PostgreSQL uses 10000 bytes).
pub const MAX_STARTUP_LEN: usize = 10_000;

/// PostgreSQL's limit for client messages that are never large
/// (`PQ_SMALL_MESSAGE_LIMIT`): Sync, Flush, Terminate, Close, Describe,
/// Execute, CopyDone, CopyFail.
pub const SMALL_MESSAGE_LEN: usize = 10_000;

/// The length limit (as the length field counts it) for a client message
/// of type `tag` after login: `large` for the types PostgreSQL lets grow
/// (Query, Parse, Bind, CopyData, FunctionCall), [`SMALL_MESSAGE_LEN`]
/// for the rest.
pub fn client_message_limit(tag: u8, large: usize) -> usize {
    match tag {
        b'Q' | b'P' | b'B' | b'd' | b'F' => large,
        _ => SMALL_MESSAGE_LEN,
    }
}

/// A frame that cannot be valid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// Length field below the 4 bytes it occupies itself (includes negatives).
    #[error("invalid message length {0}")]
    BadLength(i32),
    /// Length above the limit for this phase.
    #[error("message length {len} exceeds the limit of {limit} bytes")]
    TooLong { len: usize, limit: usize },
}

/// A complete tagged message: `tag` and the whole frame bytes (tag, length, body).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// Message type byte.
    pub tag: u8,
    /// The complete frame, tag and length included.
    pub bytes: bytes::Bytes,
}

impl Frame {
    /// The body after tag and length.
    pub fn body(&self) -> &[u8] {
        &self.bytes[5..]
    }
}

/// Reads the header of a tagged frame at the start of `buf`: (tag, total
/// frame length in bytes). `Ok(None)` when fewer than 5 bytes are buffered.
pub fn peek_header(buf: &[u8], limit: usize) -> Result<Option<(u8, usize)>, FrameError> {
    if buf.len() < 5 {
        return Ok(None);
    }
    let len = i32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]);
    if len < 4 {
        return Err(FrameError::BadLength(len));
    }
    let len = len as usize;
    if len > limit {
        return Err(FrameError::TooLong { len, limit });
    }
    Ok(Some((buf[0], len + 1)))
}

/// Takes one complete tagged frame off the front of `buf`, if buffered.
pub fn split_frame(buf: &mut BytesMut, limit: usize) -> Result<Option<Frame>, FrameError> {
    match peek_header(buf, limit)? {
        Some((tag, total)) if buf.len() >= total => Ok(Some(Frame {
            tag,
            bytes: buf.split_to(total).freeze(),
        })),
        _ => Ok(None),
    }
}

/// Takes one startup-phase packet (no tag: length then body) off `buf`.
/// Returns the body (after the length).
pub fn split_startup(buf: &mut BytesMut) -> Result<Option<bytes::Bytes>, FrameError> {
    if buf.len() < 4 {
        return Ok(None);
    }
    let len = i32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]);
    if len < 8 {
        return Err(FrameError::BadLength(len));
    }
    let len = len as usize;
    if len > MAX_STARTUP_LEN {
        return Err(FrameError::TooLong {
            len,
            limit: MAX_STARTUP_LEN,
        });
    }
    if buf.len() < len {
        return Ok(None);
    }
    let mut packet = buf.split_to(len);
    packet.advance(4);
    Ok(Some(packet.freeze()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_some_client_messages_may_be_large() {
        for tag in *b"QPBdF" {
            assert_eq!(client_message_limit(tag, 1 << 20), 1 << 20);
        }
        for tag in *b"SHXCDEcfz" {
            assert_eq!(client_message_limit(tag, 1 << 20), SMALL_MESSAGE_LEN);
        }
    }

    #[test]
    fn splits_complete_frames_and_waits_for_partial_ones() {
        let mut buf = BytesMut::from(&b"Q\0\0\0\x09abcd\0Z\0\0\0\x05"[..]);
        let f = split_frame(&mut buf, MAX_MESSAGE_LEN).unwrap().unwrap();
        assert_eq!(f.tag, b'Q');
        assert_eq!(f.body(), b"abcd\0");
        assert_eq!(split_frame(&mut buf, MAX_MESSAGE_LEN).unwrap(), None);
        buf.extend_from_slice(b"I");
        let f = split_frame(&mut buf, MAX_MESSAGE_LEN).unwrap().unwrap();
        assert_eq!((f.tag, f.body()), (b'Z', &b"I"[..]));
        assert!(buf.is_empty());
    }

    #[test]
    fn header_alone_is_not_a_frame() {
        let mut buf = BytesMut::from(&b"Q\0\0"[..]);
        assert_eq!(split_frame(&mut buf, MAX_MESSAGE_LEN).unwrap(), None);
        assert_eq!(buf.len(), 3);
    }

    #[test]
    fn rejects_negative_short_and_oversized_lengths() {
        for (bytes, want) in [
            (&b"Q\xff\xff\xff\xff"[..], FrameError::BadLength(-1)),
            (&b"Q\0\0\0\x03"[..], FrameError::BadLength(3)),
            (
                &b"Q\x7f\xff\xff\xff"[..],
                FrameError::TooLong {
                    len: 0x7fff_ffff,
                    limit: MAX_MESSAGE_LEN,
                },
            ),
        ] {
            let mut buf = BytesMut::from(bytes);
            assert_eq!(split_frame(&mut buf, MAX_MESSAGE_LEN), Err(want));
        }
        let mut buf = BytesMut::from(&b"Q\0\0\x10\0"[..]);
        assert!(matches!(
            split_frame(&mut buf, 1024),
            Err(FrameError::TooLong { .. })
        ));
    }

    #[test]
    fn startup_packets() {
        let mut buf = BytesMut::from(&b"\0\0\0\x08\x04\xd2\x16\x2f"[..]);
        assert_eq!(
            &split_startup(&mut buf).unwrap().unwrap()[..],
            b"\x04\xd2\x16\x2f"
        );
        let mut buf = BytesMut::from(&b"\0\0\0\x04"[..]);
        assert!(split_startup(&mut buf).is_err());
        let mut buf = BytesMut::from(&b"\x7f\0\0\0"[..]);
        assert!(split_startup(&mut buf).is_err());
        let mut buf = BytesMut::from(&b"\0\0\0\x09abc"[..]);
        assert_eq!(split_startup(&mut buf).unwrap(), None);
    }
}
