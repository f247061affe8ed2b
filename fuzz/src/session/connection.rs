//! One connection of a script: a writer the script drives, and a reader thread that takes in
//! everything the server sends until it closes, noting frames and the first welcome's session
//! as they come (the script can wait for them).

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use uffd_core::proto::{self, Frame, Limits};

use super::target::Target;

/// A connection must be answered and closed within this time.
pub(super) const DEADLINE: Duration = Duration::from_secs(10);
/// More than this from the server on one connection is a failure (the image is 280 KiB).
pub(super) const MAX_RECEIVED: usize = 16 << 20;

/// What the reader has seen so far, for the script to wait on.
#[derive(Debug, Default)]
pub(super) struct Track {
    pub(super) frames: usize,
    pub(super) session: Option<u64>,
    pub(super) done: bool,
}

/// Between a connection's reader thread and the script: the [`Track`], a condition variable
/// signalled at each change, and the flag that stops the reader.
#[derive(Debug, Default)]
pub(super) struct Shared {
    track: Mutex<Track>,
    changed: Condvar,
    stop: AtomicBool,
}

impl Shared {
    pub(super) fn lock(&self) -> MutexGuard<'_, Track> {
        self.track.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Waits until `ready` holds or `timeout` passes.
    pub(super) fn wait_for(&self, timeout: Duration, ready: impl Fn(&Track) -> bool) {
        let deadline = Instant::now() + timeout;
        let mut track = self.lock();
        while !ready(&track) {
            let Some(left) = deadline.checked_duration_since(Instant::now()) else {
                return;
            };
            track = match self.changed.wait_timeout(track, left) {
                Ok((t, _)) => t,
                Err(poisoned) => poisoned.into_inner().0,
            };
        }
    }
}

/// How the reader's connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum End {
    Eof,
    Reset,
    TimedOut,
    Aborted,
    Overflow,
    Failed(io::ErrorKind),
}

/// Everything the server sent on one connection, and how the connection ended.
#[derive(Debug)]
pub(super) struct Received {
    pub(super) bytes: Vec<u8>,
    pub(super) end: End,
}

/// A connection being played: its writer, its reader thread, and what the script sent on it.
#[derive(Debug)]
pub(super) struct Live {
    pub(super) writer: Option<TcpStream>,
    pub(super) shared: Arc<Shared>,
    pub(super) reader: Option<JoinHandle<Received>>,
    pub(super) sent: Vec<u8>,
    pub(super) write_failed: bool,
    pub(super) aborted: bool,
    /// The session id a join hello on this connection named.
    pub(super) joined: Option<u64>,
    pub(super) background_hello: bool,
}

fn set_linger_zero(stream: &TcpStream) {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    let _ = nix::sys::socket::setsockopt(stream, nix::sys::socket::sockopt::Linger, &linger);
}

/// Reads everything the server sends on `stream` until it closes, counting frames and noting
/// the first welcome's session for the others.
fn read_all(mut stream: TcpStream, shared: Arc<Shared>, limits: Limits) -> Received {
    let started = Instant::now();
    let _ = stream.set_read_timeout(Some(Duration::from_millis(20)));
    let mut bytes = Vec::new();
    let mut parsed = 0;
    let mut buf = vec![0u8; 64 << 10];
    let end = loop {
        if shared.stop.load(Ordering::Acquire) {
            set_linger_zero(&stream);
            break End::Aborted;
        }
        if started.elapsed() > DEADLINE {
            break End::TimedOut;
        }
        match stream.read(&mut buf) {
            Ok(0) => break End::Eof,
            Ok(n) => {
                bytes.extend_from_slice(&buf[..n]);
                if bytes.len() > MAX_RECEIVED {
                    break End::Overflow;
                }
                let mut track = shared.lock();
                while let Ok(Some((frame, used))) = proto::decode(&bytes[parsed..], &limits) {
                    parsed += used;
                    track.frames += 1;
                    if let Frame::Welcome(w) = frame {
                        track.session.get_or_insert(w.session);
                    }
                }
                drop(track);
                shared.changed.notify_all();
            }
            Err(err)
                if matches!(
                    err.kind(),
                    io::ErrorKind::WouldBlock
                        | io::ErrorKind::TimedOut
                        | io::ErrorKind::Interrupted
                ) => {}
            Err(err) if err.kind() == io::ErrorKind::ConnectionReset => break End::Reset,
            Err(err) => break End::Failed(err.kind()),
        }
    };
    shared.lock().done = true;
    shared.changed.notify_all();
    drop(stream);
    Received { bytes, end }
}

/// Opens a connection to `target` and starts its reader thread.
pub(super) fn connect(target: &Target<'_>) -> Live {
    let stream = TcpStream::connect(target.addr).expect("connect to the server");
    let _ = stream.set_nodelay(true);
    stream
        .set_write_timeout(Some(DEADLINE))
        .expect("write timeout");
    let shared = Arc::new(Shared::default());
    let read_half = stream.try_clone().expect("clone the socket");
    let limits = target.limits();
    let for_reader = Arc::clone(&shared);
    let reader = std::thread::Builder::new()
        .name("fuzz-reader".into())
        .spawn(move || read_all(read_half, for_reader, limits))
        .expect("spawn a reader");
    Live {
        writer: Some(stream),
        shared,
        reader: Some(reader),
        sent: Vec::new(),
        write_failed: false,
        aborted: false,
        joined: None,
        background_hello: false,
    }
}

impl Live {
    pub(super) fn write(&mut self, bytes: &[u8]) {
        if self.write_failed || self.aborted {
            return;
        }
        let Some(stream) = self.writer.as_mut() else {
            return;
        };
        match stream.write_all(bytes) {
            Ok(()) => self.sent.extend_from_slice(bytes),
            Err(err) => {
                assert!(
                    !matches!(
                        err.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ),
                    "the server stopped reading: a write blocked for {DEADLINE:?}"
                );
                // The server closed the connection (after an error frame or its stream).
                self.write_failed = true;
            }
        }
    }

    pub(super) fn abort(&mut self) {
        if self.aborted {
            return;
        }
        self.aborted = true;
        if let Some(stream) = self.writer.take() {
            set_linger_zero(&stream);
        }
        self.shared.stop.store(true, Ordering::Release);
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
    }

    pub(super) fn half_close(&mut self) {
        if let Some(stream) = &self.writer {
            let _ = stream.shutdown(Shutdown::Write);
        }
    }

    pub(super) fn finish(&mut self) -> Option<Received> {
        let received = self.reader.take().map(|r| r.join().expect("reader thread"));
        self.writer = None;
        received
    }
}
