//! Network namespaces for the kernel path: talking netlink inside another namespace, and
//! starting a command in a fresh one.
//!
//! [`netlink_in`] enters the target namespace with setns, opens a netlink socket there and
//! comes back at once (netavark's trick): the socket stays bound to the namespace it was opened
//! in, so one thread configures both sides without forking. setns changes only the calling
//! thread, and the guard returns to the original namespace even on error.
//!
//! [`spawn`] forks a child that unshares its network namespace, reports it is ready, and waits
//! for the parent's go before it execs the command: the parent configures the namespace (via
//! `/proc/PID/ns/net`) in between, so the command never sees a half-made network. The child
//! dies with the parent (PR_SET_PDEATHSIG), so a killed `tapir run` cannot leave a container
//! running, and the namespace, with its veth end, goes with it.

use std::ffi::{CString, OsString};
use std::fs::File;
use std::io::{Read as _, Write as _};
use std::os::fd::{AsFd as _, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt as _;
use std::path::{Path, PathBuf};

use nix::sched::{CloneFlags, setns, unshare};
use nix::sys::signal::Signal;
use nix::unistd::Pid;

use crate::netlink::Netlink;
use crate::sys::OsError;

#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    #[error("cannot open the network namespace {path}: {cause}")]
    Open { path: PathBuf, cause: OsError },
    #[error("cannot enter the network namespace {path}: {cause}")]
    Enter { path: PathBuf, cause: OsError },
    #[error("cannot return to tapir's own network namespace: {0}")]
    Return(OsError),
    #[error("cannot open a netlink socket in the network namespace {path}: {cause}")]
    Netlink {
        path: PathBuf,
        cause: crate::netlink::NetlinkError,
    },
    #[error("cannot start the command: {0}")]
    Spawn(OsError),
    #[error("the command's process ended before its network was ready")]
    ChildGone,
}

/// A netlink socket bound to the network namespace at `path`.
pub fn netlink_in(path: &Path) -> Result<Netlink, NetnsError> {
    let target = File::open(path).map_err(|e| NetnsError::Open {
        path: path.to_path_buf(),
        cause: e.into(),
    })?;
    let home = File::open("/proc/thread-self/ns/net").map_err(|e| NetnsError::Open {
        path: "/proc/thread-self/ns/net".into(),
        cause: e.into(),
    })?;
    setns(&target, CloneFlags::CLONE_NEWNET).map_err(|e| NetnsError::Enter {
        path: path.to_path_buf(),
        cause: e.into(),
    })?;
    let opened = Netlink::open();
    setns(&home, CloneFlags::CLONE_NEWNET).map_err(|e| NetnsError::Return(e.into()))?;
    opened.map_err(|cause| NetnsError::Netlink {
        path: path.to_path_buf(),
        cause,
    })
}

/// A command started by [`spawn`], waiting in its namespace for [`Waiting::go`].
pub struct Waiting {
    pub pid: Pid,
    go: OwnedFd,
}

impl Waiting {
    /// The child's network namespace, as a path the kernel path can open.
    pub fn netns_path(&self) -> PathBuf {
        PathBuf::from(format!("/proc/{}/ns/net", self.pid))
    }

    /// Kills the waiting child (it has not run anything) and reaps it.
    pub fn abandon(self) {
        let _ = nix::sys::signal::kill(self.pid, Signal::SIGKILL);
        let _ = nix::sys::wait::waitpid(self.pid, None);
    }

    /// Lets the command run.
    pub fn go(self) -> Result<(), NetnsError> {
        File::from(self.go)
            .write_all(b"g")
            .map_err(|_| NetnsError::ChildGone)
    }
}

/// Forks a child for `argv`: in a new network namespace when `new_netns`, else in tapir's.
/// Returns once the child's namespace exists; the child execs when told to go. If the parent
/// cannot set up the network it kills the child ([`Waiting::abandon`]); if it dies, the child
/// is killed by the kernel.
pub fn spawn(argv: &[OsString], new_netns: bool) -> Result<Waiting, NetnsError> {
    let args: Vec<CString> = argv
        .iter()
        .map(|a| CString::new(a.as_bytes()).unwrap_or_default())
        .collect();
    let (ready_r, ready_w) = nix::unistd::pipe().map_err(|e| NetnsError::Spawn(e.into()))?;
    let (go_r, go_w) = nix::unistd::pipe().map_err(|e| NetnsError::Spawn(e.into()))?;
    let parent = nix::unistd::getpid();
    // The child inherits copies of all four ends; it uses its two by borrowing and never
    // returns, so the parent's are untouched.
    let pid =
        crate::sys::fork_child(|| child(&args, new_netns, parent, ready_w.as_fd(), go_r.as_fd()))
            .map_err(NetnsError::Spawn)?;
    drop(ready_w);
    drop(go_r);
    let mut byte = [0u8; 1];
    match File::from(ready_r).read(&mut byte) {
        Ok(1) if byte[0] == b'r' => Ok(Waiting { pid, go: go_w }),
        _ => {
            let _ = nix::sys::wait::waitpid(pid, None);
            Err(NetnsError::ChildGone)
        }
    }
}

fn child(
    args: &[CString],
    new_netns: bool,
    parent: Pid,
    ready: BorrowedFd<'_>,
    go: BorrowedFd<'_>,
) -> i32 {
    if nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).is_err() || nix::unistd::getppid() != parent
    {
        return 125;
    }
    if new_netns && let Err(e) = unshare(CloneFlags::CLONE_NEWNET) {
        eprintln!("tapir: cannot create a network namespace: {}", OsError(e));
        return 125;
    }
    if nix::unistd::write(ready, b"r") != Ok(1) {
        return 125;
    }
    let mut byte = [0u8; 1];
    // The go byte, or the parent's kill when it could not set up the network (it says why),
    // or the death signal when it died.
    if nix::unistd::read(go, &mut byte) != Ok(1) {
        return 125;
    }
    let Some(program) = args.first() else {
        return 125;
    };
    let e = nix::unistd::execvp(program, args).unwrap_err();
    eprintln!(
        "tapir: cannot run {}: {}",
        program.to_string_lossy(),
        OsError(e)
    );
    if e == nix::errno::Errno::ENOENT {
        127
    } else {
        126
    }
}
