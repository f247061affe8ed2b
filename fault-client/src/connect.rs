//! Opening a session with the page server: the urgent connection (which opens the session and
//! may fetch the per-page checksums) and the background connection (which joins it).

use std::time::Duration;

use uffd_core::proto::{self, ErrorCode, Hello, Role, Welcome};
use uffd_core::{Conn, Endpoint, Frame, FrameReader, FrameWriter, Limits, Synthetic, WireError};

/// Errors while connecting.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The server cannot be reached.
    #[error("cannot reach page server at {addr}: {source}")]
    Unreachable {
        /// The address.
        addr: String,
        /// Why.
        source: std::io::Error,
    },
    /// The server refused the session.
    #[error("page server refused the session ({code:?}): {message}")]
    Refused {
        /// Error code.
        code: ErrorCode,
        /// The server's message.
        message: String,
    },
    /// The server broke the protocol or the connection.
    #[error("handshake with the page server failed: {0}")]
    Wire(#[from] WireError),
    /// Something other than a welcome came back.
    #[error("handshake with the page server failed: unexpected {0:?} frame")]
    Unexpected(proto::Kind),
    /// The server accepted the connection but sent no answer to the hello in time (a
    /// stopped or overloaded server: its kernel accepts connections on its behalf).
    #[error(
        "the page server at {addr} accepted the connection but did not answer its hello within {:.1} s",
        .waited.as_secs_f64()
    )]
    NoWelcome {
        /// The address.
        addr: String,
        /// How long the client waited.
        waited: Duration,
    },
    /// The connection closed during the handshake.
    #[error("the page server closed the connection during the handshake")]
    Closed,
    /// The server described a synthetic image that does not regenerate here to the image it
    /// serves (another generator): verification against it would mean nothing.
    #[error("the server's synthetic image (seed {seed}, zero fraction {zero_fraction}) does not match its image id")]
    Synthetic {
        /// Its seed.
        seed: u64,
        /// Its zero fraction.
        zero_fraction: f64,
    },
    /// The server's page size differs from ours.
    #[error("the server's page size is {server} bytes, this machine's is {local}")]
    PageSize {
        /// Server's.
        server: u32,
        /// Ours.
        local: u64,
    },
}

/// A connection after its handshake.
#[derive(Debug)]
pub struct Connected {
    /// What the server said.
    pub welcome: Welcome,
    /// Reads frames from the server.
    pub reader: FrameReader<Conn>,
    /// Writes frames to the server.
    pub writer: FrameWriter<Conn>,
    /// What to verify the region against, when asked for.
    pub reference: Option<Reference>,
}

/// What a region is verified against.
#[derive(Debug, Clone)]
pub enum Reference {
    /// The server's checksum of each page.
    Checksums(Vec<u64>),
    /// A synthetic image, whose pages the client regenerates itself.
    Synthetic(Synthetic),
}

/// Parameters of a hello.
#[derive(Debug, Clone)]
pub struct HelloParams {
    /// Session to join (0: open a new one).
    pub session: u64,
    /// Placement unit in bytes.
    pub unit: u64,
    /// Expected image id (0: any).
    pub image_id: u64,
    /// Token (empty: none).
    pub token: Vec<u8>,
}

/// The longest a TCP connect may take (per address).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// The longest the server may take to answer a hello (and send the checksums).
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);

/// Connects and performs the handshake for `role`.
pub fn connect(
    endpoint: &Endpoint,
    role: Role,
    params: &HelloParams,
    want_checksums: bool,
) -> Result<Connected, ConnectError> {
    connect_with(
        endpoint,
        role,
        params,
        want_checksums,
        None,
        HANDSHAKE_TIMEOUT,
    )
}

/// [`connect`], giving up after `within` (at most the usual 5 s to connect and 30 s for the
/// handshake): a reconnection must not outlast `--reconnect-timeout`.
pub fn connect_within(
    endpoint: &Endpoint,
    role: Role,
    params: &HelloParams,
    within: Duration,
) -> Result<Connected, ConnectError> {
    connect_with(endpoint, role, params, false, None, within)
}

/// Connects the urgent connection of an existing session again, telling the server which
/// pages the client has (`have`: its received bitmap words), so that only the rest is sent.
/// Gives up after `within` (at most 5 s to connect and 30 s for the handshake).
pub fn resume(
    endpoint: &Endpoint,
    params: &HelloParams,
    have: &[u64],
    within: Duration,
) -> Result<Connected, ConnectError> {
    connect_with(endpoint, Role::Urgent, params, false, Some(have), within)
}

/// Attempts at most this many handshakes while the server answers "too many sessions".
const ATTEMPTS: u32 = 5;

