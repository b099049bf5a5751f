//! A runtime spec's seccomp profile compiled into the classic-BPF programs the guest
//! installs on a container's processes before they exec.
//!
//! An OCI profile names one default action and, per group of system calls, an action of its
//! own (each with its errno). One seccomp program returns one action on a match and another
//! otherwise, so the profile becomes a stack of programs, and the kernel runs them all and
//! takes the most restrictive answer:
//! - the first returns ALLOW for every rule the profile lists, whatever its action, and the
//!   default action for the rest (left out when the default is ALLOW);
//! - then one program per other action: that action for its rules, ALLOW for the rest.
//!
//! A call that matches an ALLOW rule only is allowed by all of them; one that matches a rule
//! of another action gets that action from its program; one that matches no rule gets the
//! default from the first. Rules of one entry are ANDed, entries for the same call ORed, as
//! libseccomp does. System calls this architecture does not have are skipped, as runc skips
//! them (profiles list every architecture's names); comparisons are on the whole 64-bit
//! argument. The profile's `architectures` and `flags` are not used: the programs check for
//! the host's (and guest's) architecture and kill a process calling in under another.

use std::collections::BTreeMap;
use std::str::FromStr;

use oci_spec::runtime::{LinuxSeccomp, LinuxSeccompAction, LinuxSeccompOperator, LinuxSyscall};
use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};
use syscalls::Sysno;

/// The errno an ERRNO (or TRACE) action returns when the profile names none: EPERM.
const DEFAULT_ERRNO: u32 = 1;
/// The kernel's limit on the programs stacked on one process (each costs memory and every
/// system call runs them all); far above what a profile compiles to.
pub const MAX_PROGRAMS: usize = 16;

/// A seccomp profile the guest cannot apply.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SeccompError {
    #[error("seccomp action {0} is not supported (it needs a listener on the host)")]
    UnsupportedAction(String),
    #[error("seccomp rule for {syscall} compares argument {index}; system calls have 6")]
    ArgumentIndex { syscall: String, index: usize },
    #[error("seccomp profile does not compile: {0}")]
    Compile(String),
    #[error("seccomp profile compiles to {0} programs, more than {MAX_PROGRAMS}")]
    TooManyPrograms(usize),
    #[error("seccomp filters are not supported on {0}")]
    Architecture(&'static str),
}

/// The profile's programs, in the order they are to be installed, each as `struct
/// sock_filter` instructions in this machine's byte order. No programs: the profile allows
/// everything.
pub fn compile(profile: &LinuxSeccomp) -> Result<Vec<Vec<u8>>, SeccompError> {
    let arch = target_arch()?;
    let default = action(profile.default_action(), profile.default_errno_ret())?;
    // Rules by action, in the profile's order of first use; each action's rules by call.
    let mut groups: Vec<(SeccompAction, BTreeMap<i64, Rules>)> = Vec::new();
    for entry in profile.syscalls().iter().flatten() {
        let wanted = action(entry.action(), entry.errno_ret())?;
        if wanted == default {
            continue;
        }
        let index = match groups.iter().position(|(a, _)| *a == wanted) {
            Some(index) => index,
            None => {
                groups.push((wanted, BTreeMap::new()));
                groups.len() - 1
            }
        };
        add_entry(&mut groups[index].1, entry)?;
    }
    let mut filters = Vec::new();
    if default != SeccompAction::Allow && !groups.is_empty() {
        let mut listed: BTreeMap<i64, Rules> = BTreeMap::new();
        for (_, rules) in &groups {
            for (nr, call) in rules {
                listed.entry(*nr).or_default().merge(call.clone());
            }
        }
        filters.push(filter(listed, default.clone(), SeccompAction::Allow, arch)?);
    } else if default != SeccompAction::Allow {
        // Nothing listed: every call gets the default.
        filters.push(filter(
            BTreeMap::new(),
            default.clone(),
            SeccompAction::Allow,
            arch,
        )?);
    }
    for (wanted, rules) in groups {
        if wanted != SeccompAction::Allow {
            filters.push(filter(rules, SeccompAction::Allow, wanted, arch)?);
        }
    }
    if filters.len() > MAX_PROGRAMS {
        return Err(SeccompError::TooManyPrograms(filters.len()));
    }
    Ok(filters.iter().map(program_bytes).collect())
}

