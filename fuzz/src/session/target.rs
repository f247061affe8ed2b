//! The server a script is played against: the image every harness server serves, the two
//! server variants, and how to reach one.

use page_server::{Config, Image};
use uffd_core::proto::Limits;

/// Page size of the served image.
pub const PAGE: u64 = 4096;
/// The served image: 69 pages and 1000 bytes, 70 pages in all (the last one is partial, served
/// padded; not a multiple of 64, so a have bitmap's last word has unused bits).
pub const IMAGE_LEN: u64 = 69 * PAGE + 1000;
/// Pages of the served image.
pub const IMAGE_PAGES: u64 = IMAGE_LEN.div_ceil(PAGE);
/// The token of server variant B.
pub const TOKEN: &[u8] = b"fuzz-token";
/// A background hello that joins an unknown session uses this id.
pub(super) const NO_SESSION: u64 = 0xdead_0000_0000_0001;

/// The image every harness server serves.
pub fn image() -> Image {
    Image::synthetic(IMAGE_LEN, 7, 0.3, PAGE).expect("synthetic image")
}

/// Server variant A: the defaults (preemption, 64 KiB chunks, no token).
/// Variant B: a token, 4 KiB chunks, no preemption (urgent answers wait for the unit on the
/// wire). `tolerate_leaks` lifts the session limit so leaked sessions cannot refuse hellos.
pub fn configure(config: &mut Config, variant_b: bool, tolerate_leaks: bool) {
    if variant_b {
        config.token = Some(TOKEN.to_vec());
        config.policy.chunk = PAGE;
        config.policy.preempt = false;
    }
    if tolerate_leaks {
        config.max_sessions = usize::MAX;
    }
}

/// The server a script is played against.
pub struct Target<'a> {
    /// `host:port`.
    pub addr: &'a str,
    /// The image it serves (the harness checks every page against it).
    pub image: &'a Image,
    /// Its token, if it requires one.
    pub token: Option<&'a [u8]>,
    /// Its number of live sessions, when the harness can see it (an in-process server):
    /// checked to fall back to zero once a script's connections are closed.
    pub sessions: Option<&'a (dyn Fn() -> usize + Sync)>,
    /// Sessions of earlier scripts may still be registered (a server whose leaks are not
    /// checked): "too many sessions" is then an acceptable answer to a new session's hello,
    /// and a background hello naming any id may be welcomed (a resumption creates a session
    /// with the id the client names, and it may have outlived its script).
    pub leftover_sessions: bool,
}

impl std::fmt::Debug for Target<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Target")
            .field("addr", &self.addr)
            .field("token", &self.token)
            .finish_non_exhaustive()
    }
}

impl Target<'_> {
    pub(super) fn limits(&self) -> Limits {
        Limits::new(self.image.len(), self.image.page_size())
    }
}
