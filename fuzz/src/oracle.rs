//! The checks of the `decode` and `stream` targets: what must hold for any input. They panic
//! on a violation (libFuzzer and proptest both report a panic as a failure).
//!
//! Shared by the fuzz targets (through `src/lib.rs`) and by `tests/fuzz_session.rs` (which
//! includes this file with `#[path]`).

use std::io::{self, Read};

use bytes::BytesMut;
use uffd_core::proto::{self, Frame, Header, Limits, HEADER_LEN};
use uffd_core::{FrameReader, WireError};

/// Decodes `data` with `limits` and checks the result:
/// - a decoded frame used at least a header and at most `data.len()` bytes, and no more
///   payload than `limits.max_payload`;
/// - re-encoding it gives exactly the bytes it was decoded from, up to what the decoder
///   ignores or normalises (header flags; unknown error codes become `Internal`), and those
///   bytes decode to the same frame (round trip);
/// - every strict prefix of a frame is "incomplete" (`Ok(None)`), never an error;
/// - `Ok(None)` only when the header or the announced payload is really incomplete.
///
/// Returns the number of bytes the frame used, if one decoded.
pub fn check_decode(data: &[u8], limits: &Limits) -> Option<usize> {
    match proto::decode(data, limits) {
        Err(_) => None,
        Ok(None) => {
            if let Some(head) = data.first_chunk::<HEADER_LEN>() {
                let header = Header::parse(*head, limits.max_payload)
                    .expect("decode said incomplete, yet the header does not parse");
                assert!(
                    HEADER_LEN + header.len as usize > data.len(),
                    "decode said incomplete with the whole frame present"
                );
            }
            None
        }
        Ok(Some((frame, used))) => {
            assert!(used >= HEADER_LEN, "a frame of {used} bytes");
            assert!(used <= data.len(), "used {used} of {} bytes", data.len());
            assert!(
                used - HEADER_LEN <= limits.max_payload,
                "payload over the limit"
            );
            let mut buf = BytesMut::new();
            frame.encode(&mut buf);
            assert_eq!(buf.len(), used, "re-encoded length differs for {frame:?}");
            let mut canonical = data[..used].to_vec();
            canonical[1] = 0; // header flags: no frame kind carries any
            if let Frame::Error { code, .. } = frame {
                canonical[HEADER_LEN..HEADER_LEN + 2].copy_from_slice(&(code as u16).to_le_bytes());
            }
            assert!(
                buf[..] == canonical[..],
                "re-encoding {frame:?} changed its bytes"
            );
            match proto::decode(&buf, limits) {
                Ok(Some((again, used_again))) => {
                    assert_eq!(again, frame, "round trip changed the frame");
                    assert_eq!(used_again, used);
                }
                other => panic!("re-encoded {frame:?} does not decode: {other:?}"),
            }
            for cut in [0, 1, HEADER_LEN - 1, HEADER_LEN, used / 2, used - 1] {
                if cut < used {
                    assert_eq!(
                        proto::decode(&data[..cut], limits),
                        Ok(None),
                        "prefix of {cut} bytes of a valid {frame:?}"
                    );
                }
            }
            assert_eq!(
                proto::decode(&data[..used], limits),
                Ok(Some((frame, used))),
                "the frame alone decodes differently"
            );
            Some(used)
        }
    }
}

/// An in-memory reader that hands out its bytes in pieces of the sizes in `pieces` (cycled).
/// A piece size of 0 is an `Interrupted` error (which readers must retry), 255 a fatal
/// `ConnectionReset` error; any other size `n` returns at most `n` bytes.
#[derive(Debug)]
pub struct PieceReader<'a> {
    data: &'a [u8],
    pieces: &'a [u8],
    next: usize,
    /// Calls to `read`.
    pub calls: usize,
    /// A fatal error was returned.
    pub failed: bool,
}

impl<'a> PieceReader<'a> {
    /// A reader of `data` in pieces of the sizes `pieces`.
    pub fn new(data: &'a [u8], pieces: &'a [u8]) -> Self {
        PieceReader {
            data,
            pieces,
            next: 0,
            calls: 0,
            failed: false,
        }
    }

    /// Bytes not read yet.
    pub fn remaining(&self) -> usize {
        self.data.len()
    }
}

impl Read for PieceReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.calls += 1;
        assert!(!self.failed, "read again after a fatal error");
        let piece = if self.pieces.is_empty() {
            usize::MAX
        } else {
            let p = self.pieces[self.next % self.pieces.len()];
            self.next += 1;
            usize::from(p)
        };
        match piece {
            0 => Err(io::ErrorKind::Interrupted.into()),
            255 => {
                self.failed = true;
                Err(io::ErrorKind::ConnectionReset.into())
            }
            n => {
                let n = n.min(buf.len()).min(self.data.len());
                buf[..n].copy_from_slice(&self.data[..n]);
                self.data = &self.data[n..];
                Ok(n)
            }
        }
    }
}

