//! Registering ranges with a userfaultfd (UFFDIO_REGISTER and UNREGISTER, the modes), and
//! write-protecting registered ranges.

use userfaultfd::RegisterMode;

use super::{Result, UffdError, Userfaultfd};
use crate::convert::usize_from;

/// Registration modes (`UFFDIO_REGISTER_MODE_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Modes {
    /// Faults on missing pages (resolved by COPY, ZEROPAGE, MOVE).
    pub missing: bool,
    /// Writes to write-protected pages (resolved by WRITEPROTECT).
    pub write_protect: bool,
    /// Faults on pages present in the page cache but not mapped (resolved by CONTINUE).
    pub minor: bool,
}

impl Modes {
    /// MISSING only: the classic on-demand paging registration.
    pub const MISSING: Modes = Modes {
        missing: true,
        write_protect: false,
        minor: false,
    };

    fn to_crate(self) -> RegisterMode {
        let mut mode = RegisterMode::empty();
        if self.missing {
            mode |= RegisterMode::MISSING;
        }
        if self.write_protect {
            mode |= RegisterMode::WRITE_PROTECT;
        }
        if self.minor {
            mode |= RegisterMode::MINOR;
        }
        mode
    }
}

impl Userfaultfd {
    /// Registers `start..start+len` and returns the `ioctl_bit` mask the kernel allows there.
    pub fn register(&self, start: u64, len: u64, modes: Modes) -> Result<u64> {
        self.uffd
            .register_with_mode(
                start as *mut libc::c_void,
                usize_from(len),
                modes.to_crate(),
            )
            .map(|ioctls| ioctls.bits())
            .map_err(|source| UffdError::Register { start, len, source })
    }

    /// Unregisters a range; faults there become ordinary faults again.
    pub fn unregister(&self, start: u64, len: u64) -> Result<()> {
        self.uffd
            .unregister(start as *mut libc::c_void, usize_from(len))
            .map_err(UffdError::Unregister)
    }

    /// Write-protects (`protect`) or un-protects a range registered with WP.
    pub fn write_protect(&self, start: u64, len: u64, protect: bool) -> Result<()> {
        let ptr = start as *mut libc::c_void;
        let result = if protect {
            self.uffd.write_protect(ptr, usize_from(len))
        } else {
            self.uffd
                .remove_write_protection(ptr, usize_from(len), true)
        };
        result.map_err(UffdError::Read)
    }
}
