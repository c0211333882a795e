//! The `tapir run` process model: the guest gets new namespaces, tapir keeps the host's.
//!
//! Theory of operation. tapir must stay in the caller's network namespace, because that is
//! where its host sockets have to live, yet the TAP device has to exist inside the guest's.
//! So [`spawn`] forks a child that
//!
//! 1. unshares a user namespace and maps the caller's uid/gid to root (`idmap`),
//! 2. unshares a network and a mount namespace,
//! 3. brings `lo` up, creates the TAP and configures it (MTU, address, up, default route)
//!    through `netlink`, which needs the CAP_NET_ADMIN it now has over its own netns,
//! 4. passes the TAP fd to the parent over a socketpair (`sys::fdpass`),
//! 5. bind-mounts the guest's resolv.conf over /etc/resolv.conf in its private mount tree,
//! 6. and execs the command: the child becomes the guest, with the pid `spawn` returns.
//!
//! The socket is close-on-exec, so after the fd the parent reads either an error sentence
//! (any step failed, including exec) or end-of-file (exec succeeded). On failure the parent
//! reaps the child before returning, so nothing is left behind. [`attach`] is the
//! slirp4netns-style variant: the child enters an existing namespace, hands back the TAP and
//! exits.
//!
//! The parent's state is unchanged by either call (signal mask included, see
//! `sys::fork_child`); both must run before tapir starts any thread. Errors that happen in the
//! child are typed there ([`ChildError`]) and cross the process boundary as their sentence.

mod child;
pub mod factory;
pub mod idmap;

use std::ffi::{CString, OsString};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::sys::signal::{Signal, kill};
use nix::sys::wait::{WaitStatus, waitpid};
use nix::unistd::Pid;

use crate::config::AddressPlan;
use crate::netlink::NetlinkError;
use crate::sys::OsError;
use crate::sys::fdpass::{self, FdPassError, Received};
use crate::sys::tap::TapError;

/// The TAP device to create (or attach to) inside the guest's network namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TapConfig {
    pub name: String,
    pub mtu: u32,
    pub plan: AddressPlan,
    /// Prefix frames with a virtio-net header and enable checksum/TSO offload.
    pub vnet_hdr: bool,
    /// The TAP's own MAC address, set when configuring (slirp4netns `--macaddress`).
    pub mac: Option<[u8; 6]>,
}

/// What to run as the guest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestCommand {
    /// The command and its arguments; `argv[0]` is looked up in PATH.
    pub argv: Vec<OsString>,
    /// contents bind-mounted over /etc/resolv.conf in the guest
    pub resolv_conf: String,
    /// Leave a socket factory in the guest's namespace, for spliced forwards.
    pub socket_factory: bool,
    /// Ports to listen on at the guest's 127.0.0.1 before the command starts (`-T`).
    pub loopback_ports: Vec<u16>,
}

/// A running guest: its TAP (non-blocking, close-on-exec) and its pid, to be reaped by the
/// caller.
#[derive(Debug)]
pub struct Guest {
    pub tap: OwnedFd,
    pub pid: Pid,
    /// Makes sockets inside the guest's namespace, when asked for and started.
    pub factory: Option<factory::SocketFactory>,
    /// Non-blocking listeners on the guest's 127.0.0.1, one per `GuestCommand::loopback_ports`
    /// entry and in that order.
    pub loopback_listeners: Vec<OwnedFd>,
}

/// An existing namespace to attach a TAP to (slirp4netns's `PID` and `--netns-type=path`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AttachTarget {
    /// Join `/proc/PID/ns/user` (a failure is ignored, as in slirp4netns: the caller may
    /// already be in it) and then `/proc/PID/ns/net`.
    Pid(i32),
    /// Join `userns` if given (it must work), then `netns`.
    Path {
        netns: PathBuf,
        userns: Option<PathBuf>,
    },
}

/// Why the guest could not be started or the TAP not obtained.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum NamespaceError {
    #[error("no command to run was given")]
    EmptyCommand,
    #[error("the command argument {0:?} contains a NUL byte")]
    NulInCommand(String),
    #[error("PID {0} is not valid: it must be a positive integer")]
    BadPid(i32),
    #[error("cannot open the namespace {path}: {cause}{hint}", hint = open_ns_hint(.cause))]
    OpenNamespace { path: String, cause: OsError },
    #[error("cannot fork the namespace helper: {0}")]
    Fork(OsError),
    #[error(transparent)]
    FdPass(#[from] FdPassError),
    /// A [`ChildError`] sentence, sent by the child before it exited.
    #[error("{0}")]
    Child(String),
    #[error("the namespace helper ended without handing over the TAP device ({0})")]
    ChildVanished(String),
    #[error("cannot wait for the namespace helper (pid {pid}): {cause}")]
    Wait { pid: i32, cause: OsError },
}

