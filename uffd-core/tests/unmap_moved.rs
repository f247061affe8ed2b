//! `Region::unmap_moved`, in a test binary of its own: it checks that addresses are no longer
//! mapped, which another test thread's allocation in the same process could map again at any
//! moment (seen once in a full-suite run).

use uffd_core::convert::u64_from;
use uffd_core::region::{page_size, Region};

/// True if `addr` is mapped (msync answers ENOMEM for an unmapped page).
fn mapped(addr: u64) -> bool {
    // SAFETY: msync only inspects the mapping of the page; MS_ASYNC writes nothing back.
    unsafe { libc::msync(addr as *mut libc::c_void, page_size(), libc::MS_ASYNC) == 0 }
}

#[test]
fn unmap_moved_spares_the_holes_the_moves_left() {
    let bytes = page_size();
    let page = u64_from(bytes);
    let region = Region::anonymous(4 * bytes).expect("mmap");
    let base = region.addr();
    // The application moves page 1 elsewhere (to an address it got from mmap)...
    let target = Region::anonymous(bytes).expect("target");
    let to = target.addr();
    // The mremap below replaces it.
    std::mem::forget(target);
    // SAFETY: page 1 of `region` and the page at `to` are mappings of this test only.
    let moved = unsafe {
        libc::mremap(
            (base + page) as *mut libc::c_void,
            bytes,
            bytes,
            libc::MREMAP_MAYMOVE | libc::MREMAP_FIXED,
            to as *mut libc::c_void,
        )
    };
    assert_eq!(
        moved as u64,
        to,
        "mremap: {}",
        std::io::Error::last_os_error()
    );
    // ...and maps something new in the hole.
    // SAFETY: MAP_FIXED_NOREPLACE only takes the address if nothing is mapped there.
    let other = unsafe {
        libc::mmap(
            (base + page) as *mut libc::c_void,
            bytes,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED_NOREPLACE,
            -1,
            0,
        )
    };
    assert_eq!(other as u64, base + page);
    region.unmap_moved(&[(base, page), (to, page), (base + 2 * page, 2 * page)]);
    assert!(
        mapped(base + page),
        "the other mapping in the hole was unmapped"
    );
    for addr in [base, to, base + 2 * page, base + 3 * page] {
        assert!(!mapped(addr), "{addr:#x} still mapped");
    }
    // SAFETY: the test's own mapping in the hole.
    unsafe { libc::munmap(other, bytes) };
}
