//! The default seccomp filter: Docker's default profile expressed as a deny-list of the syscalls
//! it withholds (kernel modules, kexec, mount API, keyrings, namespaces, clock setting, bpf, …),
//! which fail with EPERM. Built with `seccompiler` (Firecracker's pure-Rust BPF compiler) so no C
//! libseccomp is needed.

use std::collections::BTreeMap;

use seccompiler::{
    apply_filter, BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition,
    SeccompFilter, SeccompRule, TargetArch,
};

#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    #[error("building the filter: {0}")]
    Build(String),
    #[error("loading the filter: {0}")]
    Load(String),
}

const DENIED: &[libc::c_long] = &[
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
    libc::SYS_kcmp,
    libc::SYS_kexec_file_load,
    libc::SYS_kexec_load,
    libc::SYS_keyctl,
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
    #[cfg(target_arch = "x86_64")]
    libc::SYS_ioperm,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_iopl,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_lookup_dcookie,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_nfsservctl,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_sysfs,
    #[cfg(target_arch = "x86_64")]
    libc::SYS__sysctl,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_uselib,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_ustat,
];

fn target_arch() -> Result<TargetArch, SeccompError> {
    TargetArch::try_from(std::env::consts::ARCH).map_err(|e| SeccompError::Build(format!("{e:?}")))
}

fn build(e: seccompiler::BackendError) -> SeccompError {
    SeccompError::Build(e.to_string())
}

/// The filters to load, in order, built once per process: Pilot builds them before its claim,
/// and every container it forks loads its copy.
pub fn default_filters() -> Result<&'static [BpfProgram], SeccompError> {
    static BUILT: std::sync::OnceLock<Result<Vec<BpfProgram>, String>> = std::sync::OnceLock::new();
    match BUILT.get_or_init(|| build_default_filters().map_err(|e| e.to_string())) {
        Ok(programs) => Ok(programs),
        Err(e) => Err(SeccompError::Build(e.clone())),
    }
}

/// The kernel runs every loaded filter and takes the strictest answer, so the clone3 rule can
/// live in its own program with a different error.
fn build_default_filters() -> Result<Vec<BpfProgram>, SeccompError> {
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> =
        DENIED.iter().map(|nr| (*nr, Vec::new())).collect();
    // clone is allowed unless it asks for a new namespace: one rule per namespace flag.
    for bit in [
        libc::CLONE_NEWNS,
        libc::CLONE_NEWUTS,
        libc::CLONE_NEWIPC,
        libc::CLONE_NEWUSER,
        libc::CLONE_NEWPID,
        libc::CLONE_NEWNET,
        libc::CLONE_NEWCGROUP,
    ] {
        let cond = SeccompCondition::new(
            0,
            SeccompCmpArgLen::Qword,
            SeccompCmpOp::MaskedEq(bit as u64),
            bit as u64,
        )
        .map_err(build)?;
        rules
            .entry(libc::SYS_clone)
            .or_default()
            .push(SeccompRule::new(vec![cond]).map_err(build)?);
    }
    let deny = SeccompFilter::new(
        rules,
        SeccompAction::Allow,
        SeccompAction::Errno(libc::EPERM as u32),
        target_arch()?,
    )
    .map_err(build)?;
    // clone3 passes its flags in memory, where BPF cannot look: answer ENOSYS so libc falls
    // back to clone, which the rules above can inspect.
    let clone3 = SeccompFilter::new(
        BTreeMap::from([(libc::SYS_clone3, Vec::new())]),
        SeccompAction::Allow,
        SeccompAction::Errno(libc::ENOSYS as u32),
        target_arch()?,
    )
    .map_err(build)?;
    Ok(vec![
        deny.try_into().map_err(build)?,
        clone3.try_into().map_err(build)?,
    ])
}

/// Loads the default filters into the calling thread (needs no_new_privs or CAP_SYS_ADMIN).
pub fn apply_default_filter() -> Result<(), SeccompError> {
    for program in default_filters()? {
        apply_filter(program).map_err(|e| SeccompError::Load(e.to_string()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn test_filters_build() {
        let filters = super::default_filters().unwrap();
        assert_eq!(filters.len(), 2);
        assert!(!filters[0].is_empty());
    }
}
