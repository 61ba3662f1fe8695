//! [`BatchScan`]: what is known of the client's buffered messages ahead of
//! routing, found in one pass as their bytes arrive.
//!
//! An extended-protocol batch (Parse, Bind, Describe, Execute, … up to Sync
//! or Flush) is routed as the one implicit transaction it is, so the proxy
//! waits for the whole batch and joins its statement texts before it picks
//! a server. A batch may arrive in many reads; the scan resumes where the
//! last one stopped instead of walking the buffer again, and remembers
//! where the Parse and Bind frames are so their texts need no second walk.
//!
//! Whoever removes bytes from the front of the client buffer calls
//! [`BatchScan::consumed`]: the scan keeps its places in its own offsets
//! and counts how far the buffer's front has moved, so that costs the same
//! however many frames the scan holds (it runs for every client message).

use std::ops::Range;

use super::frame::peek_header;
use super::tag::fe;

/// Frames that end a batch (or are not part of one).
fn ends_batch(tag: u8) -> bool {
    matches!(
        tag,
        fe::SYNC | fe::FLUSH | fe::QUERY | fe::TERMINATE | fe::FUNCTION_CALL
    )
}

/// The scan of the batch at the front of the client buffer.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct BatchScan {
    /// Bytes that left the front of the buffer since the scan started: the
    /// buffer's front, in the scan's offsets.
    base: usize,
    /// Bytes of whole frames scanned so far (in the scan's offsets, as are
    /// the places below).
    scanned: usize,
    /// Where the frame that ends the batch ends, once its header is seen (a
    /// malformed header also ends the scan: the framing error surfaces when
    /// that frame is read).
    end: Option<usize>,
    /// The Parse and Bind frames seen, with where they are.
    statements: Vec<(u8, Range<usize>)>,
}

impl BatchScan {
    /// Scans the frames of `buf` not scanned yet, up to the end of the
    /// batch or of the whole frames; whether the batch is complete.
    pub fn complete(&mut self, buf: &[u8], max_len: usize) -> bool {
        while self.end.is_none() {
            let rest = &buf[(self.scanned - self.base).min(buf.len())..];
            match peek_header(rest, max_len) {
                Ok(Some((tag, total))) => {
                    if ends_batch(tag) {
                        self.end = Some(self.scanned + total);
                    } else if rest.len() < total {
                        break;
                    } else {
                        if matches!(tag, fe::PARSE | fe::BIND) {
                            let at = self.scanned;
                            self.statements.push((tag, at..at + total));
                        }
                        self.scanned += total;
                    }
                }
                Ok(None) => break,
                Err(_) => self.end = Some(self.scanned),
            }
        }
        self.end.is_some()
    }