/// One call's rules: unconditional, or any of these conjunctions.
#[derive(Debug, Clone, Default)]
struct Rules {
    always: bool,
    any_of: Vec<Vec<SeccompCondition>>,
}

impl Rules {
    fn merge(&mut self, other: Rules) {
        self.always |= other.always;
        self.any_of.extend(other.any_of);
    }

    fn into_seccompiler(self) -> Result<Vec<SeccompRule>, SeccompError> {
        if self.always {
            // An empty chain matches the call whatever its arguments.
            return Ok(Vec::new());
        }
        self.any_of
            .into_iter()
            .map(|conditions| SeccompRule::new(conditions).map_err(compile_error))
            .collect()
    }
}

fn add_entry(rules: &mut BTreeMap<i64, Rules>, entry: &LinuxSyscall) -> Result<(), SeccompError> {
    for name in entry.names() {
        let Ok(sysno) = Sysno::from_str(name) else {
            continue;
        };
        let mut conditions = Vec::new();
        for arg in entry.args().iter().flatten() {
            conditions.push(condition(name, arg)?);
        }
        let call = rules.entry(sysno.id() as i64).or_default();
        if conditions.is_empty() {
            call.always = true;
        } else {
            call.any_of.push(conditions);
        }
    }
    Ok(())
}

fn condition(
    syscall: &str,
    arg: &oci_spec::runtime::LinuxSeccompArg,
) -> Result<SeccompCondition, SeccompError> {
    let index = u8::try_from(arg.index())
        .ok()
        .filter(|i| *i < 6)
        .ok_or_else(|| SeccompError::ArgumentIndex {
            syscall: syscall.to_string(),
            index: arg.index(),
        })?;
    let (op, value) = match arg.op() {
        LinuxSeccompOperator::ScmpCmpNe => (SeccompCmpOp::Ne, arg.value()),
        LinuxSeccompOperator::ScmpCmpLt => (SeccompCmpOp::Lt, arg.value()),
        LinuxSeccompOperator::ScmpCmpLe => (SeccompCmpOp::Le, arg.value()),
        LinuxSeccompOperator::ScmpCmpEq => (SeccompCmpOp::Eq, arg.value()),
        LinuxSeccompOperator::ScmpCmpGe => (SeccompCmpOp::Ge, arg.value()),
        LinuxSeccompOperator::ScmpCmpGt => (SeccompCmpOp::Gt, arg.value()),
        // libseccomp's form: `value` is the mask, `valueTwo` what the masked bits must be.
        LinuxSeccompOperator::ScmpCmpMaskedEq => (
            SeccompCmpOp::MaskedEq(arg.value()),
            arg.value_two().unwrap_or(0),
        ),
    };
    SeccompCondition::new(index, SeccompCmpArgLen::Qword, op, value).map_err(compile_error)
}

fn action(action: LinuxSeccompAction, errno: Option<u32>) -> Result<SeccompAction, SeccompError> {
    Ok(match action {
        LinuxSeccompAction::ScmpActAllow => SeccompAction::Allow,
        LinuxSeccompAction::ScmpActErrno => SeccompAction::Errno(errno.unwrap_or(DEFAULT_ERRNO)),
        LinuxSeccompAction::ScmpActKill | LinuxSeccompAction::ScmpActKillThread => {
            SeccompAction::KillThread
        }
        LinuxSeccompAction::ScmpActKillProcess => SeccompAction::KillProcess,
        LinuxSeccompAction::ScmpActTrap => SeccompAction::Trap,
        LinuxSeccompAction::ScmpActLog => SeccompAction::Log,
        LinuxSeccompAction::ScmpActTrace => SeccompAction::Trace(errno.unwrap_or(DEFAULT_ERRNO)),
        LinuxSeccompAction::ScmpActNotify => {
            return Err(SeccompError::UnsupportedAction(action.to_string()))
        }
    })
}

