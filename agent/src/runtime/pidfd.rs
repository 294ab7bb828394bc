//! Process file descriptors (`pidfd_open(2)`, Linux 5.3 and later), to signal a silo's PID 1
//! without the risk that its pid was reused by an unrelated process.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use nix::sys::signal::Signal;

/// A handle on one process that stays valid after the process exits. It polls readable once
/// the process has exited, also for a process that is not a child of this one.
#[derive(Debug)]
pub struct PidFd(OwnedFd);

impl AsFd for PidFd {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.0.as_fd()
    }
}

impl AsRawFd for PidFd {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}

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

/// Reads the start time of process `pid`: field 22 of `/proc/PID/stat`, in clock ticks since
/// boot. A pid and its start time together name one process for the life of the system.
pub fn start_ticks(pid: u32) -> io::Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    parse_start_ticks(&stat).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("unexpected /proc/{pid}/stat format"),
        )
    })
}

/// Returns field 22 (`starttime`) of a `/proc/PID/stat` line. The command name (field 2) is in
/// parentheses and may contain spaces and ')', so fields are counted after its last ')'.
pub fn parse_start_ticks(stat: &str) -> Option<u64> {
    let (_, after_name) = stat.rsplit_once(')')?;
    // after_name starts with field 3 (state); starttime is field 22.
    after_name.split_whitespace().nth(22 - 3)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_ticks_skip_odd_command_names() {
        let stat = "4242 (a) b (c)) S 1 4242 4242 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 \
                    987654 1000 100 18446744073709551615";
        assert_eq!(parse_start_ticks(stat), Some(987_654));
        assert_eq!(parse_start_ticks("4242 (short) S 1"), None);
    }

    #[test]
    fn own_start_ticks_are_stable() {
        let first = start_ticks(std::process::id()).expect("read own stat");
        let second = start_ticks(std::process::id()).expect("read own stat");
        assert_eq!(first, second);
    }
}