fn open_ns_hint(cause: &OsError) -> &'static str {
    match cause.0 {
        Errno::ENOENT => " (does that process or file exist?)",
        Errno::EACCES | Errno::EPERM => " (it belongs to another user)",
        _ => "",
    }
}

/// What can go wrong inside the child; the parent only sees the sentence.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ChildError {
    #[error("cannot create a user namespace: {0}{hint}", hint = unshare_user_hint(.0))]
    UnshareUser(OsError),
    #[error("cannot write {contents:?} to {file}: {cause}")]
    IdMap {
        file: &'static str,
        contents: String,
        cause: OsError,
    },
    #[error("cannot create the guest's network and mount namespaces: {0}{hint}", hint = unshare_net_hint(.0))]
    UnshareNet(OsError),
    #[error("cannot enter the {kind} namespace {path}: {cause}")]
    Setns {
        kind: &'static str,
        path: String,
        cause: OsError,
    },
    #[error(transparent)]
    Tap(#[from] TapError),
    #[error(transparent)]
    Netlink(#[from] NetlinkError),
    #[error(transparent)]
    FdPass(#[from] FdPassError),
    #[error("cannot make the guest's mount tree private: {0}")]
    MakePrivate(OsError),
    #[error(
        "cannot give the guest its own resolv.conf: /etc/resolv.conf does not exist or is a \
         dangling symlink (create the file it should be, even empty)"
    )]
    ResolvConfMissing,
    #[error("cannot resolve /etc/resolv.conf: {0}")]
    ResolvConfTarget(OsError),
    #[error("cannot create the guest's resolv.conf at {path}: {cause}")]
    ResolvConfTemp { path: String, cause: OsError },
    #[error("cannot bind-mount the guest's resolv.conf over {target}: {cause}")]
    ResolvConfBind { target: String, cause: OsError },
    #[error("cannot listen on the guest's 127.0.0.1:{port} for -T: {cause}")]
    LoopbackListen { port: u16, cause: OsError },
    #[error("cannot run {cmd}: {cause}")]
    Exec { cmd: String, cause: OsError },
}

fn unshare_user_hint(cause: &OsError) -> &'static str {
    match cause.0 {
        Errno::EPERM => {
            " (are unprivileged user namespaces disabled? see kernel.unprivileged_userns_clone, \
             kernel.apparmor_restrict_unprivileged_userns or user.max_user_namespaces)"
        }
        Errno::ENOSPC => " (the limit user.max_user_namespaces is 0 or reached)",
        Errno::EUSERS => " (user namespaces are nested too deeply)",
        Errno::EINVAL => " (is tapir running in a chroot?)",
        _ => "",
    }
}

fn unshare_net_hint(cause: &OsError) -> &'static str {
    match cause.0 {
        Errno::ENOSPC => {
            " (the limit user.max_net_namespaces or user.max_mnt_namespaces is 0 or reached)"
        }
        _ => "",
    }
}

/// Starts `cmd` in new user, network and mount namespaces with the TAP `tap` configured in
/// them, and returns the TAP fd and the guest's pid. On error nothing is left running.
pub fn spawn(cmd: &GuestCommand, tap: &TapConfig) -> Result<Guest, NamespaceError> {
    let argv = command_argv(&cmd.argv)?;
    let ids = idmap::CallerIds::current();
    let (parent_sock, child_sock) = fdpass::seqpacket_pair()?;
    let guest = child::GuestSetup {
        argv: &argv,
        resolv_conf: &cmd.resolv_conf,
        tap,
        ids,
        socket_factory: cmd.socket_factory,
        loopback_ports: &cmd.loopback_ports,
    };
    let pid = crate::sys::fork_child(|| child::run_guest(child_sock.as_fd(), &guest))
        .map_err(NamespaceError::Fork)?;
    // The child's end must be closed here, or the exec's end-of-file never arrives.
    drop(child_sock);

    let tap_fd = match fdpass::recv(parent_sock.as_fd()) {
        Ok(Received::Fd { fd, .. }) => fd,
        other => return Err(child_failed(pid, other)),
    };
    let mut factory = None;
    let mut loopback_listeners = Vec::new();
    loop {
        match fdpass::recv(parent_sock.as_fd()) {
            Ok(Received::Fd { fd, payload }) if payload == child::FACTORY_PAYLOAD => {
                factory = Some(factory::SocketFactory::new(fd));
            }
            Ok(Received::Fd { fd, payload }) if payload == child::LOOPBACK_LISTENER_PAYLOAD => {
                loopback_listeners.push(fd);
            }
            Ok(Received::Closed) => {
                log::info!(
                    "started {:?} as pid {pid} with TAP {}",
                    cmd.argv[0],
                    tap.name
                );
                return Ok(Guest {
                    tap: tap_fd,
                    pid,
                    factory,
                    loopback_listeners,
                });
            }
            other => return Err(child_failed(pid, other)),
        }
    }
}

