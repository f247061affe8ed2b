//! Framed reading and writing of [`proto`](mod@crate::proto) frames over a byte stream.
//!
//! The reader keeps one payload buffer sized for the largest frame and reads each payload
//! straight into it, so a data frame costs one copy from the socket and none in the decoder.
//! The writer sends a data frame's header and its page contents with one `writev(2)`, straight
//! from the image.

use std::io::{self, IoSlice, Read, Write};

use bytes::BytesMut;

use crate::proto::{self, Frame, Header, Limits, ProtoError, HEADER_LEN};

/// Errors of framed I/O.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    /// The socket failed.
    #[error("connection error: {0}")]
    Io(#[from] io::Error),
    /// The peer sent a frame that does not decode.
    #[error("protocol error: {0}")]
    Proto(#[from] ProtoError),
    /// The peer closed the connection in the middle of a frame.
    #[error("connection closed in the middle of a frame")]
    TruncatedFrame,
}

/// Result alias of this module.
pub type Result<T> = std::result::Result<T, WireError>;

/// Reads frames from a stream.
#[derive(Debug)]
pub struct FrameReader<R> {
    inner: R,
    payload: Vec<u8>,
    bytes_read: u64,
}

impl<R: Read> FrameReader<R> {
    /// Wraps a stream. The payload buffer grows to the largest frame read (at most
    /// `MAX_PAYLOAD`): a server's connection that only carries hellos and requests costs a
    /// few KiB, not a 2 MiB buffer that a thread's malloc arena would have to zero.
    pub fn new(inner: R) -> Self {
        FrameReader {
            inner,
            payload: Vec::new(),
            bytes_read: 0,
        }
    }

    /// Total bytes read so far (headers included).
    pub fn bytes_read(&self) -> u64 {
        self.bytes_read
    }

    /// The wrapped stream.
    pub fn get_ref(&self) -> &R {
        &self.inner
    }

    /// Unwraps the stream (frames already read are gone; nothing is buffered here).
    pub fn into_inner(self) -> R {
        self.inner
    }

    /// Reads the next frame. `Ok(None)` on a clean end of stream between frames; an end of
    /// stream inside a frame is [`WireError::TruncatedFrame`].
    pub fn read_frame(&mut self, limits: &Limits) -> Result<Option<Frame<'_>>> {
        let mut head = [0u8; HEADER_LEN];
        if !read_full(&mut self.inner, &mut head, true)? {
            return Ok(None);
        }
        let header = Header::parse(head, limits.max_payload.min(proto::MAX_PAYLOAD))?;
        let len = header.len as usize;
        if self.payload.len() < len {
            self.payload
                .resize(len.next_power_of_two().min(proto::MAX_PAYLOAD), 0);
        }
        let payload = &mut self.payload[..len];
        read_full(&mut self.inner, payload, false)?;
        self.bytes_read += (HEADER_LEN + payload.len()) as u64;
        Ok(Some(Frame::parse(header, payload, limits)?))
    }
}

/// Fills `buf`. Returns false if the stream ended before the first byte and `eof_ok`.
fn read_full<R: Read>(r: &mut R, buf: &mut [u8], eof_ok: bool) -> Result<bool> {
    let mut filled = 0;
    while filled < buf.len() {
        match r.read(&mut buf[filled..]) {
            Ok(0) if filled == 0 && eof_ok => return Ok(false),
            Ok(0) => return Err(WireError::TruncatedFrame),
            Ok(n) => filled += n,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            Err(err) => return Err(err.into()),
        }
    }
    Ok(true)
}

/// Frames read in bulk, for a receiver that hands them to another thread: the raw bytes of
/// whole frames in one buffer, and where each frame's payload starts.
#[derive(Debug)]
pub struct FrameBatch {
    buf: Vec<u8>,
    /// Bytes of `buf` holding whole frames.
    len: usize,
    frames: Vec<(Header, usize)>,
}

