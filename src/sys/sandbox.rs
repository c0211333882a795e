//! Self-confinement once setup is done: an empty filesystem, then no new privileges and a
//! seccomp allow-list of the system calls the event loop makes. `tapir run` does both by
//! default (`--no-sandbox` skips them); slirp4netns mode does the first with
//! `--enable-sandbox` and the second with `--enable-seccomp`, as slirp4netns does.
//!
//! The filesystem step, in passt's order: enter a new user namespace (unless tapir already has
//! CAP_SYS_ADMIN, as under podman or as root) so that a mount namespace may be made without
//! privilege; make every mount private; mount an empty tmpfs, `pivot_root` into it and detach
//! the old root. Afterwards no path reaches the host's files but the directories of the host's
//! resolv.conf, bound read-only at their own paths before the pivot (`sys::resolv` follows a
//! change to the file, as libslirp does): the TAP, the sockets, the capture file and the API
//! socket's directory (for removing it at exit) are already open.
//! Capabilities held in that new user namespace reach nothing outside it: the network
//! namespace tapir's sockets live in still belongs to the caller's user namespace. tapir's
//! host uid is unchanged, so it may still signal and reap the command it started.
//!
//! Everything that needs more (forking the namespace child, opening the TAP, netlink, binding
//! the API socket and the `-p` listeners, reading resolv.conf and the policy file, opening the
//! capture file) happens before. After [`confine`], a call outside the list fails with EPERM
//! rather than killing tapir: an unexpected call is then an error the loop reports, and the
//! guest still gets nothing it could not get before. Filters whose verdict does not depend on
//! the arguments are cached by the kernel (5.11+), so an allowed call costs no BPF run.
//!
//! The list, by purpose: 45 calls, each one the loop makes (`strace -f` of `tapir run`
//! carrying TCP, UDP, DNS, ping and a `-p` forward, and of slirp4netns mode serving the API)
//! or glibc and std need to allocate, fail and exit:
//! - the loop: epoll_wait and epoll_ctl (mio; epoll_pwait where glibc has no epoll_wait),
//!   read/write (TAP, sockets, signalfd, stderr, the capture file), close, clock_gettime
//!   (timers and log stamps, when the vDSO cannot answer);
//! - host sockets: socket, connect, bind, listen, accept4 (new flows, the DNS forwarder's TCP
//!   retry, forwards added through the API), sendto/recvfrom (all socket I/O), getsockopt
//!   (SO_ERROR of a connect), setsockopt (TCP_NODELAY, SO_REUSEADDR), getpeername (a connect
//!   done), shutdown (half-close), fcntl (O_NONBLOCK, pipe sizes);
//! - spliced forwards (`flow::splice`): recvmsg (a socket from the factory in the guest's
//!   namespace, SCM_RIGHTS), getsockname (checking that socket is unbound), pipe2 and splice
//!   (the relay);
//! - memory: mmap, munmap, mremap (the allocator maps flow rings itself, grows and returns
//!   them), madvise, brk, mprotect (glibc malloc);
//! - the process: kill (a termination signal passed on to `tapir run`'s command), wait4 (its
//!   exit), unlinkat (the API socket, through its directory's fd, at exit), exit_group;
//!   futex (std's locks under contention), rt_sigreturn, rt_sigprocmask, sigaltstack, tgkill,
//!   getpid, gettid (signal delivery, and abort reporting SIGABRT rather than a stray fault);
//! - resolv.conf (`sys::resolv`): openat, only with O_RDONLY (the one call whose arguments the
//!   filter looks at), statx, newfstatat and fstat (its identity, and std's size hint), lseek.
//!
//! Not on it, among the rest: execve, fork/clone, ptrace, mount, open, openat for writing, unlink,
//! setns/unshare, ioctl (the TAP's own included), bpf, io_uring, sendmsg (tapir only
//! receives fds once the loop runs).

