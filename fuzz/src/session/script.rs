//! A script of client operations, and its byte format (a fuzz input, or a seed of the corpus).

/// Operations of a script beyond this are dropped.
const MAX_OPS: usize = 128;

/// A hello as the script describes it (see [`Script::parse`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HelloOp {
    /// Role byte: 1 urgent, 2 background, anything else is written as is.
    pub role: u8,
    /// Hello flags (1: send checksums, 4: a synthetic image's parameters will do).
    pub flags: u8,
    /// 0: new session; 1: join connection 0's session; n: the unknown id n * 0x0101..01.
    pub session: u8,
    /// Placement unit: `1 << (unit_log2 % 64)`.
    pub unit_log2: u8,
    /// Image id: 0 any, 1 the served image's, n the wrong id n.
    pub image: u8,
    /// Token: 0 none, 1 the right one, n a wrong one of `n % 32 + 1` bytes.
    pub token: u8,
    /// Damage: 1 bad magic, 2 bad version, 3 token length one too long, 4 cut in half,
    /// 5 header flags set (ignored by the decoder), anything else none.
    pub twist: u8,
}

impl HelloOp {
    /// A hello from its seven argument bytes, in the order of [`Script::parse`]'s table.
    pub fn from_bytes(bytes: [u8; 7]) -> HelloOp {
        let [role, flags, session, unit_log2, image, token, twist] = bytes;
        HelloOp {
            role,
            flags,
            session,
            unit_log2,
            image,
            token,
            twist,
        }
    }

    /// The seven argument bytes [`HelloOp::from_bytes`] reads.
    pub fn to_bytes(self) -> [u8; 7] {
        [
            self.role,
            self.flags,
            self.session,
            self.unit_log2,
            self.image,
            self.token,
            self.twist,
        ]
    }
}

/// One operation of a script.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Open the next connection; later operations go to it (at most four connections).
    Connect,
    /// Send a hello.
    Hello(HelloOp),
    /// Request pages `first..first+count` (page-aligned; may be empty or past the end).
    Request {
        /// First page.
        first: u8,
        /// Pages.
        count: u8,
    },
    /// Request any byte range.
    RequestRaw {
        /// Offset in bytes.
        offset: u64,
        /// Length in bytes.
        len: u64,
    },
    /// Send raw bytes (at most 255).
    Raw(Vec<u8>),
    /// Send a frame with this kind byte, flags and payload (reserved bits 0, true length).
    Frame {
        /// Kind byte.
        kind: u8,
        /// Flags byte.
        flags: u8,
        /// Payload (at most 65535 bytes).
        payload: Vec<u8>,
    },
    /// Reset the connection (close with SO_LINGER 0) without reading the rest.
    Abort,
    /// Wait up to 50 ms for the next frame on this connection.
    Wait,
}

/// A script: the server variant and the operations.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Script {
    /// Use server variant B (token, no preemption).
    pub variant_b: bool,
    /// The operations, in order.
    pub ops: Vec<Op>,
}

impl Script {
    /// Parses a fuzz input. Format: one config byte (bit 0: server variant B), then
    /// operations, each an opcode and its arguments:
    ///
    /// | opcode | operation | arguments |
    /// |-------:|-----------|-----------|
    /// | 0 | connect | |
    /// | 1 | hello | role, flags, session, unit_log2, image, token, twist (1 byte each) |
    /// | 2 | request pages | first, count (1 byte each) |
    /// | 3 | request bytes | offset u64 LE, length u64 LE |
    /// | 4 | raw | n, n bytes |
    /// | 5 | frame | kind, flags, n u16 LE, n payload bytes |
    /// | 6 | abort | |
    /// | 7 | wait | |
    /// | other | raw | the opcode byte itself is sent |
    ///
    /// An operation cut short by the end of the input is dropped.
    pub fn parse(data: &[u8]) -> Script {
        let (variant_b, mut rest) = match data.split_first() {
            Some((&config, rest)) => (config & 1 != 0, rest),
            None => (false, data),
        };
        let mut ops = Vec::new();
        while let Some((&code, args)) = rest.split_first() {
            if ops.len() >= MAX_OPS {
                break;
            }
            let (op, used) = match code {
                0 => (Op::Connect, 0),
                1 => match args.first_chunk::<7>() {
                    Some(&bytes) => (Op::Hello(HelloOp::from_bytes(bytes)), 7),
                    None => break,
                },
                2 => match args.first_chunk::<2>() {
                    Some(&[first, count]) => (Op::Request { first, count }, 2),
                    None => break,
                },
                3 => match args.first_chunk::<16>() {
                    Some(raw) => {
                        let (offset, len) = raw.split_at(8);
                        (
                            Op::RequestRaw {
                                offset: u64::from_le_bytes(offset.try_into().expect("8 bytes")),
                                len: u64::from_le_bytes(len.try_into().expect("8 bytes")),
                            },
                            16,
                        )
                    }
                    None => break,
                },
                4 => match args.split_first() {
                    Some((&n, bytes)) if bytes.len() >= usize::from(n) => (
                        Op::Raw(bytes[..usize::from(n)].to_vec()),
                        1 + usize::from(n),
                    ),
                    _ => break,
                },
                5 => match args.first_chunk::<4>() {
                    Some(&[kind, flags, lo, hi]) => {
                        let n = usize::from(u16::from_le_bytes([lo, hi]));
                        if args.len() < 4 + n {
                            break;
                        }
                        let payload = args[4..4 + n].to_vec();
                        (
                            Op::Frame {
                                kind,
                                flags,
                                payload,
                            },
                            4 + n,
                        )
                    }
                    None => break,
                },
                6 => (Op::Abort, 0),
                7 => (Op::Wait, 0),
                other => (Op::Raw(vec![other]), 0),
            };
            ops.push(op);
            rest = &args[used..];
        }
        Script { variant_b, ops }
    }

    /// Encodes the script in the format [`Script::parse`] reads.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = vec![u8::from(self.variant_b)];
        for op in &self.ops {
            match op {
                Op::Connect => out.push(0),
                Op::Hello(h) => {
                    out.push(1);
                    out.extend_from_slice(&h.to_bytes());
                }
                Op::Request { first, count } => out.extend_from_slice(&[2, *first, *count]),
                Op::RequestRaw { offset, len } => {
                    out.push(3);
                    out.extend_from_slice(&offset.to_le_bytes());
                    out.extend_from_slice(&len.to_le_bytes());
                }
                Op::Raw(bytes) => {
                    let bytes = &bytes[..bytes.len().min(255)];
                    out.push(4);
                    out.push(u8::try_from(bytes.len()).unwrap_or(u8::MAX));
                    out.extend_from_slice(bytes);
                }
                Op::Frame {
                    kind,
                    flags,
                    payload,
                } => {
                    let payload = &payload[..payload.len().min(usize::from(u16::MAX))];
                    out.extend_from_slice(&[5, *kind, *flags]);
                    let n = u16::try_from(payload.len()).unwrap_or(u16::MAX);
                    out.extend_from_slice(&n.to_le_bytes());
                    out.extend_from_slice(payload);
                }
                Op::Abort => out.push(6),
                Op::Wait => out.push(7),
            }
        }
        out
    }
}
