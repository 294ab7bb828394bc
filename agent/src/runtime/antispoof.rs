//! Anti-spoofing on each silo's host-side veth: a tc classifier over netlink.
//!
//! The metadata service identifies callers by source address, so a silo must not send with
//! another silo's address. Packets from the silo enter the host at the ingress of its host-side
//! veth. There an `ingress` qdisc runs a small eBPF program in direct-action mode. It accepts
//! IPv4 packets whose source is the silo's address and ARP packets whose sender protocol
//! address is the silo's address. It drops everything else, because silos have no IPv6
//! addresses.
//! The ARP check keeps a silo from claiming another silo's address in the gateway's ARP cache.
//!
//! The filter lives and dies with the veth: it needs no undo step, survives an agent restart,
//! and is gone with the link. Setting it costs one `bpf` call and two netlink requests, where an
//! iptables and an ebtables rule would cost process spawns on every start. The program is eBPF
//! because many kernels, this project's test machine among them, build no tc `gact` action.

use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use futures::StreamExt;
use rtnetlink::packet_core::{NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_CREATE, NLM_F_EXCL, NLM_F_REQUEST};
use rtnetlink::packet_route::tc::{TcAttribute, TcBpfFlags, TcFilterBpf, TcFilterBpfOption, TcHandle, TcMessage, TcOption};
use rtnetlink::packet_route::RouteNetlinkMessage;
use rtnetlink::Handle;