use std::collections::BTreeMap;
use std::path::Path;

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
    // The loop.
    libc::SYS_epoll_wait,
    libc::SYS_epoll_pwait,
    libc::SYS_epoll_ctl,
    libc::SYS_read,
    libc::SYS_write,
    libc::SYS_close,
    libc::SYS_clock_gettime,
    // Host sockets.
    libc::SYS_socket,
    libc::SYS_connect,
    libc::SYS_bind,
    libc::SYS_listen,
    libc::SYS_accept4,
    libc::SYS_sendto,
    libc::SYS_recvfrom,
    libc::SYS_getsockopt,
    libc::SYS_setsockopt,
    libc::SYS_getpeername,
    libc::SYS_shutdown,
    libc::SYS_fcntl,
    libc::SYS_getsockname,
    libc::SYS_recvmsg,
    libc::SYS_pipe2,
    libc::SYS_splice,
    // Memory.
    libc::SYS_mmap,
    libc::SYS_munmap,
    libc::SYS_mremap,
    libc::SYS_madvise,
    libc::SYS_brk,
    libc::SYS_mprotect,
    // The process.
    libc::SYS_kill,
    libc::SYS_wait4,
    libc::SYS_unlinkat,
    libc::SYS_exit_group,
    libc::SYS_futex,
    libc::SYS_rt_sigreturn,
    libc::SYS_rt_sigprocmask,
    libc::SYS_sigaltstack,
    libc::SYS_tgkill,
    libc::SYS_getpid,
    libc::SYS_gettid,
    // Following resolv.conf (`sys::resolv`): its metadata, and reading it (openat, allowed
    // read-only, is added with its condition in `confine`).
    libc::SYS_statx,
    libc::SYS_newfstatat,
    libc::SYS_fstat,
    libc::SYS_lseek,
];

/// Moves this process into an empty filesystem of its own (see the module comment), where only
/// the directories `resolv_conf` lives in are seen, read-only, at their own paths, so that a
/// change to it is noticed (`sys::resolv::dirs_to_keep`). A directory that cannot be kept is
/// logged and left out: tapir then keeps the nameservers it started with.
pub fn isolate_filesystem(resolv_conf: Option<&Path>) -> Result<(), SandboxError> {
    use nix::mount::{MntFlags, MsFlags, mount, umount2};
    use nix::sched::{CloneFlags, unshare};
    let keep = resolv_conf
        .map(crate::sys::resolv::dirs_to_keep)
        .unwrap_or_default();
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
    for dir in &keep {
        if let Err(e) = keep_readable(dir) {
            log::warn!(
                "the sandbox cannot keep {} readable ({e}): a change to the host's resolv.conf \
                 will go unseen",
                dir.display()
            );
        }
    }
    nix::unistd::chdir("/tmp").map_err(step("enter the empty tmpfs"))?;
    nix::unistd::pivot_root(".", ".").map_err(step("pivot_root into the empty tmpfs"))?;
    umount2(".", MntFlags::MNT_DETACH).map_err(step("detach the old root"))?;
    nix::unistd::chdir("/").map_err(step("enter the new root"))?;
    Ok(())
}

/// Binds `dir` into the new root (the tmpfs on /tmp, before the pivot) at its own path,
/// read-only where the kernel lets a user namespace say so.
fn keep_readable(dir: &Path) -> Result<(), String> {
    use nix::mount::{MsFlags, mount};
    let relative = dir.strip_prefix("/").map_err(|_| "not an absolute path")?;
    if relative.starts_with("tmp") {
        return Err("the new root's tmpfs hides it".into());
    }
    let inside = Path::new("/tmp").join(relative);
    std::fs::create_dir_all(&inside).map_err(|e| e.to_string())?;
    mount(
        Some(dir),
        &inside,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None::<&str>,
    )
    .map_err(|e| e.desc().to_string())?;
    // Best effort: a mount whose flags the user namespace cannot change stays as it was, and
    // tapir's host uid could not write there anyway.
    let _ = mount(
        None::<&str>,
        &inside,
        None::<&str>,
        MsFlags::MS_REMOUNT
            | MsFlags::MS_BIND
            | MsFlags::MS_RDONLY
            | MsFlags::MS_NOSUID
            | MsFlags::MS_NODEV
            | MsFlags::MS_NOEXEC,
        None::<&str>,
    );
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
    let mut rules: BTreeMap<i64, Vec<seccompiler::SeccompRule>> =
        ALLOWED.iter().map(|nr| (*nr, Vec::new())).collect();
    // Opening a file, to read only: resolv.conf, in the directories the sandbox kept.
    let read_only = seccompiler::SeccompCondition::new(
        2,
        seccompiler::SeccompCmpArgLen::Dword,
        seccompiler::SeccompCmpOp::MaskedEq(libc::O_ACCMODE as u64),
        libc::O_RDONLY as u64,
    )
    .and_then(|c| seccompiler::SeccompRule::new(vec![c]))
    .map_err(|e| build(e.to_string()))?;
    rules.insert(libc::SYS_openat, vec![read_only]);
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
