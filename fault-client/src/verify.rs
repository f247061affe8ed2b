//! The end of a run: fetch every page still missing, compare each with the server's
//! reference (checksums, or the synthetic page regenerated here), or write the region out.

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use crate::connect::Reference;
use crate::error::ClientError;
use crate::pager::Pager;
use uffd_core::convert::usize_from;

/// Touches every page still mapped, so the whole image arrives. The touching is done by a
/// helper thread: a touch blocks until its page is placed, and if the server is lost for good
/// that is never; the caller returns the error instead (the blocked helper ends with the
/// process, never released onto a page that did not come from the server).
fn fetch_all(pager: &Arc<Pager>) -> Result<(), ClientError> {
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (p, finished) = (Arc::clone(pager), Arc::clone(&done));
    std::thread::Builder::new()
        .name("fetch-all".into())
        .spawn(move || {
            for index in (0..p.pages).filter(|&i| !p.page_state.gone.get(usize_from(i))) {
                // SAFETY: the address is inside the registered region; a missing page is
                // fetched on demand and this thread blocks until it is placed.
                unsafe { std::ptr::read_volatile(p.page_addr(index) as *const u8) };
            }
            finished.store(true, Ordering::Release);
            p.run.notify();
        })
        .map_err(ClientError::Spawn)?;
    pager
        .run
        .wait_until(|| done.load(Ordering::Acquire))
        .map_err(ClientError::from)
}

/// Fetches every page, then compares each page with the reference: the server's checksum,
/// or the synthetic page regenerated here.
pub(crate) fn verify(pager: &Arc<Pager>, reference: &Reference) -> Result<bool, ClientError> {
    fetch_all(pager)?;
    let page = usize::try_from(pager.page).unwrap_or(4096);
    let mut expected = vec![0u8; page];
    let mut bad = 0u64;
    for index in 0..pager.pages {
        if pager.page_state.gone.get(usize_from(index)) {
            continue; // unmapped by the application
        }
        let addr = pager.page_addr(index) as *const u8;
        // SAFETY: every page is present (fetched above) and nothing writes the region now.
        let bytes = unsafe { std::slice::from_raw_parts(addr, page) };
        // A page the application discarded reads as zeros (see crate::events).
        let discarded = pager.page_state.discarded.get(usize_from(index));
        let same = match reference {
            Reference::Checksums(sums) => {
                let sum = if discarded {
                    expected.fill(0);
                    uffd_core::checksum(&expected)
                } else {
                    sums.get(usize_from(index)).copied().unwrap_or_default()
                };
                uffd_core::checksum(bytes) == sum
            }
            Reference::Synthetic(synthetic) => {
                if discarded {
                    expected.fill(0);
                } else {
                    synthetic.fill(index, &mut expected);
                }
                bytes == &expected[..]
            }
        };
        if !same {
            if bad < 10 {
                tracing::warn!("page {index} differs from the server's image");
            }
            bad += 1;
        }
    }
    Ok(bad == 0)
}

pub(crate) fn dump(pager: &Arc<Pager>, image_size: u64, path: &PathBuf) -> Result<(), ClientError> {
    fetch_all(pager)?;
    // SAFETY: every page is present and nothing writes the region now.
    let bytes = unsafe {
        std::slice::from_raw_parts(
            pager.memory.addr() as *const u8,
            usize::try_from(image_size).unwrap_or(usize::MAX),
        )
    };
    std::fs::write(path, bytes).map_err(|source| ClientError::Dump {
        path: path.clone(),
        source,
    })
}
