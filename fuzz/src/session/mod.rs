//! The hostile-session harness: a script of client operations (hellos of every kind, requests
//! with any offsets and lengths, arbitrary frames, raw garbage, resets) is played against a
//! live page-server over TCP, on up to four connections, and everything the server answers
//! is checked against a model of the protocol:
//!
//! - every byte the server sends decodes as frames against the image's limits;
//! - the first frame the client sent decides the answer: nothing (an incomplete or absent
//!   hello), exactly one error frame with the right code, or a welcome with the image's true
//!   size, page size and id, followed by the checksums if asked (equal to the image's), or
//!   the synthetic image's parameters if the hello says the client can regenerate it;
//! - an error frame is the last thing on a connection, which is then closed, within 10 s;
//! - data frames carry the image's bytes and never a zero page, zero frames only zero pages;
//!   an urgent connection only gets pages it asked for; no page is sent twice in a session;
//!   a background stream that ends with an end frame has, with the urgent answers, sent
//!   every page;
//! - with an in-process server, every session is gone once its connections are (no leak).
//!
//! Afterwards a well-behaved client ([`still_serves`]) must still get its page.
//!
//! Shared by the `session` fuzz target (through `src/lib.rs`) and by `tests/fuzz_session.rs`
//! (which includes this module with `#[path]`). The script's byte format is documented on
//! [`Script::parse`]; `fuzz/examples/gen_corpus.rs` writes seeds with [`Script::encode`].
//!
//! # Modules, each using only those above it
//! - `target`: the served image, the server variants, [`Target`];
//! - `script`: [`Script`], its operations and byte format;
//! - `connection`: one connection, its writer and its reader thread;
//! - `expect`: the model, what a connection's bytes must be answered with;
//! - `answer`: one connection's answer checked against the model, counted in [`Summary`];
//! - `check`: the whole script checked, per session;
//! - `play`: [`play()`] and [`still_serves`].

mod answer;
mod check;
mod connection;
mod expect;
mod play;
mod script;
mod target;

pub use answer::Summary;
pub use play::{play, still_serves};
pub use script::{HelloOp, Op, Script};
pub use target::{configure, image, Target, IMAGE_LEN, PAGE, TOKEN};