    /// The Parse and Bind frames of the batch scanned so far (tag and the
    /// whole frame's place in the buffer), in order.
    pub fn statement_frames(&self) -> impl Iterator<Item = (u8, Range<usize>)> + '_ {
        let base = self.base;
        self.statements
            .iter()
            .filter(move |(_, r)| r.start >= base)
            .map(move |(tag, r)| (*tag, r.start - base..r.end - base))
    }

    /// Starts afresh. Keeps the frame list's room for the next batch, unless
    /// a large batch grew it (an idle session holds no more than it needs).
    pub fn reset(&mut self) {
        self.base = 0;
        self.scanned = 0;
        self.end = None;
        if self.statements.capacity() > 16 {
            self.statements = Vec::new();
        } else {
            self.statements.clear();
        }
    }

    /// `n` bytes left the front of the buffer.
    pub fn consumed(&mut self, n: usize) {
        self.base += n;
        if self.base >= self.scanned.max(self.end.unwrap_or(0)) {
            self.reset();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut f = vec![tag];
        f.extend_from_slice(&(body.len() as u32 + 4).to_be_bytes());
        f.extend_from_slice(body);
        f
    }

    /// The old whole-buffer walk, as the reference.
    fn walk(buf: &[u8]) -> bool {
        let mut rest = buf;
        loop {
            match peek_header(rest, 1 << 20) {
                Ok(Some((tag, total))) => {
                    if ends_batch(tag) {
                        return true;
                    }
                    if rest.len() < total {
                        return false;
                    }
                    rest = &rest[total..];
                }
                Ok(None) => return false,
                Err(_) => return true,
            }
        }
    }

    fn batch() -> Vec<u8> {
        let mut b = frame(fe::PARSE, b"\0select 1\0\0\0");
        b.extend(frame(fe::BIND, b"\0\0\0\0\0\0\0\0"));
        b.extend(frame(fe::DESCRIBE, b"P\0"));
        b.extend(frame(fe::EXECUTE, b"\0\0\0\0\0"));
        b.extend(frame(fe::PARSE, b"s2\0select 2\0\0\0"));
        b.extend(frame(fe::SYNC, b""));
        b
    }

    #[test]
    fn byte_by_byte_agrees_with_the_whole_walk() {
        let b = batch();
        let mut scan = BatchScan::default();
        for n in 0..=b.len() {
            assert_eq!(
                scan.complete(&b[..n], 1 << 20),
                walk(&b[..n]),
                "after {n} bytes"
            );
        }
        let tags: Vec<u8> = scan.statement_frames().map(|(t, _)| t).collect();
        assert_eq!(tags, [fe::PARSE, fe::BIND, fe::PARSE]);
        for (tag, r) in scan.statement_frames() {
            assert_eq!(b[r.start], tag);
            let len = u32::from_be_bytes(b[r.start + 1..r.start + 5].try_into().unwrap());
            assert_eq!(r.len(), len as usize + 1);
        }
    }

    #[test]
    fn consuming_frames_keeps_the_places_right() {
        let b = batch();
        let mut scan = BatchScan::default();
        assert!(scan.complete(&b, 1 << 20));
        let first = scan.statement_frames().next().unwrap().1.len();
        scan.consumed(first);
        let rest = &b[first..];
        let tags: Vec<u8> = scan.statement_frames().map(|(t, _)| t).collect();
        assert_eq!(tags, [fe::BIND, fe::PARSE], "the consumed Parse is gone");
        for (tag, r) in scan.statement_frames() {
            assert_eq!(rest[r.start], tag);
        }
        assert!(scan.complete(rest, 1 << 20), "still complete");
        // The whole batch consumed: the next one starts from nothing.
        scan.consumed(rest.len());
        assert_eq!(
            (scan.scanned, scan.end, scan.statements.len()),
            (0, None, 0)
        );
        let next = frame(fe::PARSE, b"\0select 3\0\0\0");
        assert!(!scan.complete(&next, 1 << 20));
        assert_eq!(scan.statement_frames().count(), 1);
    }

    /// Bytes arriving a few at a time while frames leave the front (as a
    /// session handles them): at every step the scan agrees with a walk of
    /// what is buffered, and its frames are where it says.
    #[test]
    fn arriving_and_consumed_frames_interleaved() {
        let mut stream = batch();
        stream.extend(batch());
        stream.extend(frame(fe::QUERY, b"select 4\0"));
        stream.extend(batch());
        for chunk in 1..=9 {
            for consume_every in 1..=4 {
                let mut scan = BatchScan::default();
                let (mut buf, mut fed, mut step) = (Vec::new(), 0, 0);
                while fed < stream.len() || !buf.is_empty() {
                    let n = chunk.min(stream.len() - fed);
                    buf.extend_from_slice(&stream[fed..fed + n]);
                    fed += n;
                    step += 1;
                    let what = format!("chunk {chunk}, consume every {consume_every}, step {step}");
                    assert_eq!(scan.complete(&buf, 1 << 20), walk(&buf), "{what}");
                    for (tag, r) in scan.statement_frames() {
                        assert_eq!(buf[r.start], tag, "{what}");
                        let len =
                            u32::from_be_bytes(buf[r.start + 1..r.start + 5].try_into().unwrap());
                        assert_eq!(r.len(), len as usize + 1, "{what}");
                    }
                    if step % consume_every == 0 || fed == stream.len() {
                        // Whole frames leave the front, as the session takes them.
                        while let Ok(Some((_, total))) = peek_header(&buf, 1 << 20) {
                            if buf.len() < total {
                                break;
                            }
                            buf.drain(..total);
                            scan.consumed(total);
                            if step % 2 == 0 {
                                break;
                            }
                        }
                    }
                    if n == 0 && buf.len() < 5 {
                        break;
                    }
                }
                assert!(buf.is_empty(), "chunk {chunk}: {buf:?} left");
            }
        }
    }

    #[test]
    fn a_query_or_a_bad_header_ends_the_scan() {
        let mut scan = BatchScan::default();
        assert!(scan.complete(&frame(fe::QUERY, b"select 1\0"), 1 << 20));
        let mut scan = BatchScan::default();
        let mut bad = frame(fe::PARSE, b"\0select 1\0\0\0");
        bad.extend([fe::BIND, 0, 0, 0, 1]); // length 1 < 4
        assert!(scan.complete(&bad, 1 << 20));
        assert_eq!(scan.statement_frames().count(), 1);
        // A header alone of a terminator is enough: its body need not be here.
        let mut scan = BatchScan::default();
        assert!(scan.complete(&[fe::SYNC, 0, 0], 1 << 20) == walk(&[fe::SYNC, 0, 0]));
    }
}
