//! Writes the seed corpus of every target to fuzz/corpus/<target>/seed-*: valid frames of
//! every kind (and truncated or corrupted copies) for `decode`, frame streams in various piece
//! sizes for `stream`, and client scripts for `session`.
//!
//! ```sh
//! cargo run --manifest-path fuzz/Cargo.toml --example gen_corpus
//! ```

use std::path::{Path, PathBuf};

use uffd_core::proto::{self, ErrorCode, Frame, Welcome};
use uffd_lab_fuzz::frames::{self, corrupted, encode, limits_from, valid_frames};
use uffd_lab_fuzz::session::{HelloOp, Op, Script, IMAGE_LEN, PAGE};

fn write_all(dir: &Path, seeds: &[Vec<u8>]) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with("seed-"))
        {
            std::fs::remove_file(path)?;
        }
    }
    for (i, seed) in seeds.iter().enumerate() {
        std::fs::write(dir.join(format!("seed-{i:03}")), seed)?;
    }
    println!("{}: {} seeds", dir.display(), seeds.len());
    Ok(())
}

/// Selector bytes for `frames::limits_from`.
fn selectors() -> Vec<Vec<u8>> {
    let small = frames::small_image_selector(IMAGE_LEN);
    let mut page512 = small.clone();
    page512[0] |= 1; // page size 512
    let mut tight = small.clone();
    tight[0] |= 0x10; // max payload: one page
    let mut literal = vec![3 << 2];
    literal.extend_from_slice(&u64::MAX.to_le_bytes());
    vec![small, page512, tight, vec![0], literal]
}

fn decode_seeds() -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for (n, sel) in selectors().into_iter().enumerate() {
        let (limits, _) = limits_from(&sel);
        for frame in valid_frames(&limits) {
            let mut seed = sel.clone();
            seed.extend_from_slice(&frame);
            out.push(seed);
            if n == 0 {
                for bad in corrupted(&frame).into_iter().take(4) {
                    let mut seed = sel.clone();
                    seed.extend_from_slice(&bad);
                    out.push(seed);
                }
            }
        }
    }
    out
}

fn stream_seeds() -> Vec<Vec<u8>> {
    let sel = frames::small_image_selector(IMAGE_LEN);
    let (limits, _) = limits_from(&sel);
    let valid = valid_frames(&limits);
    let page = vec![0x5au8; usize::try_from(PAGE).expect("a page fits in memory")];
    let server_side: Vec<u8> = [
        encode(&Frame::Welcome(Welcome {
            version: proto::VERSION,
            flags: 0,
            session: 7,
            image_size: IMAGE_LEN,
            page_size: 4096,
            image_id: 1,
        })),
        encode(&Frame::Data {
            offset: 0,
            bytes: &page,
        }),
        encode(&Frame::Zero {
            offset: PAGE,
            len: 3 * PAGE,
        }),
        encode(&Frame::End),
    ]
    .concat();
    let everything: Vec<u8> = valid.concat();
    let mut with_error = server_side[..server_side.len() - 8].to_vec();
    with_error.extend_from_slice(&encode(&Frame::Error {
        code: ErrorCode::Protocol,
        message: "unknown frame kind 71",
    }));
    let mut truncated = everything.clone();
    truncated.truncate(everything.len() - 5);
    let mut garbage = server_side.clone();
    garbage.extend_from_slice(b"GET / HTTP/1.1\r\n\r\n");
    let mut oversized = valid[0].clone();
    oversized.extend_from_slice(&[5, 0, 0, 0, 0xff, 0xff, 0xff, 0xff]);
    let streams = [
        server_side,
        everything,
        with_error,
        truncated,
        garbage,
        oversized,
    ];
    let piece_lists: [&[u8]; 4] = [&[], &[1], &[3, 0, 200, 8], &[64, 64, 255]];
    let mut out = Vec::new();
    for stream in &streams {
        for pieces in piece_lists {
            let mut seed = sel.clone();
            seed.push(u8::try_from(pieces.len()).unwrap_or(0));
            seed.extend_from_slice(pieces);
            seed.extend_from_slice(stream);
            out.push(seed);
        }
    }
    out
}

fn hello(role: u8) -> HelloOp {
    HelloOp {
        role,
        flags: 0,
        session: 0,
        unit_log2: 12,
        image: 0,
        token: 1,
        twist: 0,
    }
}