/// [`handshake`], again after a short pause while the server answers "too many sessions"
/// (error 4): a server flooded with connections drops the oldest that have not sent their
/// hello, which may, rarely, be this one; the next attempt gets in.
fn connect_with(
    endpoint: &Endpoint,
    role: Role,
    params: &HelloParams,
    want_checksums: bool,
    have: Option<&[u64]>,
    within: Duration,
) -> Result<Connected, ConnectError> {
    let started = std::time::Instant::now();
    let mut pause = Duration::from_millis(20);
    let mut attempt = 1;
    loop {
        let left = within.saturating_sub(started.elapsed());
        match handshake(endpoint, role, params, want_checksums, have, left) {
            Err(ConnectError::Refused {
                code: ErrorCode::TooManySessions,
                message,
            }) if attempt < ATTEMPTS && left > pause => {
                tracing::debug!("page server busy ({message}); trying again");
                std::thread::sleep(pause);
                pause *= 2;
                attempt += 1;
            }
            other => return other,
        }
    }
}

/// One connection and handshake, giving up after `within`.
fn handshake(
    endpoint: &Endpoint,
    role: Role,
    params: &HelloParams,
    want_checksums: bool,
    have: Option<&[u64]>,
    within: Duration,
) -> Result<Connected, ConnectError> {
    let within = within.max(Duration::from_millis(100));
    let conn = Conn::connect(endpoint, CONNECT_TIMEOUT.min(within)).map_err(|source| {
        ConnectError::Unreachable {
            addr: endpoint.to_string(),
            source,
        }
    })?;
    let read_half = conn.try_clone().map_err(WireError::Io)?;
    let mut writer = FrameWriter::new(conn);
    let mut reader = FrameReader::new(read_half);
    let page = uffd_core::page_size() as u64;
    writer
        .send(&Frame::Hello(Hello {
            version: proto::VERSION,
            role,
            flags: if want_checksums {
                proto::HELLO_WANT_CHECKSUMS | proto::HELLO_SYNTHETIC_OK
            } else {
                0
            } | if have.is_some() {
                proto::HELLO_RESUME
            } else {
                0
            },
            session: params.session,
            unit: params.unit,
            image_id: params.image_id,
            token: &params.token,
        }))
        .map_err(WireError::Io)?;
    if let Some(words) = have {
        let per_frame = (proto::MAX_PAYLOAD - 8) / 8;
        for (i, chunk) in words.chunks(per_frame).enumerate() {
            let raw = proto::encode_u64s(chunk.iter().copied());
            writer
                .send(&Frame::Have {
                    first_word: (i * per_frame) as u64,
                    raw: &raw,
                })
                .map_err(WireError::Io)?;
        }
    }
    let waited = HANDSHAKE_TIMEOUT.min(within);
    reader
        .get_ref()
        .set_read_timeout(Some(waited))
        .map_err(WireError::Io)?;
    let answer = match reader.read_frame(&Limits::handshake(page)) {
        Err(WireError::Io(err)) if err.kind() == std::io::ErrorKind::WouldBlock => {
            return Err(ConnectError::NoWelcome {
                addr: endpoint.to_string(),
                waited,
            })
        }
        other => other?,
    };
    let welcome = match answer {
        Some(Frame::Welcome(w)) => w,
        Some(Frame::Error { code, message }) => {
            return Err(ConnectError::Refused {
                code,
                message: message.to_string(),
            })
        }
        Some(other) => return Err(ConnectError::Unexpected(other.kind())),
        None => return Err(ConnectError::Closed),
    };
    if u64::from(welcome.page_size) != page {
        return Err(ConnectError::PageSize {
            server: welcome.page_size,
            local: page,
        });
    }
    let limits = Limits::new(welcome.image_size, page);
    let reference = if welcome.flags & proto::WELCOME_SYNTHETIC_FOLLOWS != 0 {
        match reader.read_frame(&limits)? {
            Some(Frame::Synthetic {
                seed,
                zero_fraction,
            }) => {
                let mismatch = || ConnectError::Synthetic {
                    seed,
                    zero_fraction,
                };
                let synthetic = Synthetic::new(welcome.image_size, seed, zero_fraction, page)
                    .map_err(|_| mismatch())?;
                if synthetic.id() != welcome.image_id {
                    return Err(mismatch());
                }
                Some(Reference::Synthetic(synthetic))
            }
            Some(other) => return Err(ConnectError::Unexpected(other.kind())),
            None => return Err(ConnectError::Closed),
        }
    } else if welcome.flags & proto::WELCOME_CHECKSUMS_FOLLOW != 0 {
        let pages = limits.pages();
        // Grown as frames arrive: the welcome's size is not trusted with a big allocation.
        let mut sums = Vec::new();
        while (sums.len() as u64) < pages {
            match reader.read_frame(&limits)? {
                Some(frame @ Frame::Checksums { first_page, .. })
                    if first_page == sums.len() as u64 =>
                {
                    sums.extend(frame.checksums())
                }
                Some(other) => return Err(ConnectError::Unexpected(other.kind())),
                None => return Err(ConnectError::Closed),
            }
        }
        Some(Reference::Checksums(sums))
    } else {
        None
    };
    reader
        .get_ref()
        .set_read_timeout(None)
        .map_err(WireError::Io)?;
    Ok(Connected {
        welcome,
        reader,
        writer,
        reference,
    })
}