fn filter(
    rules: BTreeMap<i64, Rules>,
    mismatch: SeccompAction,
    on_match: SeccompAction,
    arch: TargetArch,
) -> Result<BpfProgram, SeccompError> {
    let rules = rules
        .into_iter()
        .map(|(nr, call)| Ok((nr, call.into_seccompiler()?)))
        .collect::<Result<BTreeMap<_, _>, SeccompError>>()?;
    let filter = SeccompFilter::new(rules, mismatch, on_match, arch).map_err(compile_error)?;
    BpfProgram::try_from(filter).map_err(compile_error)
}

fn program_bytes(program: &BpfProgram) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(program.len() * 8);
    for instruction in program {
        bytes.extend_from_slice(&instruction.code.to_ne_bytes());
        bytes.push(instruction.jt);
        bytes.push(instruction.jf);
        bytes.extend_from_slice(&instruction.k.to_ne_bytes());
    }
    bytes
}

fn target_arch() -> Result<TargetArch, SeccompError> {
    TargetArch::try_from(std::env::consts::ARCH)
        .map_err(|_| SeccompError::Architecture(std::env::consts::ARCH))
}

fn compile_error(error: impl std::fmt::Display) -> SeccompError {
    SeccompError::Compile(
        error
            .to_string()
            .to_lowercase()
            .trim_end_matches('.')
            .into(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn profile(json: &str) -> LinuxSeccomp {
        serde_json::from_str(json).expect("a valid profile")
    }

    /// Runs `programs` over one system call as the kernel would (every program, the most
    /// restrictive answer), with a small interpreter of the instructions seccompiler emits.
    fn verdict(programs: &[Vec<u8>], nr: u32, args: [u64; 6]) -> u32 {
        programs
            .iter()
            .map(|p| run(p, nr, args))
            .min_by_key(|ret| precedence(*ret))
            .unwrap_or(0x7fff_0000)
    }

    fn precedence(ret: u32) -> u32 {
        // Lower is more restrictive: KILL_PROCESS, KILL_THREAD, TRAP, ERRNO, TRACE, LOG, ALLOW.
        match ret & 0xffff_0000 {
            0x8000_0000 => 0,
            0x0000_0000 => 1,
            0x0003_0000 => 2,
            0x0005_0000 => 3,
            0x7ff0_0000 => 4,
            0x7ffc_0000 => 5,
            _ => 6,
        }
    }

    fn run(program: &[u8], nr: u32, args: [u64; 6]) -> u32 {
        // struct seccomp_data: nr, arch, instruction_pointer, args[6].
        let mut data = Vec::new();
        data.extend_from_slice(&nr.to_ne_bytes());
        data.extend_from_slice(&audit_arch().to_ne_bytes());
        data.extend_from_slice(&0u64.to_ne_bytes());
        for arg in args {
            data.extend_from_slice(&arg.to_ne_bytes());
        }
        let load = |offset: u32| {
            let o = offset as usize;
            u32::from_ne_bytes(data[o..o + 4].try_into().unwrap())
        };
        let ins: Vec<(u16, u8, u8, u32)> = program
            .chunks_exact(8)
            .map(|c| {
                (
                    u16::from_ne_bytes([c[0], c[1]]),
                    c[2],
                    c[3],
                    u32::from_ne_bytes([c[4], c[5], c[6], c[7]]),
                )
            })
            .collect();
        let (mut a, mut pc) = (0u32, 0usize);
        loop {
            let (code, jt, jf, k) = ins[pc];
            pc += 1;
            match code {
                0x20 => a = load(k),                                     // LD W ABS
                0x54 => a &= k,                                          // ALU AND K
                0x06 => return k,                                        // RET K
                0x05 => pc += k as usize,                                // JA
                0x15 => pc += if a == k { jt } else { jf } as usize,     // JEQ
                0x25 => pc += if a > k { jt } else { jf } as usize,      // JGT
                0x35 => pc += if a >= k { jt } else { jf } as usize,     // JGE
                0x45 => pc += if a & k != 0 { jt } else { jf } as usize, // JSET
                other => panic!("instruction {other:#x} not interpreted"),
            }
        }
    }

    /// AUDIT_ARCH_* of this machine, as seccomp_data carries it.
    fn audit_arch() -> u32 {
        match std::env::consts::ARCH {
            "x86_64" => 0xc000_003e,
            "aarch64" => 0xc000_00b7,
            "riscv64" => 0xc000_00f3,
            other => panic!("no audit arch for {other}"),
        }
    }

    const ALLOW: u32 = 0x7fff_0000;
    const EPERM: u32 = 0x0005_0001;

    fn nr(name: &str) -> u32 {
        Sysno::from_str(name).unwrap().id() as u32
    }

    #[test]
    fn a_default_allow_profile_blocks_only_what_it_lists() {
        let programs = compile(&profile(
            r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[
                {"names":["sethostname"],"action":"SCMP_ACT_ERRNO"}]}"#,
        ))
        .unwrap();
        assert_eq!(programs.len(), 1);
        assert_eq!(verdict(&programs, nr("sethostname"), [0; 6]), EPERM);
        assert_eq!(verdict(&programs, nr("getpid"), [0; 6]), ALLOW);
    }

    #[test]
    fn a_default_deny_profile_allows_what_it_lists_and_keeps_other_errnos() {
        let programs = compile(&profile(
            r#"{"defaultAction":"SCMP_ACT_ERRNO","syscalls":[
                {"names":["read","write","not_a_syscall"],"action":"SCMP_ACT_ALLOW"},
                {"names":["clone3"],"action":"SCMP_ACT_ERRNO","errnoRet":38},
                {"names":["personality"],"action":"SCMP_ACT_ALLOW",
                 "args":[{"index":0,"value":8,"op":"SCMP_CMP_EQ"}]},
                {"names":["clone"],"action":"SCMP_ACT_ALLOW",
                 "args":[{"index":0,"value":2114060288,"valueTwo":0,"op":"SCMP_CMP_MASKED_EQ"}]}]}"#,
        ))
        .unwrap();
        assert_eq!(programs.len(), 2);
        assert_eq!(verdict(&programs, nr("read"), [0; 6]), ALLOW);
        assert_eq!(verdict(&programs, nr("getpid"), [0; 6]), EPERM);
        assert_eq!(verdict(&programs, nr("clone3"), [0; 6]), 0x0005_0026);
        assert_eq!(
            verdict(&programs, nr("personality"), [8, 0, 0, 0, 0, 0]),
            ALLOW
        );
        assert_eq!(
            verdict(&programs, nr("personality"), [9, 0, 0, 0, 0, 0]),
            EPERM
        );
        // clone without namespace flags is allowed, with CLONE_NEWNS (0x20000) refused.
        assert_eq!(
            verdict(&programs, nr("clone"), [0x11, 0, 0, 0, 0, 0]),
            ALLOW
        );
        assert_eq!(
            verdict(&programs, nr("clone"), [0x20011, 0, 0, 0, 0, 0]),
            EPERM
        );
        // Each program is whole instructions.
        assert!(programs.iter().all(|p| !p.is_empty() && p.len() % 8 == 0));
    }

    #[test]
    fn an_allow_everything_profile_needs_no_program() {
        assert!(compile(&profile(r#"{"defaultAction":"SCMP_ACT_ALLOW"}"#))
            .unwrap()
            .is_empty());
        let all_denied = compile(&profile(r#"{"defaultAction":"SCMP_ACT_KILL_PROCESS"}"#)).unwrap();
        assert_eq!(verdict(&all_denied, nr("getpid"), [0; 6]), 0x8000_0000);
    }

    #[test]
    fn what_cannot_be_applied_is_refused() {
        let notify = profile(
            r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[
                {"names":["mount"],"action":"SCMP_ACT_NOTIFY"}]}"#,
        );
        assert!(matches!(
            compile(&notify),
            Err(SeccompError::UnsupportedAction(_))
        ));
        let bad_index = profile(
            r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[
                {"names":["mount"],"action":"SCMP_ACT_ERRNO",
                 "args":[{"index":6,"value":1,"op":"SCMP_CMP_EQ"}]}]}"#,
        );
        assert_eq!(
            compile(&bad_index),
            Err(SeccompError::ArgumentIndex {
                syscall: "mount".into(),
                index: 6
            })
        );
    }
}
