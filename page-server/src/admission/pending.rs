//! One pending connection, and reading its first frame without blocking: a hello whole (its
//! header says how long it is), or the header of any other frame, which the handshake thread
//! reads on and answers; a refused connection is drained until it closes.

use std::io::{self, Read};
use std::net::IpAddr;
use std::time::Instant;

use uffd_core::proto::{self, Header, Kind, HEADER_LEN};
use uffd_core::{Conn, WireError};

use crate::ServeError;

/// The longest hello payload: its fixed fields (34 bytes, see docs/protocol.md) and the
/// longest token. A longer "hello" is read by the handshake thread, which refuses it.
const HELLO_MAX: usize = 34 + proto::MAX_TEXT;

/// What a pending connection is doing.
#[derive(Debug)]
pub(super) enum State {
    /// Reading the first frame: `buf[..filled]` has arrived, `buf.len()` is what is needed.
    Hello { buf: Vec<u8>, filled: usize },
    /// An error frame was sent; what the peer still sends is read and dropped until it
    /// closes or the deadline passes.
    Closing,
}

/// A connection waiting for its first frame (or, refused, for its close).
#[derive(Debug)]
pub(super) struct Pending {
    pub(super) conn: Conn,
    /// The peer's address, for the per-source limit (None: not counted).
    pub(super) source: Option<IpAddr>,
    pub(super) deadline: Instant,
    pub(super) state: State,
}

/// What reading a pending connection came to.
pub(super) enum Step {
    /// Waiting for more bytes.
    Wait,
    /// Closed (end of stream, error, or drained).
    Gone,
    /// The first frame (or its header) is complete.
    Arrived,
    /// The header does not decode.
    Bad(ServeError),
}

/// Reads what a pending connection has for us, without blocking.
pub(super) fn read_some(pending: &mut Pending, max_payload: usize) -> Step {
    let (buf, filled) = match &mut pending.state {
        State::Closing => return drain(&mut pending.conn),
        State::Hello { buf, filled } => (buf, filled),
    };
    loop {
        if buf.is_empty() {
            buf.resize(HEADER_LEN, 0);
        }
        let n = match pending.conn.read(&mut buf[*filled..]) {
            Ok(0) => return Step::Gone,
            Ok(n) => n,
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => return Step::Wait,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => return Step::Gone,
        };
        *filled += n;
        if *filled < buf.len() {
            continue;
        }
        if buf.len() > HEADER_LEN {
            return Step::Arrived; // the whole hello
        }
        let head: [u8; HEADER_LEN] = match buf[..HEADER_LEN].try_into() {
            Ok(head) => head,
            Err(_) => return Step::Gone,
        };
        match Header::parse(head, max_payload) {
            Err(err) => return Step::Bad(ServeError::Wire(WireError::Proto(err))),
            Ok(header) if header.kind == Kind::Hello && (header.len as usize) <= HELLO_MAX => {
                buf.resize(HEADER_LEN + header.len as usize, 0);
                if *filled == buf.len() {
                    return Step::Arrived;
                }
            }
            // Not a hello, or too long for one: the handshake thread reads the rest and
            // answers it.
            Ok(_) => return Step::Arrived,
        }
    }
}

/// Reads and drops what a closing connection still sends.
fn drain(conn: &mut Conn) -> Step {
    let mut sink = [0u8; 4096];
    for _ in 0..16 {
        match conn.read(&mut sink) {
            Ok(0) => return Step::Gone,
            Ok(_) => {}
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => return Step::Wait,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return Step::Gone,
        }
    }
    Step::Wait
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::os::unix::net::UnixStream;
    use std::time::Duration;

    use uffd_core::Frame;

    use super::*;

    /// A pending entry reading from one end of a socket pair; the other end is returned.
    fn pending() -> (Pending, UnixStream) {
        let (ours, theirs) = UnixStream::pair().expect("pair");
        let conn = Conn::Unix(ours);
        conn.set_nonblocking(true).expect("non-blocking");
        let pending = Pending {
            conn,
            source: None,
            deadline: Instant::now() + Duration::from_secs(5),
            state: State::Hello {
                buf: Vec::new(),
                filled: 0,
            },
        };
        (pending, theirs)
    }

    fn hello() -> Vec<u8> {
        let mut buf = bytes::BytesMut::new();
        Frame::Hello(proto::Hello {
            version: proto::VERSION,
            role: proto::Role::Urgent,
            flags: 0,
            session: 0,
            unit: 4096,
            image_id: 0,
            token: b"secret",
        })
        .encode(&mut buf);
        buf.to_vec()
    }

    fn first(pending: &Pending) -> &[u8] {
        match &pending.state {
            State::Hello { buf, filled } => &buf[..*filled],
            State::Closing => &[],
        }
    }

    #[test]
    fn a_hello_in_pieces_arrives_whole_and_nothing_more_is_read() {
        let (mut p, mut peer) = pending();
        let hello = hello();
        assert!(matches!(read_some(&mut p, 1 << 20), Step::Wait));
        for piece in hello.chunks(5) {
            assert!(matches!(read_some(&mut p, 1 << 20), Step::Wait));
            peer.write_all(piece).expect("write");
        }
        // A request right behind the hello stays in the socket for the handshake thread.
        peer.write_all(&[4, 0, 0, 0, 16, 0, 0, 0]).expect("write");
        assert!(matches!(read_some(&mut p, 1 << 20), Step::Arrived));
        assert_eq!(first(&p), &hello[..]);
    }

    #[test]
    fn another_first_frame_is_handed_over_after_its_header() {
        let (mut p, mut peer) = pending();
        let mut request = bytes::BytesMut::new();
        Frame::Request {
            offset: 0,
            len: 4096,
        }
        .encode(&mut request);
        peer.write_all(&request).expect("write");
        assert!(matches!(read_some(&mut p, 1 << 20), Step::Arrived));
        assert_eq!(first(&p), &request[..HEADER_LEN]);
    }

    #[test]
    fn a_bad_header_or_the_end_of_stream() {
        let (mut p, mut peer) = pending();
        peer.write_all(b"GET / HTTP/1.1\r\n").expect("write");
        assert!(matches!(read_some(&mut p, 1 << 20), Step::Bad(_)));
        let (mut p, peer) = pending();
        drop(peer);
        assert!(matches!(read_some(&mut p, 1 << 20), Step::Gone));
    }
}
