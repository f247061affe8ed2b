//! `uffd_core::proto::decode` on arbitrary bytes, with limits chosen by the input's first
//! bytes (see `frames::limits_from`): never panics; a decoded frame re-encodes to the bytes
//! it came from and decodes again to the same frame; `used` never exceeds the input.
#![no_main]

use libfuzzer_sys::fuzz_target;
use uffd_lab_fuzz::{frames, oracle, session};

fuzz_target!(|data: &[u8]| {
    let (limits, rest) = frames::limits_from(data);
    oracle::check_decode(rest, &limits);
    // The same bytes against fixed limits too: the image of the session target, and the
    // handshake limits (before the image size is known).
    oracle::check_decode(rest, &uffd_core::Limits::new(session::IMAGE_LEN, 4096));
    oracle::check_decode(rest, &uffd_core::Limits::handshake(4096));
});