fn session_seeds() -> Vec<Vec<u8>> {
    let urgent = hello(1);
    let checksums = HelloOp { flags: 1, ..urgent };
    let join = HelloOp {
        role: 2,
        session: 1,
        ..urgent
    };
    let huge_unit = HelloOp {
        unit_log2: 21,
        ..urgent
    };
    let resume = HelloOp {
        flags: 2,
        session: 9,
        ..urgent
    };
    let have = |first: u64, words: &[u64]| -> Vec<u8> {
        let mut payload = first.to_le_bytes().to_vec();
        for w in words {
            payload.extend_from_slice(&w.to_le_bytes());
        }
        payload
    };
    let req = |first, count| Op::Request { first, count };
    let raw = |bytes: &[u8]| Op::Raw(bytes.to_vec());
    let frame = |kind, payload: &[u8]| Op::Frame {
        kind,
        flags: 0,
        payload: payload.to_vec(),
    };
    let scripts: Vec<(bool, Vec<Op>)> = vec![
        // Well-behaved sessions.
        (
            false,
            vec![Op::Hello(urgent), req(0, 1), req(5, 3), req(63, 1)],
        ),
        (
            true,
            vec![Op::Hello(urgent), req(0, 1), Op::Wait, req(10, 20)],
        ),
        (false, vec![Op::Hello(checksums), req(1, 1)]),
        (
            false,
            vec![
                Op::Hello(urgent),
                Op::Wait,
                Op::Connect,
                Op::Hello(join),
                Op::Connect,
                Op::Hello(join),
            ],
        ),
        (
            true,
            vec![
                Op::Hello(huge_unit),
                Op::Wait,
                Op::Connect,
                Op::Hello(HelloOp {
                    unit_log2: 21,
                    ..join
                }),
                Op::Wait,
                req(0, 64),
            ],
        ),
        (
            false,
            vec![
                Op::Hello(urgent),
                req(3, 1),
                Op::Connect,
                Op::Hello(urgent),
                req(3, 1),
            ],
        ),
        // Bad first frames.
        (false, vec![raw(b"GET / HTTP/1.1\r\n\r\n")]),
        (false, vec![req(0, 1)]),
        (false, vec![Op::Hello(HelloOp { twist: 1, ..urgent })]),
        (false, vec![Op::Hello(HelloOp { twist: 2, ..urgent })]),
        (false, vec![Op::Hello(HelloOp { twist: 3, ..urgent })]),
        (false, vec![Op::Hello(HelloOp { twist: 4, ..urgent })]),
        (
            false,
            vec![Op::Hello(HelloOp { twist: 5, ..urgent }), req(2, 2)],
        ),
        (false, vec![Op::Hello(HelloOp { role: 3, ..urgent })]),
        (
            false,
            vec![Op::Hello(HelloOp {
                unit_log2: 11,
                ..urgent
            })],
        ),
        (true, vec![Op::Hello(HelloOp { token: 9, ..urgent })]),
        (false, vec![Op::Hello(HelloOp { image: 2, ..urgent })]),
        (
            false,
            vec![Op::Hello(HelloOp {
                session: 5,
                ..urgent
            })],
        ),
        (false, vec![Op::Hello(HelloOp { session: 5, ..join })]),
        (false, vec![raw(&[5, 0, 0, 0, 0xff, 0xff, 0xff, 0xff])]),
        // Bad frames after a good hello.
        (false, vec![Op::Hello(urgent), req(64, 1)]),
        (false, vec![Op::Hello(urgent), req(0, 0)]),
        (
            false,
            vec![
                Op::Hello(urgent),
                Op::RequestRaw {
                    offset: 17,
                    len: PAGE,
                },
            ],
        ),
        (
            false,
            vec![
                Op::Hello(urgent),
                Op::RequestRaw {
                    offset: u64::MAX - 4095,
                    len: 2 * PAGE,
                },
            ],
        ),
        (
            false,
            vec![Op::Hello(urgent), req(1, 1), frame(5, &[0u8; 8 + 4096])],
        ),
        (false, vec![Op::Hello(urgent), frame(9, &[0u8; 16])]),
        (false, vec![Op::Hello(urgent), frame(7, &[])]),
        (false, vec![Op::Hello(urgent), Op::Hello(urgent)]),
        (
            false,
            vec![Op::Hello(urgent), req(1, 1), raw(&[4, 0, 0, 0, 16])],
        ),
        // Resumptions: the received bitmap (70 pages: two words) in have frames.
        (
            false,
            vec![
                Op::Hello(resume),
                frame(9, &have(0, &[0x0f0f, 0])),
                frame(9, &have(1, &[1 << 5])),
                req(0, 8),
                req(69, 1),
            ],
        ),
        (
            false,
            vec![
                Op::Hello(resume),
                frame(9, &have(0, &[u64::MAX, u64::MAX])),
                Op::Connect,
                Op::Hello(HelloOp {
                    session: 1,
                    role: 2,
                    ..urgent
                }),
            ],
        ),
        (
            false,
            vec![
                Op::Hello(urgent),
                req(0, 2),
                Op::Wait,
                Op::Connect,
                Op::Hello(HelloOp {
                    session: 1,
                    flags: 2,
                    ..urgent
                }),
                frame(9, &have(0, &[3, 0])),
                req(0, 4),
            ],
        ),
        (false, vec![Op::Hello(resume), frame(9, &have(1, &[0]))]),
        (false, vec![Op::Hello(resume), req(0, 1)]),
        (false, vec![Op::Hello(resume)]),
        // Resets.
        (false, vec![Op::Hello(urgent), req(0, 64), Op::Abort]),
        (false, vec![Op::Hello(checksums), Op::Abort]),
        (
            false,
            vec![
                Op::Hello(urgent),
                Op::Connect,
                Op::Hello(join),
                Op::Abort,
                Op::Connect,
                Op::Hello(urgent),
                req(9, 1),
            ],
        ),
    ];
    scripts
        .into_iter()
        .map(|(variant_b, ops)| Script { variant_b, ops }.encode())
        .collect()
}

fn main() -> std::io::Result<()> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("corpus");
    write_all(&root.join("decode"), &decode_seeds())?;
    write_all(&root.join("stream"), &stream_seeds())?;
    write_all(&root.join("session"), &session_seeds())?;
    Ok(())
}
