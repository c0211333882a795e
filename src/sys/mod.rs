//! The syscall edge: the only module allowed to write `unsafe`.
//!
//! Everything here is a thin, documented wrapper around a system call that nix does not wrap
//! safely (ioctl argument structs, fd passing, fork, mallopt). Callers above this module see
//! safe functions that return `Result`s with an [`OsError`], whose `Display` is the lower-case
//! errno text ("permission denied") so it reads well inside a sentence.
//!
//! Invariants:
//! - every `unsafe` block carries a `// SAFETY:` line saying why the call is sound;
//! - [`fork_child`] is only called from a single-threaded process (tapir forks before its event
//!   loop starts any thread), so the child may allocate; it never returns into the caller's
//!   stack in the child.
#![allow(unsafe_code)]

pub mod alloc;
pub mod fdpass;
pub mod resolv;
pub mod sandbox;
pub mod splice;
pub mod tap;

use std::fmt;

use nix::errno::Errno;
use nix::sys::signal::{SigSet, SigmaskHow, sigprocmask};
use nix::unistd::{ForkResult, Pid};

/// An errno, displayed as lower-case text to sit inside a sentence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OsError(pub Errno);

impl OsError {
    /// The last errno of this thread.
    pub fn last() -> Self {
        OsError(Errno::last())
    }
}

impl fmt::Display for OsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let desc = self.0.desc();
        let mut chars = desc.chars();
        match chars.next() {
            Some(first) => write!(f, "{}{}", first.to_lowercase(), chars.as_str()),
            None => write!(f, "{:?}", self.0),
        }
    }
}

impl From<Errno> for OsError {
    fn from(e: Errno) -> Self {
        OsError(e)
    }
}

impl From<std::io::Error> for OsError {
    fn from(e: std::io::Error) -> Self {
        OsError(e.raw_os_error().map_or(Errno::EIO, Errno::from_raw))
    }
}

/// Forks a child that runs `child` and `_exit`s with the code it returns.
///
/// The child starts with a clean signal state: handlers the parent installed are reset to the
/// default (they would run the parent's code in the child), SIGPIPE goes back to the default
/// (Rust's runtime ignores it and an ignored disposition survives exec), and the signal mask
/// is empty, even if the parent blocks signals for a signalfd. Signals stay blocked across the
/// fork itself so that none is handled by a half-reset child; the parent gets its own mask
/// back before this returns, and nothing else about the parent changes.
///
/// Must be called while the process has a single thread.
pub fn fork_child<F: FnOnce() -> i32>(child: F) -> Result<Pid, OsError> {
    let mut old_mask = SigSet::empty();
    sigprocmask(
        SigmaskHow::SIG_SETMASK,
        Some(&SigSet::all()),
        Some(&mut old_mask),
    )?;
    // SAFETY: the caller guarantees a single-threaded process, so the child's copy of the
    // address space is consistent (no lock is held by a thread that does not exist there).
    let forked = unsafe { nix::unistd::fork() };
    match forked {
        Ok(ForkResult::Parent { child }) => {
            // Cannot fail with a mask the kernel just handed us; the child runs either way.
            let _ = sigprocmask(SigmaskHow::SIG_SETMASK, Some(&old_mask), None);
            Ok(child)
        }
        Ok(ForkResult::Child) => {
            reset_signal_dispositions();
            let code = match sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None) {
                // A panic must not unwind into the parent's code, which this process also has.
                Ok(()) => {
                    std::panic::catch_unwind(std::panic::AssertUnwindSafe(child)).unwrap_or(1)
                }
                Err(_) => 1,
            };
            exit_now(code)
        }
        Err(e) => {
            // Restoring the mask cannot meaningfully fail with a mask we just read back.
            let _ = sigprocmask(SigmaskHow::SIG_SETMASK, Some(&old_mask), None);
            Err(e.into())
        }
    }
}

/// Resets caught signals, and SIGPIPE, to their default action (see [`fork_child`]).
fn reset_signal_dispositions() {
    for signo in 1..=libc::SIGRTMAX() {
        if signo == libc::SIGKILL || signo == libc::SIGSTOP {
            continue;
        }
        // SAFETY: an all-zero `sigaction` is a valid value (SIG_DFL, empty mask, no flags).
        let mut old: libc::sigaction = unsafe { std::mem::zeroed() };
        // SAFETY: a null new action only queries; `old` is a valid out-pointer.
        if unsafe { libc::sigaction(signo, std::ptr::null(), &mut old) } != 0 {
            continue;
        }
        let caught = old.sa_sigaction != libc::SIG_DFL && old.sa_sigaction != libc::SIG_IGN;
        if caught || signo == libc::SIGPIPE {
            // SAFETY: as above, all-zero is SIG_DFL with an empty mask.
            let dfl: libc::sigaction = unsafe { std::mem::zeroed() };
            // SAFETY: installs SIG_DFL, which runs no code of ours; pointers are valid.
            unsafe { libc::sigaction(signo, &dfl, std::ptr::null_mut()) };
        }
    }
}

/// Ends the process immediately, without running atexit handlers or flushing stdio buffers
/// that belong to the parent.
pub fn exit_now(code: i32) -> ! {
    // SAFETY: `_exit` takes no pointers and never returns.
    unsafe { libc::_exit(code) }
}