impl FrameBatch {
    /// An empty batch that reads up to `bytes` at a time (raised to hold one largest frame).
    pub fn new(bytes: usize, limits: &Limits) -> FrameBatch {
        FrameBatch {
            buf: vec![0; bytes.max(HEADER_LEN + limits.max_payload)],
            len: 0,
            frames: Vec::new(),
        }
    }

    /// The frames, in order: each header with its (unparsed) payload, to give to
    /// [`Frame::parse`].
    pub fn frames(&self) -> impl Iterator<Item = (Header, &[u8])> + '_ {
        self.frames
            .iter()
            .map(|&(header, at)| (header, &self.buf[at..at + header.len as usize]))
    }

    /// Number of frames.
    pub fn len(&self) -> usize {
        self.frames.len()
    }

    /// True when the batch holds no frame.
    pub fn is_empty(&self) -> bool {
        self.frames.is_empty()
    }

    /// Bytes of the frames, headers included.
    pub fn bytes(&self) -> usize {
        self.len
    }
}

/// Reads frames in bulk into [`FrameBatch`]es: each `read(2)` asks for as much as the batch
/// can hold, straight into the batch's buffer, so a payload is copied once (out of the
/// socket) and never again in user space. A frame cut by the end of a read is carried over
/// to the next batch.
#[derive(Debug)]
pub struct BatchReader<R> {
    inner: R,
    /// The start of a frame read past the last whole frame of the previous batch.
    carry: Vec<u8>,
    bytes_read: u64,
}

impl<R: Read> BatchReader<R> {
    /// Wraps a stream.
    pub fn new(inner: R) -> Self {
        BatchReader {
            inner,
            carry: Vec::new(),
            bytes_read: 0,
        }
    }

    /// Bytes of whole frames delivered so far (headers included).
    pub fn bytes_read(&self) -> u64 {
        self.bytes_read
    }

    /// Refills `batch` with at least one whole frame, and with every further whole frame the
    /// stream already has ready: it returns as soon as a read comes back short (the stream has
    /// nothing more buffered), so a slow stream is never held back. `Ok(false)` on a clean end
    /// of stream between frames, with the batch empty. On an error the batch still holds the
    /// whole frames read before it.
    pub fn fill(&mut self, batch: &mut FrameBatch, limits: &Limits) -> Result<bool> {
        batch.frames.clear();
        let mut filled = self.carry.len();
        batch.buf[..filled].copy_from_slice(&self.carry);
        self.carry.clear();
        let mut parsed = 0;
        let result = loop {
            let room = batch.buf.len() - filled;
            let n = match self.inner.read(&mut batch.buf[filled..]) {
                Ok(n) => n,
                Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
                Err(err) => break Err(err.into()),
            };
            if n == 0 {
                break match (filled == parsed, batch.frames.is_empty()) {
                    (true, true) => Ok(false),
                    (true, false) => Ok(true),
                    (false, _) => Err(WireError::TruncatedFrame),
                };
            }
            filled += n;
            match split_frames(&batch.buf[..filled], parsed, limits, &mut batch.frames) {
                Ok(at) => parsed = at,
                Err(err) => break Err(err.into()),
            }
            // A batch can always hold one whole frame, so a full buffer has at least one.
            if !batch.frames.is_empty() && (n < room || filled == batch.buf.len()) {
                break Ok(true);
            }
        };
        batch.len = parsed;
        self.bytes_read += parsed as u64;
        self.carry.extend_from_slice(&batch.buf[parsed..filled]);
        result
    }
}

/// Lists the whole frames of `buf` from offset `from` in `frames`; returns where the first
/// incomplete frame starts.
fn split_frames(
    buf: &[u8],
    mut from: usize,
    limits: &Limits,
    frames: &mut Vec<(Header, usize)>,
) -> std::result::Result<usize, ProtoError> {
    while let Some(head) = buf.get(from..from + HEADER_LEN) {
        let head: [u8; HEADER_LEN] = head.try_into().expect("a header's length");
        let header = Header::parse(head, limits.max_payload)?;
        let end = from + HEADER_LEN + header.len as usize;
        if end > buf.len() {
            break;
        }
        frames.push((header, from + HEADER_LEN));
        from = end;
    }
    Ok(from)
}