/// Opens (and with `configure`, sets up) the TAP `tap` inside an existing namespace, the way
/// slirp4netns does, and returns its fd. The helper child has exited when this returns.
pub fn attach(
    target: &AttachTarget,
    tap: &TapConfig,
    configure: bool,
) -> Result<OwnedFd, NamespaceError> {
    let (userns, userns_required, netns) = match target {
        AttachTarget::Pid(pid) if *pid <= 0 => return Err(NamespaceError::BadPid(*pid)),
        AttachTarget::Pid(pid) => (
            Some(PathBuf::from(format!("/proc/{pid}/ns/user"))),
            false,
            PathBuf::from(format!("/proc/{pid}/ns/net")),
        ),
        AttachTarget::Path { netns, userns } => (userns.clone(), true, netns.clone()),
    };
    let userns = match userns {
        Some(path) => match open_namespace(&path) {
            Ok(ns) => Some(child::Namespace {
                fd: ns,
                path: path.display().to_string(),
                required: userns_required,
            }),
            Err(_) if !userns_required => None,
            Err(e) => return Err(e),
        },
        None => None,
    };
    let netns = child::Namespace {
        fd: open_namespace(&netns)?,
        path: netns.display().to_string(),
        required: true,
    };

    let (parent_sock, child_sock) = fdpass::seqpacket_pair()?;
    let setup = child::AttachSetup {
        userns,
        netns,
        tap,
        configure,
    };
    let pid = crate::sys::fork_child(|| child::run_attach(child_sock.as_fd(), &setup))
        .map_err(NamespaceError::Fork)?;
    drop(child_sock);
    drop(setup);

    match fdpass::recv(parent_sock.as_fd()) {
        Ok(Received::Fd { fd, .. }) => {
            reap(pid)?;
            log::info!("attached to TAP {} in {}", tap.name, target_label(target));
            Ok(fd)
        }
        other => Err(child_failed(pid, other)),
    }
}

fn target_label(target: &AttachTarget) -> String {
    match target {
        AttachTarget::Pid(pid) => format!("the network namespace of pid {pid}"),
        AttachTarget::Path { netns, .. } => netns.display().to_string(),
    }
}

fn open_namespace(path: &Path) -> Result<OwnedFd, NamespaceError> {
    std::fs::File::open(path)
        .map(OwnedFd::from)
        .map_err(|e| NamespaceError::OpenNamespace {
            path: path.display().to_string(),
            cause: e.into(),
        })
}

fn command_argv(argv: &[OsString]) -> Result<Vec<CString>, NamespaceError> {
    if argv.is_empty() {
        return Err(NamespaceError::EmptyCommand);
    }
    argv.iter()
        .map(|a| {
            CString::new(a.as_bytes())
                .map_err(|_| NamespaceError::NulInCommand(a.to_string_lossy().into_owned()))
        })
        .collect()
}

/// Turns an unexpected message from the child into the error to return, after making sure
/// the child is gone.
fn child_failed(pid: Pid, got: Result<Received, FdPassError>) -> NamespaceError {
    match got {
        // The child _exit()s right after sending its sentence.
        Ok(Received::Error(sentence)) => match reap(pid) {
            Ok(_) => NamespaceError::Child(sentence),
            Err(e) => e,
        },
        Ok(Received::Closed) => match reap(pid) {
            Ok(status) => NamespaceError::ChildVanished(describe_status(status)),
            Err(e) => e,
        },
        Ok(Received::Fd { .. }) => {
            let _ = kill(pid, Signal::SIGKILL);
            let _ = reap(pid);
            NamespaceError::FdPass(FdPassError::Malformed("a second file descriptor"))
        }
        Err(e) => {
            let _ = kill(pid, Signal::SIGKILL);
            let _ = reap(pid);
            NamespaceError::FdPass(e)
        }
    }
}

fn reap(pid: Pid) -> Result<WaitStatus, NamespaceError> {
    loop {
        match waitpid(pid, None) {
            Err(Errno::EINTR) => continue,
            Err(e) => {
                return Err(NamespaceError::Wait {
                    pid: pid.as_raw(),
                    cause: e.into(),
                });
            }
            Ok(status) => return Ok(status),
        }
    }
}

