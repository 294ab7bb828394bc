//! Process file descriptors (`pidfd_open(2)`, Linux 5.3 and later), to signal a silo's PID 1
//! without the risk that its pid was reused by an unrelated process.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use nix::sys::signal::Signal;

/// A handle on one process that stays valid after the process exits.
#[derive(Debug)]
pub struct PidFd(OwnedFd);

impl PidFd {
    /// Opens a pidfd for process `pid`, which must be alive (or a zombie not yet reaped).
    pub fn open(pid: u32) -> io::Result<PidFd> {
        let pid =
            libc::pid_t::try_from(pid).map_err(|_| io::Error::from_raw_os_error(libc::ESRCH))?;
        let flags: libc::c_uint = 0;
        // SAFETY: pidfd_open takes two integers and returns a new descriptor or -1.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, flags) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        let fd = RawFd::try_from(fd).map_err(|_| io::Error::from_raw_os_error(libc::EBADF))?;
        // SAFETY: the kernel just returned this descriptor, and nothing else owns it.
        Ok(PidFd(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    /// Sends `signal` to the process. Fails with ESRCH once the process has exited.
    pub fn send_signal(&self, signal: Signal) -> io::Result<()> {
        let info: *const libc::siginfo_t = std::ptr::null();
        let flags: libc::c_uint = 0;
        // SAFETY: the descriptor is open for the life of self, and a null siginfo pointer makes
        // the kernel fill in the info as kill(2) does.
        let result = unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                self.0.as_raw_fd(),
                signal as libc::c_int,
                info,
                flags,
            )
        };
        if result < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(())
        }
    }
}