/// Writes frames to a stream, each one completely before returning.
#[derive(Debug)]
pub struct FrameWriter<W> {
    inner: W,
    buf: BytesMut,
    bytes_written: u64,
    frames_written: u64,
}

impl<W: Write> FrameWriter<W> {
    /// Wraps a stream.
    pub fn new(inner: W) -> Self {
        FrameWriter {
            inner,
            buf: BytesMut::with_capacity(4096),
            bytes_written: 0,
            frames_written: 0,
        }
    }

    /// Total bytes written so far.
    pub fn bytes_written(&self) -> u64 {
        self.bytes_written
    }

    /// Frames written so far.
    pub fn frames_written(&self) -> u64 {
        self.frames_written
    }

    /// The wrapped stream.
    pub fn get_ref(&self) -> &W {
        &self.inner
    }

    /// Sends one frame. Data frames go out with `writev`, without copying their bytes.
    pub fn send(&mut self, frame: &Frame<'_>) -> io::Result<()> {
        self.buf.clear();
        if let Frame::Data { offset, bytes } = *frame {
            proto::encode_data_header(offset, bytes.len(), &mut self.buf);
            let mut slices = [IoSlice::new(&self.buf), IoSlice::new(bytes)];
            write_all_vectored(&mut self.inner, &mut slices)?;
            self.bytes_written += (self.buf.len() + bytes.len()) as u64;
            self.frames_written += 1;
            return Ok(());
        }
        frame.encode(&mut self.buf);
        self.inner.write_all(&self.buf)?;
        self.bytes_written += self.buf.len() as u64;
        self.frames_written += 1;
        Ok(())
    }
}