fn describe_status(status: WaitStatus) -> String {
    match status {
        WaitStatus::Exited(_, code) => format!("it exited with status {code}"),
        WaitStatus::Signaled(_, sig, _) => format!("it was killed by {}", sig.as_str()),
        other => format!("{other:?}"),
    }
}

/// The shell's `$?` for a finished child: `exit(n)` gives n, death by signal s gives 128+s,
/// and a stop by signal s also 128+s (as bash reports a stopped job). Statuses that carry no
/// outcome (continued, still alive) give 1, so that a misuse never reads as success.
pub fn wait_status_code(status: WaitStatus) -> i32 {
    match status {
        WaitStatus::Exited(_, code) => code,
        WaitStatus::Signaled(_, sig, _) | WaitStatus::Stopped(_, sig) => 128 + sig as i32,
        WaitStatus::PtraceEvent(_, sig, _) => 128 + sig as i32,
        WaitStatus::PtraceSyscall(_) | WaitStatus::Continued(_) | WaitStatus::StillAlive => 1,
    }
}

#[cfg(test)]
mod test {
    use super::*;

    #[test]
    fn exit_codes_follow_the_shell() {
        let pid = Pid::from_raw(42);
        assert_eq!(wait_status_code(WaitStatus::Exited(pid, 0)), 0);
        assert_eq!(wait_status_code(WaitStatus::Exited(pid, 3)), 3);
        assert_eq!(
            wait_status_code(WaitStatus::Signaled(pid, Signal::SIGKILL, false)),
            137
        );
        assert_eq!(
            wait_status_code(WaitStatus::Signaled(pid, Signal::SIGTERM, true)),
            143
        );
        assert_eq!(
            wait_status_code(WaitStatus::Stopped(pid, Signal::SIGTSTP)),
            148
        );
        assert_eq!(wait_status_code(WaitStatus::StillAlive), 1);
    }

    #[test]
    fn empty_or_nul_commands_are_refused_before_forking() {
        assert_eq!(command_argv(&[]), Err(NamespaceError::EmptyCommand));
        let bad = vec![OsString::from("a\0b")];
        assert_eq!(
            command_argv(&bad),
            Err(NamespaceError::NulInCommand("a\0b".into()))
        );
        let ok = command_argv(&[OsString::from("sh"), OsString::from("-c")]).unwrap();
        assert_eq!(
            ok,
            vec![CString::new("sh").unwrap(), CString::new("-c").unwrap()]
        );
    }

    #[test]
    fn child_errors_read_as_sentences() {
        assert_eq!(
            ChildError::UnshareUser(Errno::ENOSPC.into()).to_string(),
            "cannot create a user namespace: no space left on device (the limit user.max_user_namespaces is 0 or reached)"
        );
        assert_eq!(
            ChildError::Exec {
                cmd: "nope".into(),
                cause: Errno::ENOENT.into()
            }
            .to_string(),
            "cannot run nope: no such file or directory"
        );
        let e = attach(&AttachTarget::Pid(-1), &tap_config(), false).unwrap_err();
        assert_eq!(
            e.to_string(),
            "PID -1 is not valid: it must be a positive integer"
        );
    }

    /// Needs /dev/net/tun readable and writable and unprivileged user namespaces; run with
    /// `cargo test -- --ignored --test-threads=1` (as any user: it creates its own netns).
    #[test]
    #[ignore = "needs /dev/net/tun and user namespaces"]
    fn spawned_guest_sees_its_tap_and_exit_code_comes_back() {
        let script = "ip -4 addr show tap0 | grep -q 10.0.2.100/24 && \
                      ip route | grep -q 'default via 10.0.2.2' && \
                      grep -q 'nameserver 10.0.2.3' /etc/resolv.conf && exit 3";
        let cmd = GuestCommand {
            argv: ["sh", "-c", script].iter().map(OsString::from).collect(),
            resolv_conf: "nameserver 10.0.2.3\n".into(),
            socket_factory: false,
            loopback_ports: Vec::new(),
        };
        let guest = spawn(&cmd, &tap_config()).unwrap();
        let status = waitpid(guest.pid, None).unwrap();
        assert_eq!(wait_status_code(status), 3);

        let missing = GuestCommand {
            argv: vec!["tapir-no-such-command".into()],
            ..cmd
        };
        let e = spawn(&missing, &tap_config()).unwrap_err();
        assert_eq!(
            e.to_string(),
            "cannot run tapir-no-such-command: no such file or directory"
        );
    }

    fn tap_config() -> TapConfig {
        TapConfig {
            mac: None,
            name: "tap0".into(),
            mtu: 65520,
            plan: AddressPlan::default(),
            vnet_hdr: true,
        }
    }
}
