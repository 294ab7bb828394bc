//! The capability set of a silo's program: Docker's default set, with and without a user
//! namespace.
//!
//! The program process drops every other capability from its bounding set, so neither it nor
//! an executable it runs can regain one, then sets its permitted, effective and inheritable
//! sets to the default set and clears its ambient set. A program that runs as root keeps the
//! default set across `execve`, because the kernel gives root every capability of its bounding
//! set. A program that switches to another uid loses them as usual.

use nix::errno::Errno;

/// Capability numbers from `<linux/capability.h>`.
const CAP_CHOWN: u32 = 0;
const CAP_DAC_OVERRIDE: u32 = 1;
const CAP_FOWNER: u32 = 3;
const CAP_FSETID: u32 = 4;
const CAP_KILL: u32 = 5;
const CAP_SETGID: u32 = 6;
const CAP_SETUID: u32 = 7;
const CAP_SETPCAP: u32 = 8;
const CAP_NET_BIND_SERVICE: u32 = 10;
const CAP_NET_RAW: u32 = 13;
const CAP_SYS_CHROOT: u32 = 18;
const CAP_MKNOD: u32 = 27;
const CAP_AUDIT_WRITE: u32 = 29;
const CAP_SETFCAP: u32 = 31;

/// Capabilities a silo's program keeps: Docker's default set without CAP_NET_RAW, which lets a
/// root program own files, bind low ports and change its uid, but not mount, load modules,
/// change the network, open raw sockets or trace other processes. `grants.raw_sockets` adds
/// [`RAW_SOCKETS_CAPABILITY`].
pub const SILO_CAPABILITIES: &[u32] = &[
    CAP_CHOWN,
    CAP_DAC_OVERRIDE,
    CAP_FSETID,
    CAP_FOWNER,
    CAP_MKNOD,
    CAP_SETGID,
    CAP_SETUID,
    CAP_SETFCAP,
    CAP_SETPCAP,
    CAP_NET_BIND_SERVICE,
    CAP_SYS_CHROOT,
    CAP_KILL,
    CAP_AUDIT_WRITE,
];

/// Capability that `grants.raw_sockets` adds: raw and packet sockets, such as ping's.
pub const RAW_SOCKETS_CAPABILITY: u32 = CAP_NET_RAW;

/// Highest capability number a 64-bit capability mask can hold. The kernel's last capability
/// (40 on Linux 6.18) is lower; the bounding-set loop stops at the first number it rejects.
const MAX_CAPABILITY_NUMBER: u32 = 63;
/// `_LINUX_CAPABILITY_VERSION_3` from `<linux/capability.h>`: 64-bit sets as two 32-bit words.
const CAPABILITY_VERSION_3: u32 = 0x2008_0522;

/// Returns [`SILO_CAPABILITIES`], plus [`RAW_SOCKETS_CAPABILITY`] when `raw_sockets` is set, as
/// a mask with bit `n` for capability `n`: the form of the `Cap*` lines of `/proc/PID/status`
/// (0x00000000a80405fb by default).
pub fn silo_capability_mask(raw_sockets: bool) -> u64 {
    let mask = SILO_CAPABILITIES
        .iter()
        .fold(0, |mask, capability| mask | (1u64 << capability));
    if raw_sockets {
        mask | (1u64 << RAW_SOCKETS_CAPABILITY)
    } else {
        mask
    }
}

/// Header of `capget` and `capset`, `struct __user_cap_header_struct`.
#[repr(C)]
struct CapabilityHeader {
    version: u32,
    pid: libc::c_int,
}

/// One 32-bit word of each set, `struct __user_cap_data_struct`.
#[repr(C)]
#[derive(Clone, Copy)]
struct CapabilityData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

/// Limits the calling process to the capabilities in `mask` (see [`silo_capability_mask`]):
/// bounding, permitted, effective and inheritable sets, and an empty ambient set. Needs
/// CAP_SETPCAP, which the silo's PID 1 has in its user namespace. Runs in the forked program
/// process right before `execve`.
pub fn limit_to_silo_capabilities(mask: u64) -> Result<(), Errno> {
    for capability in 0..=MAX_CAPABILITY_NUMBER {
        let keep = mask & (1u64 << capability) != 0;
        // SAFETY: PR_CAPBSET_READ only reads this process's bounding set; the extra arguments
        // are ignored.
        let present = unsafe {
            libc::prctl(
                libc::PR_CAPBSET_READ,
                libc::c_ulong::from(capability),
                0,
                0,
                0,
            )
        };
        if present < 0 {
            // EINVAL: the kernel has no capability with this number, nor any higher one.
            break;
        }
        if present == 1 && !keep {
            // SAFETY: PR_CAPBSET_DROP only changes this process's bounding set.
            let dropped = unsafe {
                libc::prctl(
                    libc::PR_CAPBSET_DROP,
                    libc::c_ulong::from(capability),
                    0,
                    0,
                    0,
                )
            };
            Errno::result(dropped)?;
        }
    }

    // SAFETY: PR_CAP_AMBIENT_CLEAR_ALL only empties this process's ambient set.
    let cleared = unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL,
            0,
            0,
            0,
        )
    };
    Errno::result(cleared)?;

    let mut header = CapabilityHeader {
        version: CAPABILITY_VERSION_3,
        pid: 0,
    };
    let words = [mask as u32, (mask >> 32) as u32].map(|word| CapabilityData {
        effective: word,
        permitted: word,
        inheritable: word,
    });
    // SAFETY: `header` and `words` are the version 3 layout the kernel reads: one header and
    // two data structs, valid for the whole call. pid 0 is the calling thread.
    let set = unsafe { libc::syscall(libc::SYS_capset, &mut header, words.as_ptr()) };
    Errno::result(set).map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mask_is_dockers_default_without_raw() {
        assert_eq!(silo_capability_mask(false), 0x0000_0000_a804_05fb);
        assert_eq!(SILO_CAPABILITIES.len(), 13);
    }

    #[test]
    fn mask_with_raw_is_dockers_default() {
        assert_eq!(silo_capability_mask(true), 0x0000_0000_a804_25fb);
    }
}
