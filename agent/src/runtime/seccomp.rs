//! The default seccomp filter of every silo program.
//!
//! It blocks the system calls that Docker's default profile blocks, as Docker's seccomp
//! documentation lists them under "Significant syscalls blocked by the default profile". They
//! cover kernel modules, kexec, reboot, clocks, swap, quotas, accounting, keyrings, BPF and perf
//! events. They also cover NUMA policy, other processes' memory, file handles, userfaultfd,
//! mounts and the new mount API, and namespace changes (`unshare`, `setns`, and `clone` with a
//! namespace flag). The list ends with io_uring and `personality` other than harmless personas. Docker's profile is an allow list, and this
//! is a deny list of the same calls, so a call that is newer than this list stays allowed.
//! Most of these calls also need a capability the silo lacks; the filter is the second wall,
//! and the only one for calls that need none, such as `unshare(CLONE_NEWUSER)`.
//!
//! The filter is compiled before PID 1 forks the program, and the forked process installs it
//! right before `execve`, after `no_new_privs`, so the program and every child inherit it.

use std::collections::BTreeMap;

use nix::errno::Errno;
use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter, SeccompRule,
    TargetArch,
};

/// Errors of compiling the filter.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    #[error("seccomp filters are not built for architecture {arch}")]
    Architecture { arch: &'static str },
    #[error("compiling the default seccomp filter failed: {0}")]
    Compile(#[source] seccompiler::BackendError),
}

/// Calls blocked whatever their arguments, on every architecture.
const BLOCKED: &[libc::c_long] = &[
    libc::SYS_acct,
    libc::SYS_add_key,
    libc::SYS_bpf,
    libc::SYS_clock_adjtime,
    libc::SYS_clock_settime,
    libc::SYS_delete_module,
    libc::SYS_finit_module,
    libc::SYS_fsconfig,
    libc::SYS_fsmount,
    libc::SYS_fsopen,
    libc::SYS_fspick,
    libc::SYS_get_mempolicy,
    libc::SYS_init_module,
    libc::SYS_io_uring_enter,
    libc::SYS_io_uring_register,
    libc::SYS_io_uring_setup,
    libc::SYS_kcmp,
    libc::SYS_kexec_file_load,
    libc::SYS_kexec_load,
    libc::SYS_keyctl,
    libc::SYS_lookup_dcookie,
    libc::SYS_mbind,
    libc::SYS_mount,
    libc::SYS_mount_setattr,
    libc::SYS_move_mount,
    libc::SYS_move_pages,
    libc::SYS_name_to_handle_at,
    libc::SYS_open_by_handle_at,
    libc::SYS_open_tree,
    libc::SYS_perf_event_open,
    libc::SYS_pivot_root,
    libc::SYS_process_vm_readv,
    libc::SYS_process_vm_writev,
    libc::SYS_quotactl,
    libc::SYS_reboot,
    libc::SYS_request_key,
    libc::SYS_set_mempolicy,
    libc::SYS_setns,
    libc::SYS_settimeofday,
    libc::SYS_swapoff,
    libc::SYS_swapon,
    libc::SYS_umount2,
    libc::SYS_unshare,
    libc::SYS_userfaultfd,
];

/// Numbers of x86_64 calls that the kernel no longer implements and the libc crate does not
/// name, from the kernel's `arch/x86/entry/syscalls/syscall_64.tbl`.
#[cfg(target_arch = "x86_64")]
const SYS_CREATE_MODULE: libc::c_long = 174;
#[cfg(target_arch = "x86_64")]
const SYS_GET_KERNEL_SYMS: libc::c_long = 177;
#[cfg(target_arch = "x86_64")]
const SYS_QUERY_MODULE: libc::c_long = 178;

/// Calls that exist only in the x86_64 system call table.
#[cfg(target_arch = "x86_64")]
const BLOCKED_ARCH: &[libc::c_long] = &[
    SYS_CREATE_MODULE,
    SYS_GET_KERNEL_SYMS,
    libc::SYS_ioperm,
    libc::SYS_iopl,
    libc::SYS_nfsservctl,
    SYS_QUERY_MODULE,
    libc::SYS_sysfs,
    libc::SYS__sysctl,
    libc::SYS_uselib,
    libc::SYS_ustat,
];
#[cfg(not(target_arch = "x86_64"))]
const BLOCKED_ARCH: &[libc::c_long] = &[];

/// Namespace flags that make `clone` blocked.
const NAMESPACE_FLAGS: &[libc::c_int] = &[
    libc::CLONE_NEWCGROUP,
    libc::CLONE_NEWIPC,
    libc::CLONE_NEWNET,
    libc::CLONE_NEWNS,
    libc::CLONE_NEWPID,
    libc::CLONE_NEWUSER,
    libc::CLONE_NEWUTS,
];

/// Personas `personality` may set, as in Docker's profile: PER_LINUX, UNAME26, ADDR_NO_RANDOMIZE
/// with and without UNAME26, and the query value 0xffffffff.
const ALLOWED_PERSONAS: &[u64] = &[0x0, 0x8, 0x2_0000, 0x2_0008, 0xffff_ffff];

/// Argument index of `clone`'s flags: the first on x86_64 and aarch64.
const CLONE_FLAGS_ARG: u8 = 0;

/// The compiled filters, installed in this order. Two programs because one seccompiler filter
/// has one action for every match: `clone3` must fail with ENOSYS, so that C libraries fall
/// back to `clone`, whose flags the filter can read (`clone3` passes them in memory).
#[derive(Debug, Clone)]
pub struct DefaultFilter {
    programs: [BpfProgram; 2],
}

impl DefaultFilter {
    /// Compiles the filter for the architecture this binary runs on.
    pub fn compile() -> Result<DefaultFilter, SeccompError> {
        let arch = std::env::consts::ARCH;
        let target = TargetArch::try_from(arch).map_err(|_| SeccompError::Architecture { arch })?;

        let mut blocked: BTreeMap<i64, Vec<SeccompRule>> = BLOCKED
            .iter()
            .chain(BLOCKED_ARCH)
            .map(|&call| (call, Vec::new()))
            .collect();
        blocked.insert(libc::SYS_clone, clone_rules()?);
        blocked.insert(libc::SYS_personality, vec![personality_rule()?]);
        let deny = SeccompFilter::new(blocked, SeccompAction::Allow, errno_action(Errno::EPERM), target)
            .map_err(SeccompError::Compile)?;

        let clone3 = BTreeMap::from([(libc::SYS_clone3, Vec::new())]);
        let no_clone3 = SeccompFilter::new(clone3, SeccompAction::Allow, errno_action(Errno::ENOSYS), target)
            .map_err(SeccompError::Compile)?;

        let programs = [
            BpfProgram::try_from(deny).map_err(SeccompError::Compile)?,
            BpfProgram::try_from(no_clone3).map_err(SeccompError::Compile)?,
        ];
        Ok(DefaultFilter { programs })
    }

    /// Installs the filter in the calling thread. Sets `no_new_privs` too, which the kernel
    /// requires of a process without CAP_SYS_ADMIN. Allocates nothing on success, so it may
    /// run in a forked child of a multithreaded process.
    pub fn install(&self) -> Result<(), Errno> {
        for program in &self.programs {
            seccompiler::apply_filter(program).map_err(|error| match error {
                seccompiler::Error::Prctl(io) | seccompiler::Error::Seccomp(io) => {
                    Errno::from_raw(io.raw_os_error().unwrap_or(libc::EINVAL))
                }
                _ => Errno::EINVAL,
            })?;
        }
        Ok(())
    }
}

/// Returns one rule per namespace flag, so `clone` matches when any of them is set.
fn clone_rules() -> Result<Vec<SeccompRule>, SeccompError> {
    NAMESPACE_FLAGS
        .iter()
        .map(|&flag| {
            let flag = flag as u64;
            let condition =
                SeccompCondition::new(CLONE_FLAGS_ARG, SeccompCmpArgLen::Qword, SeccompCmpOp::MaskedEq(flag), flag)
                    .map_err(SeccompError::Compile)?;
            SeccompRule::new(vec![condition]).map_err(SeccompError::Compile)
        })
        .collect()
}

/// Returns the rule that matches `personality` with any persona but the allowed ones.
fn personality_rule() -> Result<SeccompRule, SeccompError> {
    let conditions = ALLOWED_PERSONAS
        .iter()
        .map(|&persona| {
            SeccompCondition::new(0, SeccompCmpArgLen::Dword, SeccompCmpOp::Ne, persona).map_err(SeccompError::Compile)
        })
        .collect::<Result<Vec<_>, _>>()?;
    SeccompRule::new(conditions).map_err(SeccompError::Compile)
}

fn errno_action(errno: Errno) -> SeccompAction {
    SeccompAction::Errno(errno as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filter_compiles_for_this_machine() {
        let filter = DefaultFilter::compile().expect("compile");
        assert!(filter.programs.iter().all(|program| !program.is_empty()));
    }
}