fn write_all_vectored<W: Write>(w: &mut W, mut slices: &mut [IoSlice<'_>]) -> io::Result<()> {
    while !slices.is_empty() {
        match w.write_vectored(slices) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => IoSlice::advance_slices(&mut slices, n),
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            Err(err) => return Err(err),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::os::unix::net::UnixStream;

    use super::*;
    use crate::wire::Conn;

    #[test]
    fn frames_cross_a_socket() {
        let (a, b) = UnixStream::pair().expect("pair");
        let limits = Limits::new(1 << 20, 4096);
        let page = vec![1u8; 4096];
        let mut writer = FrameWriter::new(Conn::Unix(a));
        writer
            .send(&Frame::Data {
                offset: 4096,
                bytes: &page,
            })
            .expect("send");
        writer.send(&Frame::End).expect("send");
        drop(writer);
        let mut reader = FrameReader::new(Conn::Unix(b));
        match reader.read_frame(&limits).expect("read") {
            Some(Frame::Data { offset, bytes }) => {
                assert_eq!(offset, 4096);
                assert_eq!(bytes, &page[..]);
            }
            other => panic!("unexpected {other:?}"),
        }
        assert_eq!(reader.read_frame(&limits).expect("read"), Some(Frame::End));
        assert_eq!(reader.read_frame(&limits).expect("eof"), None);
    }

    #[test]
    fn eof_mid_frame_is_an_error() {
        let (mut a, b) = UnixStream::pair().expect("pair");
        a.write_all(&[5, 0, 0, 0, 16, 0, 0, 0, 1, 2])
            .expect("write");
        drop(a);
        let mut reader = FrameReader::new(Conn::Unix(b));
        assert!(matches!(
            reader.read_frame(&Limits::new(1 << 20, 4096)),
            Err(WireError::TruncatedFrame)
        ));
    }

    /// A stream that returns at most the next size in `pieces` per read (cycling).
    struct Pieces {
        data: Vec<u8>,
        at: usize,
        pieces: Vec<usize>,
        turn: usize,
    }

    impl Read for Pieces {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let piece = self.pieces[self.turn % self.pieces.len()];
            self.turn += 1;
            let n = piece.min(buf.len()).min(self.data.len() - self.at);
            buf[..n].copy_from_slice(&self.data[self.at..self.at + n]);
            self.at += n;
            Ok(n)
        }
    }

    fn encoded(frames: &[Frame<'_>]) -> Vec<u8> {
        let mut out = BytesMut::new();
        for frame in frames {
            frame.encode(&mut out);
        }
        out.to_vec()
    }

    fn frames_of(reader: &mut BatchReader<Pieces>, batch_bytes: usize) -> Result<Vec<Vec<u8>>> {
        let limits = Limits::new(1 << 20, 4096);
        let mut batch = FrameBatch::new(batch_bytes, &limits);
        let mut out = Vec::new();
        while reader.fill(&mut batch, &limits)? {
            assert!(!batch.is_empty(), "a filled batch holds a frame");
            for (header, payload) in batch.frames() {
                let frame = Frame::parse(header, payload, &limits)?;
                out.push(encoded(&[frame]));
            }
        }
        Ok(out)
    }

    proptest::proptest! {
        /// Whatever sizes the reads come back in, batches deliver every frame once, whole
        /// and in order, and count exactly their bytes.
        #[test]
        fn batches_deliver_every_frame(
            sizes in proptest::collection::vec(0usize..40, 1..60),
            pieces in proptest::collection::vec(1usize..70_000, 1..8),
            batch_bytes in 1usize..300_000,
        ) {
            let pages: Vec<Vec<u8>> =
                sizes.iter().zip(0u8..).map(|(&n, fill)| vec![fill; n * 4096]).collect();
            let frames: Vec<Frame<'_>> = pages
                .iter()
                .enumerate()
                .map(|(i, bytes)| {
                    if bytes.is_empty() {
                        Frame::Zero { offset: i as u64 * 4096, len: 4096 }
                    } else {
                        Frame::Data { offset: i as u64 * 4096, bytes }
                    }
                })
                .collect();
            let data = encoded(&frames);
            let total = data.len() as u64;
            let mut reader = BatchReader::new(Pieces { data, at: 0, pieces, turn: 0 });
            let got = frames_of(&mut reader, batch_bytes).expect("frames");
            let want: Vec<Vec<u8>> = frames.iter().map(|f| encoded(std::slice::from_ref(f))).collect();
            proptest::prop_assert_eq!(got, want);
            proptest::prop_assert_eq!(reader.bytes_read(), total);
        }
    }

    #[test]
    fn batch_reader_reports_truncation_and_bad_headers() {
        let page = vec![7u8; 4096];
        let mut data = encoded(&[
            Frame::Data {
                offset: 0,
                bytes: &page,
            },
            Frame::End,
        ]);
        data.truncate(data.len() - 1);
        let mut reader = BatchReader::new(Pieces {
            data,
            at: 0,
            pieces: vec![1000],
            turn: 0,
        });
        assert!(matches!(
            frames_of(&mut reader, 1 << 20),
            Err(WireError::TruncatedFrame)
        ));

        let mut data = encoded(&[Frame::Data {
            offset: 0,
            bytes: &page,
        }]);
        data.extend_from_slice(&[0xff; 64]);
        let mut reader = BatchReader::new(Pieces {
            data,
            at: 0,
            pieces: vec![1 << 20],
            turn: 0,
        });
        let limits = Limits::new(1 << 20, 4096);
        let mut batch = FrameBatch::new(1 << 20, &limits);
        assert!(matches!(
            reader.fill(&mut batch, &limits),
            Err(WireError::Proto(_))
        ));
        assert_eq!(
            batch.len(),
            1,
            "the whole frame before the bad header is kept"
        );
    }
}
