//! Self-confinement once setup is done: an empty filesystem (slirp4netns `--enable-sandbox`),
//! then no new privileges and a seccomp allow-list of the system calls the event loop makes
//! (`--enable-seccomp`).
//!
//! The filesystem step, in passt's order: enter a new user namespace (unless tapir already has
//! CAP_SYS_ADMIN, as under podman) so that a mount namespace may be made without privilege;
//! make every mount private; mount an empty tmpfs, `pivot_root` into it and detach the old
//! root. Afterwards no path reaches the host's files: the TAP, the sockets, the capture file
//! and the API socket's directory (for removing it at exit) are already open. Capabilities held
//! in that new user namespace reach nothing outside it.
//!
//! Everything that needs more (forking the namespace child, opening the TAP, netlink, binding
//! the API socket, reading resolv.conf) happens before. After [`confine`], a call outside the
//! list fails with EPERM rather than killing tapir: an unexpected call is then an error the
//! loop reports, and the guest still gets nothing it could not get before.
//!
//! The list, by purpose:
//! - the loop: epoll, read/write (TAP, sockets, signalfd, stderr), clock, nanosleep;
//! - host sockets: socket, connect, bind, listen, accept4, send/recv (msg, to/from),
//!   get/setsockopt, getsockname/getpeername, shutdown, ioctl (FIONBIO), fcntl, close;
//! - memory: mmap, munmap, mremap, madvise, brk, mprotect;
//! - process: signals (rt_sigreturn, rt_sigprocmask, sigaltstack, kill, tgkill for abort),
//!   futex, getpid, gettid, getrandom, exit, exit_group, wait4 (a forwarded command's exit);
//! - files already open: fstat/newfstatat/statx, lseek, and unlink/unlinkat for the API
//!   socket at exit.
//!
//! Not on it: execve, fork/clone, ptrace, mount, open/openat, setns/unshare, bpf, ...

use std::collections::BTreeMap;

use seccompiler::{BpfProgram, SeccompAction, SeccompFilter};

#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("cannot set no_new_privs: {0}")]
    NoNewPrivs(nix::errno::Errno),
    #[error("cannot build the seccomp filter for {arch}: {message}")]
    Build { arch: String, message: String },
    #[error("cannot install the seccomp filter: {0}")]
    Install(String),
    #[error("cannot sandbox tapir: {what}: {errno}")]
    Filesystem {
        what: &'static str,
        errno: nix::errno::Errno,
    },
}

const ALLOWED: &[libc::c_long] = &[
    libc::SYS_read,
    libc::SYS_write,
    libc::SYS_readv,
    libc::SYS_writev,
    libc::SYS_close,
    libc::SYS_epoll_wait,
    libc::SYS_epoll_pwait,
    libc::SYS_epoll_pwait2,
    libc::SYS_epoll_ctl,
    libc::SYS_clock_gettime,
    libc::SYS_clock_nanosleep,
    libc::SYS_nanosleep,
    libc::SYS_gettimeofday,
    libc::SYS_socket,
    libc::SYS_connect,
    libc::SYS_bind,
    libc::SYS_listen,
    libc::SYS_accept4,
    libc::SYS_sendto,
    libc::SYS_recvfrom,
    libc::SYS_sendmsg,
    libc::SYS_recvmsg,
    libc::SYS_sendmmsg,
    libc::SYS_recvmmsg,
    libc::SYS_getsockopt,
    libc::SYS_setsockopt,
    libc::SYS_getsockname,
    libc::SYS_getpeername,
    libc::SYS_shutdown,
    libc::SYS_ioctl,
    libc::SYS_fcntl,
    libc::SYS_mmap,
    libc::SYS_munmap,
    libc::SYS_mremap,
    libc::SYS_madvise,
    libc::SYS_brk,
    libc::SYS_mprotect,
    libc::SYS_rt_sigreturn,
    libc::SYS_rt_sigprocmask,
    libc::SYS_sigaltstack,
    libc::SYS_kill,
    libc::SYS_tgkill,
    libc::SYS_futex,
    libc::SYS_getpid,
    libc::SYS_gettid,
    libc::SYS_getrandom,
    libc::SYS_exit,
    libc::SYS_exit_group,
    libc::SYS_wait4,
    libc::SYS_fstat,
    libc::SYS_newfstatat,
    libc::SYS_statx,
    libc::SYS_lseek,
    libc::SYS_unlink,
    libc::SYS_unlinkat,
    libc::SYS_sched_yield,
];

/// Moves this process into an empty filesystem of its own (see the module comment).
pub fn isolate_filesystem() -> Result<(), SandboxError> {
    use nix::mount::{MntFlags, MsFlags, mount, umount2};
    use nix::sched::{CloneFlags, unshare};
    let step = |what: &'static str| {
        move |e: nix::errno::Errno| SandboxError::Filesystem { what, errno: e }
    };
    let (uid, gid) = (nix::unistd::geteuid(), nix::unistd::getegid());
    if unshare(CloneFlags::CLONE_NEWNS).is_err() {
        unshare(CloneFlags::CLONE_NEWUSER | CloneFlags::CLONE_NEWNS)
            .map_err(step("create user and mount namespaces"))?;
        let write = |path: &str, text: String| {
            std::fs::write(path, text).map_err(|e| SandboxError::Filesystem {
                what: "map ids in the new user namespace",
                errno: nix::errno::Errno::from_raw(e.raw_os_error().unwrap_or(0)),
            })
        };
        match write("/proc/self/setgroups", "deny".into()) {
            Err(SandboxError::Filesystem {
                errno: nix::errno::Errno::ENOENT,
                ..
            })
            | Ok(()) => {}
            Err(e) => return Err(e),
        }
        write("/proc/self/uid_map", format!("0 {uid} 1"))?;
        write("/proc/self/gid_map", format!("0 {gid} 1"))?;
    }
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .map_err(step("make mounts private"))?;
    mount(
        Some("tapir"),
        "/tmp",
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        Some("size=4k,mode=0500"),
    )
    .map_err(step("mount an empty tmpfs"))?;
    nix::unistd::chdir("/tmp").map_err(step("enter the empty tmpfs"))?;
    nix::unistd::pivot_root(".", ".").map_err(step("pivot_root into the empty tmpfs"))?;
    umount2(".", MntFlags::MNT_DETACH).map_err(step("detach the old root"))?;
    nix::unistd::chdir("/").map_err(step("enter the new root"))?;
    Ok(())
}

/// Sets no_new_privs and installs the allow-list for the rest of the process's life.
pub fn confine() -> Result<(), SandboxError> {
    nix::sys::prctl::set_no_new_privs().map_err(SandboxError::NoNewPrivs)?;
    let arch = std::env::consts::ARCH;
    let build = |message: String| SandboxError::Build {
        arch: arch.to_string(),
        message,
    };
    let target = arch
        .try_into()
        .map_err(|e: seccompiler::BackendError| build(e.to_string()))?;
    let rules: BTreeMap<i64, Vec<seccompiler::SeccompRule>> =
        ALLOWED.iter().map(|nr| (*nr, Vec::new())).collect();
    let filter = SeccompFilter::new(
        rules,
        SeccompAction::Errno(libc::EPERM as u32),
        SeccompAction::Allow,
        target,
    )
    .map_err(|e| build(e.to_string()))?;
    let program: BpfProgram = filter
        .try_into()
        .map_err(|e: seccompiler::BackendError| build(e.to_string()))?;
    seccompiler::apply_filter(&program).map_err(|e| SandboxError::Install(e.to_string()))
}