/// Makes glibc serve allocations of at least `bytes` with their own mmap, so that a large
/// per-flow buffer that is freed (or never touched) returns its memory to the kernel instead
/// of pinning heap pages. Returns whether the allocator accepted the setting (glibc caps it at
/// 32 MiB on 64-bit; other C libraries do not support it).
pub fn set_malloc_mmap_threshold(bytes: usize) -> bool {
    #[cfg(target_env = "gnu")]
    {
        let Ok(value) = libc::c_int::try_from(bytes) else {
            return false;
        };
        // SAFETY: mallopt only reads its two integer arguments.
        unsafe { libc::mallopt(libc::M_MMAP_THRESHOLD, value) == 1 }
    }
    #[cfg(not(target_env = "gnu"))]
    {
        let _ = bytes;
        false
    }
}

/// Raises the soft limit on open files to the hard one: every guest flow holds a host socket,
/// and the usual soft limit (1024) would cap a guest at about a thousand connections.
pub fn raise_fd_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE)
        && soft < hard
        && let Err(e) = setrlimit(Resource::RLIMIT_NOFILE, hard, hard)
    {
        log::debug!("cannot raise the open-file limit from {soft} to {hard}: {e}");
    }
}

/// A pidfd for process `pid`: it polls readable once the process has exited.
pub fn pidfd_open(pid: i32) -> std::io::Result<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd;
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1; nothing is borrowed.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let fd = std::os::fd::RawFd::try_from(fd).map_err(|_| std::io::Error::other("bad fd"))?;
    // SAFETY: `fd` was just returned by the kernel and is owned by nobody else.
    Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) })
}

/// Takes ownership of an fd number inherited from the parent process (slirp4netns's
/// `--ready-fd`/`--exit-fd`). `None` when no such fd is open.
pub fn inherited_fd(fd: std::os::fd::RawFd) -> Option<std::os::fd::OwnedFd> {
    use std::os::fd::{BorrowedFd, FromRawFd, OwnedFd};
    if fd < 0 {
        return None;
    }
    // SAFETY: the borrow only lives for this fcntl call, which fails harmlessly (EBADF) if
    // `fd` is not open.
    let open = nix::fcntl::fcntl(
        unsafe { BorrowedFd::borrow_raw(fd) },
        nix::fcntl::FcntlArg::F_GETFD,
    )
    .is_ok();
    if !open {
        return None;
    }
    // SAFETY: the fd is open and was handed to this process by its parent for it to own;
    // nothing else in tapir refers to it by number.
    Some(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Strips a long-lived helper process down to one descriptor: stdin, stdout and stderr become
/// /dev/null, `keep` becomes fd 3, and every other fd is closed (the parent's files, and the
/// ends of pipes whose readers wait for end of file). Returns fd 3, or `None` on failure.
pub fn keep_only(keep: std::os::fd::OwnedFd) -> Option<std::os::fd::OwnedFd> {
    use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd};
    let raw = keep.into_raw_fd();
    if let Ok(null) = std::fs::File::options()
        .read(true)
        .write(true)
        .open("/dev/null")
    {
        for fd in 0..3 {
            // SAFETY: dup2 takes no pointers; fds 0-2 are replaced, never used as Rust objects.
            unsafe { libc::dup2(null.as_raw_fd(), fd) };
        }
    }
    // SAFETY: as above; fd 3 is free to take (it is reclaimed as an OwnedFd below).
    if raw != 3 && unsafe { libc::dup2(raw, 3) } != 3 {
        return None;
    }
    // SAFETY: close_range takes no pointers. The fds it closes (`raw` among them, when it is
    // not 3) are not owned by any live Rust object: this process only runs the helper now.
    unsafe { libc::syscall(libc::SYS_close_range, 4u32, u32::MAX, 0u32) };
    // SAFETY: fd 3 is open (dup2 above, or `raw` itself) and owned by nothing else.
    Some(unsafe { std::os::fd::OwnedFd::from_raw_fd(3) })
}

#[cfg(test)]
mod test {
    use super::*;

    #[test]
    fn os_error_reads_inside_a_sentence() {
        assert_eq!(OsError(Errno::EPERM).to_string(), "operation not permitted");
        assert_eq!(
            OsError(Errno::ENOENT).to_string(),
            "no such file or directory"
        );
        let io = std::io::Error::from_raw_os_error(libc::EACCES);
        assert_eq!(OsError::from(io), OsError(Errno::EACCES));
    }

    #[test]
    fn a_pidfd_polls_readable_when_its_process_exits() {
        use std::os::fd::AsFd;
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = i32::try_from(child.id()).unwrap();
        let fd = pidfd_open(pid).unwrap();
        child.wait().unwrap();
        let mut fds = [nix::poll::PollFd::new(
            fd.as_fd(),
            nix::poll::PollFlags::POLLIN,
        )];
        let n = nix::poll::poll(&mut fds, nix::poll::PollTimeout::ZERO).unwrap();
        assert_eq!(n, 1);
        assert!(pidfd_open(-5).is_err());
    }

    #[test]
    fn mmap_threshold_is_accepted() {
        assert!(set_malloc_mmap_threshold(64 * 1024));
        assert!(!set_malloc_mmap_threshold(usize::MAX));
    }
}