/// Errors of setting the filter.
#[derive(Debug, thiserror::Error)]
pub enum AntispoofError {
    #[error("loading the eBPF program failed: {source}; verifier log: {log}")]
    Load { source: std::io::Error, log: String },
    #[error("adding the ingress qdisc failed: {0}")]
    Qdisc(#[source] rtnetlink::Error),
    #[error("attaching the filter failed: {0}")]
    Filter(#[source] rtnetlink::Error),
}

/// `ETH_P_ALL` in network byte order, as the filter's protocol, so every packet runs the program.
const ETH_P_ALL_BE: u16 = 0x0003u16.to_be();
/// `skb->protocol` values as `__sk_buff.protocol` stores them (network byte order in a u32,
/// read on a little-endian machine).
const PROTOCOL_IPV4: i32 = 0x0800u16.to_be() as i32;
const PROTOCOL_ARP: i32 = 0x0806u16.to_be() as i32;
/// Offset of `protocol` in `struct __sk_buff`.
const SKB_PROTOCOL_OFFSET: i16 = 16;
/// Packet offsets for `BPF_LD_ABS`, which count from the Ethernet header at tc ingress: the
/// IPv4 source address (14 + 12) and the ARP sender protocol address (14 + 14).
const IPV4_SOURCE_OFFSET: i32 = 26;
const ARP_SENDER_OFFSET: i32 = 28;
/// Return values of a direct-action classifier, from `<linux/pkt_cls.h>`.
const TC_ACT_OK: i32 = 0;
const TC_ACT_SHOT: i32 = 2;
/// `BPF_PROG_TYPE_SCHED_CLS` and the `bpf` command `BPF_PROG_LOAD`, from `<linux/bpf.h>`.
const BPF_PROG_TYPE_SCHED_CLS: u32 = 3;
const BPF_PROG_LOAD: libc::c_long = 5;
/// Priority of the filter among the veth's ingress filters. It is the only one.
const FILTER_PRIORITY: u16 = 1;
/// Bytes of verifier log kept for an error message.
const VERIFIER_LOG_BYTES: usize = 4096;
/// Name of the filter in the output of `tc filter show`.
const PROGRAM_NAME: &str = "colex_antispoof";

/// Makes the ingress of the host-side veth with index `host_veth_index` accept only IPv4 and
/// ARP with `address` as source. Call it before any process of the silo may send, so no packet
/// of the silo passes unchecked.
pub async fn install(handle: &Handle, host_veth_index: u32, address: Ipv4Addr) -> Result<(), AntispoofError> {
    let program = load_program(address)?;
    let index = host_veth_index as i32;
    handle
        .qdisc()
        .add(index)
        .ingress()
        .execute()
        .await
        .map_err(AntispoofError::Qdisc)?;

    let mut message = TcMessage::with_index(index);
    message.header.parent = TcHandle {
        major: 0xffff,
        minor: TcHandle::MIN_INGRESS,
    };
    message.header.info = (u32::from(FILTER_PRIORITY) << 16) | u32::from(ETH_P_ALL_BE);
    message.attributes = vec![
        TcAttribute::Kind(TcFilterBpf::KIND.to_owned()),
        TcAttribute::Options(vec![
            TcOption::Bpf(TcFilterBpfOption::ProgFd(program.as_raw_fd() as u32)),
            TcOption::Bpf(TcFilterBpfOption::ProgName(PROGRAM_NAME.to_owned())),
            TcOption::Bpf(TcFilterBpfOption::Flags(TcBpfFlags::DirectAction)),
        ]),
    ];
    let mut request = NetlinkMessage::from(RouteNetlinkMessage::NewTrafficFilter(message));
    request.header.flags = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL;
    let mut handle = handle.clone();
    let mut responses = handle.request(request).map_err(AntispoofError::Filter)?;
    while let Some(response) = responses.next().await {
        if let NetlinkPayload::Error(error) = response.payload {
            return Err(AntispoofError::Filter(rtnetlink::Error::NetlinkError(error)));
        }
    }
    // The filter keeps its own reference to the program, so dropping `program` closes only ours.
    Ok(())
}

/// One eBPF instruction, `struct bpf_insn`.
#[repr(C)]
#[derive(Clone, Copy)]
struct Instruction {
    code: u8,
    /// Destination register in the low nibble, source register in the high one.
    registers: u8,
    offset: i16,
    immediate: i32,
}

const fn instruction(code: u8, dst: u8, src: u8, offset: i16, immediate: i32) -> Instruction {
    Instruction {
        code,
        registers: dst | (src << 4),
        offset,
        immediate,
    }
}

/// Opcodes used below, from `<linux/bpf_common.h>` and `<linux/bpf.h>`.
const MOV64_REG: u8 = 0xbf; // BPF_ALU64 | BPF_MOV | BPF_X
const MOV64_IMM: u8 = 0xb7; // BPF_ALU64 | BPF_MOV | BPF_K
const LDX_MEM_W: u8 = 0x61; // BPF_LDX | BPF_MEM | BPF_W
const LD_ABS_W: u8 = 0x20; // BPF_LD | BPF_ABS | BPF_W
const JEQ32_IMM: u8 = 0x16; // BPF_JMP32 | BPF_JEQ | BPF_K
const JA: u8 = 0x05; // BPF_JMP | BPF_JA
const EXIT: u8 = 0x95; // BPF_JMP | BPF_EXIT

/// Returns the program for `address`. Jump offsets count instructions after the jump.
fn program(address: Ipv4Addr) -> [Instruction; 14] {
    // BPF_LD_ABS returns the word in host byte order. JMP32 compares the low 32 bits, so an
    // address above 127.255.255.255 compares right despite the sign of the immediate.
    let address = u32::from(address) as i32;
    [
        // 0: r6 = skb, which BPF_LD_ABS reads from.
        instruction(MOV64_REG, 6, 1, 0, 0),
        // 1: r0 = skb->protocol
        instruction(LDX_MEM_W, 0, 6, SKB_PROTOCOL_OFFSET, 0),
        // 2: IPv4 -> 6
        instruction(JEQ32_IMM, 0, 0, 3, PROTOCOL_IPV4),
        // 3: ARP -> 8
        instruction(JEQ32_IMM, 0, 0, 4, PROTOCOL_ARP),
        // 4, 5: anything else is dropped.
        instruction(MOV64_IMM, 0, 0, 0, TC_ACT_SHOT),
        instruction(EXIT, 0, 0, 0, 0),
        // 6, 7: r0 = IPv4 source, then compare at 9.
        instruction(LD_ABS_W, 0, 0, 0, IPV4_SOURCE_OFFSET),
        instruction(JA, 0, 0, 1, 0),
        // 8: r0 = ARP sender protocol address.
        instruction(LD_ABS_W, 0, 0, 0, ARP_SENDER_OFFSET),
        // 9: the silo's own address -> 12
        instruction(JEQ32_IMM, 0, 0, 2, address),
        // 10, 11: another address is dropped.
        instruction(MOV64_IMM, 0, 0, 0, TC_ACT_SHOT),
        instruction(EXIT, 0, 0, 0, 0),
        // 12, 13: accepted.
        instruction(MOV64_IMM, 0, 0, 0, TC_ACT_OK),
        instruction(EXIT, 0, 0, 0, 0),
    ]
    // NOTE: a packet too short for BPF_LD_ABS ends the program with 0, which is TC_ACT_OK. Such
    // an IPv4 or ARP packet has no complete source address, and the kernel's IPv4 and ARP input
    // drop it as truncated.
}

/// `union bpf_attr` as `BPF_PROG_LOAD` reads it, up to `prog_name`.
#[repr(C)]
struct ProgramLoad {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
}

/// Loads the program for `address` into the kernel and returns its file descriptor.
fn load_program(address: Ipv4Addr) -> Result<OwnedFd, AntispoofError> {
    let instructions = program(address);
    // Without a log first: the verifier then formats no text, which every start would pay for.
    // Only a failed load runs again with the log, for the error message.
    match bpf_prog_load(&instructions, None) {
        Ok(fd) => Ok(fd),
        Err(_) => {
            let mut log = vec![0u8; VERIFIER_LOG_BYTES];
            let source = match bpf_prog_load(&instructions, Some(&mut log)) {
                // A load that fails once and then succeeds has its program all the same.
                Ok(fd) => return Ok(fd),
                Err(source) => source,
            };
            let end = log.iter().position(|&byte| byte == 0).unwrap_or(log.len());
            let log = String::from_utf8_lossy(&log[..end]).trim().to_owned();
            Err(AntispoofError::Load { source, log })
        }
    }
}

/// Runs `BPF_PROG_LOAD` for `instructions`, with the verifier's log in `log` when given.
fn bpf_prog_load(instructions: &[Instruction], log: Option<&mut [u8]>) -> Result<OwnedFd, std::io::Error> {
    let license = c"GPL";
    // The kernel keeps at most 15 bytes of a program name and a NUL.
    let mut name = [0u8; 16];
    let name_bytes = &PROGRAM_NAME.as_bytes()[..PROGRAM_NAME.len().min(15)];
    name[..name_bytes.len()].copy_from_slice(name_bytes);
    let (log_level, log_size, log_buf) = match log {
        Some(log) => (1, log.len() as u32, log.as_mut_ptr() as u64),
        None => (0, 0, 0),
    };

    let attributes = ProgramLoad {
        prog_type: BPF_PROG_TYPE_SCHED_CLS,
        insn_cnt: instructions.len() as u32,
        insns: instructions.as_ptr() as u64,
        license: license.as_ptr() as u64,
        log_level,
        log_size,
        log_buf,
        kern_version: 0,
        prog_flags: 0,
        prog_name: name,
    };

    // SAFETY: `attributes` is the BPF_PROG_LOAD layout of `union bpf_attr` with the size passed,
    // and its pointers (instructions, license, log) stay valid for the whole call.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_LOAD,
            &attributes as *const ProgramLoad,
            std::mem::size_of::<ProgramLoad>(),
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the kernel returned a new file descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jumps_land_on_their_targets() {
        let instructions = program(Ipv4Addr::new(10, 69, 1, 2));
        let target = |at: usize| at + 1 + instructions[at].offset as usize;
        assert_eq!(target(2), 6, "IPv4 goes to its load");
        assert_eq!(target(3), 8, "ARP goes to its load");
        assert_eq!(target(7), 9, "the IPv4 load skips the ARP load");
        assert_eq!(target(9), 12, "the own address is accepted");
        assert_eq!(instructions[9].immediate, 0x0a45_0102);
    }
}