/// Splits a `stream` input: limits (see [`crate::frames::limits_from`]), then one byte `k`,
/// then `k % 8` piece sizes, then the bytes of the stream.
pub fn split_stream_input(data: &[u8]) -> (Limits, &[u8], &[u8]) {
    let (limits, rest) = crate::frames::limits_from(data);
    let Some((&k, rest)) = rest.split_first() else {
        return (limits, &[], &[]);
    };
    let k = usize::from(k % 8).min(rest.len());
    (limits, &rest[..k], &rest[k..])
}

enum Step {
    Frame(usize),
    CleanEnd,
    Truncated,
    Refused,
    Io(io::ErrorKind),
}

/// What a [`FrameReader`] did with a stream.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct StreamStats {
    /// Frames read.
    pub frames: usize,
    /// `read` calls on the underlying reader.
    pub reads: usize,
}

/// Reads `bytes` with a [`FrameReader`] through a [`PieceReader`] until an error or the end,
/// and checks it against [`proto::decode`] applied to the whole buffer: the same frames in
/// the same order, the same byte counts, and the same ending (a clean end between frames, a
/// truncated frame, or the same protocol error), unless the reader injected an I/O error,
/// which must then be what the frame reader returns. Never more reads than bytes and pieces
/// allow, so the loop always ends.
pub fn check_stream(limits: &Limits, pieces: &[u8], bytes: &[u8]) -> StreamStats {
    // FrameReader bounds payloads by its buffer too; keep the model's limit the same.
    let mut model_limits = *limits;
    model_limits.max_payload = limits.max_payload.min(proto::MAX_PAYLOAD);
    let mut reader = FrameReader::new(PieceReader::new(bytes, pieces));
    let mut pos = 0usize;
    let mut frames = 0usize;
    loop {
        let expected = proto::decode(&bytes[pos..], &model_limits);
        // What happened, without borrowing the reader (its frame borrows its buffer).
        let step = match (reader.read_frame(limits), expected) {
            (Ok(Some(frame)), Ok(Some((model, used)))) => {
                assert_eq!(frame, model, "frame {frames} differs from decode()");
                Step::Frame(used)
            }
            (Ok(None), Ok(None)) => Step::CleanEnd,
            (Err(WireError::TruncatedFrame), Ok(None)) => Step::Truncated,
            (Err(WireError::Proto(err)), Err(model)) => {
                assert_eq!(err, model, "a different protocol error than decode()");
                Step::Refused
            }
            (Err(WireError::Io(err)), _) => Step::Io(err.kind()),
            (got, expected) => {
                panic!("frame reader gave {got:?} where decode() gave {expected:?} at {pos}")
            }
        };
        let failed = reader.get_ref().failed;
        match step {
            Step::Frame(used) => {
                pos += used;
                frames += 1;
                assert_eq!(reader.bytes_read(), pos as u64, "bytes_read");
                assert_eq!(reader.get_ref().remaining(), bytes.len() - pos);
            }
            Step::CleanEnd => {
                assert_eq!(pos, bytes.len(), "a clean end with bytes left");
                break;
            }
            Step::Truncated => {
                assert!(pos < bytes.len(), "truncated with nothing left");
                break;
            }
            Step::Refused => break,
            Step::Io(kind) => {
                assert!(failed, "an I/O error the reader did not inject: {kind:?}");
                assert_eq!(kind, io::ErrorKind::ConnectionReset);
                break;
            }
        }
    }
    let reads = reader.get_ref().calls;
    // Each read returns at least one byte, except for interruptions (0) and the one fatal
    // error (255); a piece list of zeros only would loop, so it has at least one non-zero
    // entry whenever a read was made.
    let zeros = pieces.iter().filter(|&&p| p == 0).count();
    let bound = (bytes.len() + 2) * (zeros + 1);
    assert!(reads <= bound, "{reads} reads for {} bytes", bytes.len());
    StreamStats { frames, reads }
}

/// Piece sizes the stream target may use: a list of only zeros would make the reader
/// return `Interrupted` forever, which `FrameReader` rightly retries forever, so such a list
/// gets a 1 appended.
pub fn usable_pieces(pieces: &[u8]) -> Vec<u8> {
    let mut out = pieces.to_vec();
    if !out.is_empty() && out.iter().all(|&p| p == 0) {
        out.push(1);
    }
    out
}
