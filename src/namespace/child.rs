//! What the forked helper does, step by step, before it execs the guest or exits.
//!
//! Runs in a freshly forked, single-threaded child (see `sys::fork_child`). Each step returns
//! a [`ChildError`]; the first failure is sent to the parent as a sentence and the child exits
//! with 1 (127 when exec failed, as a shell would). Nothing here returns to the parent's code.

use std::ffi::{CStr, CString, OsStr};
use std::fs::OpenOptions;
use std::io::Write;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::mount::{MsFlags, mount};
use nix::sched::{CloneFlags, setns, unshare};
use nix::sys::wait::{WaitStatus, waitpid};

use super::idmap::{self, CallerIds};
use super::{ChildError, TapConfig};
use crate::netlink::Netlink;
use crate::sys::OsError;
use crate::sys::fdpass;
use crate::sys::tap::open_tap;

const RESOLV_CONF: &str = "/etc/resolv.conf";

/// The payload that marks the socket factory's fd, after the TAP's.
pub(super) const FACTORY_PAYLOAD: &[u8] = b"socket factory";
/// The payload that marks a `-T` listener's fd, after the TAP's, in the order asked for.
pub(super) const LOOPBACK_LISTENER_PAYLOAD: &[u8] = b"loopback listener";

/// Everything `spawn`'s child needs, prepared before the fork.
pub(super) struct GuestSetup<'a> {
    pub argv: &'a [CString],
    pub resolv_conf: &'a str,
    pub tap: &'a TapConfig,
    pub ids: CallerIds,
    /// Leave a socket factory behind in the namespace (`super::factory`).
    pub socket_factory: bool,
    /// Listen on these ports of the namespace's 127.0.0.1 (`-T`).
    pub loopback_ports: &'a [u16],
}

/// A namespace file opened by the parent, to be joined by the child.
pub(super) struct Namespace {
    pub fd: OwnedFd,
    pub path: String,
    /// Whether failing to join it is an error (otherwise it is skipped).
    pub required: bool,
}

/// Everything `attach`'s child needs.
pub(super) struct AttachSetup<'a> {
    pub userns: Option<Namespace>,
    pub netns: Namespace,
    pub tap: &'a TapConfig,
    pub configure: bool,
}

/// `spawn`'s child: returns only on failure, with the exit code.
pub(super) fn run_guest(sock: BorrowedFd<'_>, setup: &GuestSetup<'_>) -> i32 {
    let error = match enter_and_exec(sock, setup) {
        Ok(never) => match never {},
        Err(e) => e,
    };
    let _ = fdpass::send_error(sock, &error.to_string());
    if matches!(error, ChildError::Exec { .. }) {
        127
    } else {
        1
    }
}

/// `attach`'s child: joins the namespaces, sends the TAP and exits.
pub(super) fn run_attach(sock: BorrowedFd<'_>, setup: &AttachSetup<'_>) -> i32 {
    match join_and_open(sock, setup) {
        Ok(()) => 0,
        Err(e) => {
            let _ = fdpass::send_error(sock, &e.to_string());
            1
        }
    }
}

fn enter_and_exec(
    sock: BorrowedFd<'_>,
    setup: &GuestSetup<'_>,
) -> Result<std::convert::Infallible, ChildError> {
    unshare(CloneFlags::CLONE_NEWUSER).map_err(|e| ChildError::UnshareUser(e.into()))?;
    idmap::write_self(setup.ids)?;
    unshare(CloneFlags::CLONE_NEWNET | CloneFlags::CLONE_NEWNS)
        .map_err(|e| ChildError::UnshareNet(e.into()))?;

    let tap = open_and_configure(setup.tap, true)?;
    fdpass::send_fd(sock, tap.as_fd(), setup.tap.name.as_bytes())?;
    // The guest must not hold the TAP: when tapir exits, the device should go with it.
    drop(tap);
    if setup.socket_factory {
        start_factory(sock);
    }
    // Before the exec, so that the command never finds a forwarded port closed.
    for &port in setup.loopback_ports {
        let listener = listen_on_loopback(port)?;
        fdpass::send_fd(sock, listener.as_fd(), LOOPBACK_LISTENER_PAYLOAD)?;
    }

    replace_resolv_conf(setup.resolv_conf)?;

    let cmd = &setup.argv[0];
    let cause = match nix::unistd::execvp(cmd, setup.argv) {
        Ok(never) => match never {},
        Err(e) => e,
    };
    let cause = if cause == Errno::EACCES && !found_in_path(cmd) {
        Errno::ENOENT
    } else {
        cause
    };
    Err(ChildError::Exec {
        cmd: cmd.to_string_lossy().into_owned(),
        cause: cause.into(),
    })
}

/// A non-blocking, close-on-exec listener on 127.0.0.1:`port` of the current namespace.
fn listen_on_loopback(port: u16) -> Result<OwnedFd, ChildError> {
    use nix::sys::socket::{
        AddressFamily, Backlog, SockFlag, SockType, SockaddrIn, bind, listen, setsockopt, socket,
        sockopt,
    };
    let fail = |e: Errno| ChildError::LoopbackListen {
        port,
        cause: e.into(),
    };
    let fd = socket(
        AddressFamily::Inet,
        SockType::Stream,
        SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
        None,
    )
    .map_err(fail)?;
    setsockopt(&fd, sockopt::ReuseAddr, &true).map_err(fail)?;
    bind(fd.as_raw_fd(), &SockaddrIn::new(127, 0, 0, 1, port)).map_err(fail)?;
    listen(&fd, Backlog::MAXCONN).map_err(fail)?;
    Ok(fd)
}

/// Forks the socket factory (through a middle process that exits at once, so the factory is
/// not the command's child) and sends tapir its end. Spliced forwards are an optimisation: if
/// this fails, tapir gets no factory and carries every forward through the TAP.
fn start_factory(sock: BorrowedFd<'_>) {
    let Ok((ours, theirs)) = fdpass::seqpacket_pair() else {
        return;
    };
    let middle = crate::sys::fork_child(move || {
        match crate::sys::fork_child(move || super::factory::serve(theirs)) {
            Ok(_) => 0,
            Err(_) => 1,
        }
    });
    match middle {
        Ok(pid) if matches!(waitpid(pid, None), Ok(WaitStatus::Exited(_, 0))) => {
            let _ = fdpass::send_fd(sock, ours.as_fd(), FACTORY_PAYLOAD);
        }
        _ => {}
    }
}

/// Whether a PATH lookup of `cmd` finds a file at all. glibc's execvp reports EACCES when any
/// PATH directory is not searchable (say, /root/bin after the uid changed), even if the
/// command exists nowhere; "permission denied" would then send the user looking in the
/// wrong place.
fn found_in_path(cmd: &CStr) -> bool {
    let name = Path::new(OsStr::from_bytes(cmd.to_bytes()));
    if cmd.to_bytes().contains(&b'/') {
        return name.exists();
    }
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/bin:/usr/bin".into());
    std::env::split_paths(&path).any(|dir| dir.join(name).exists())
}

fn join_and_open(sock: BorrowedFd<'_>, setup: &AttachSetup<'_>) -> Result<(), ChildError> {
    if let Some(userns) = &setup.userns {
        join(userns, CloneFlags::CLONE_NEWUSER, "user")?;
    }
    join(&setup.netns, CloneFlags::CLONE_NEWNET, "network")?;
    let tap = open_and_configure(setup.tap, setup.configure)?;
    fdpass::send_fd(sock, tap.as_fd(), setup.tap.name.as_bytes())?;
    Ok(())
}

fn join(ns: &Namespace, kind: CloneFlags, kind_name: &'static str) -> Result<(), ChildError> {
    match setns(ns.fd.as_fd(), kind) {
        Ok(()) => Ok(()),
        // Already a member of that user namespace, or not allowed in but maybe not needed
        // (slirp4netns ignores this too); joining the netns will tell.
        Err(_) if !ns.required => Ok(()),
        Err(e) => Err(ChildError::Setns {
            kind: kind_name,
            path: ns.path.clone(),
            cause: e.into(),
        }),
    }
}

/// Opens the TAP in the current netns; with `configure`, brings `lo` up and gives the TAP the
/// plan's guest address, the MTU and a default route via the gateway (slirp4netns `-c`).
fn open_and_configure(tap: &TapConfig, configure: bool) -> Result<OwnedFd, ChildError> {
    let fd = open_tap(&tap.name, tap.vnet_hdr)?;
    if !configure {
        return Ok(fd);
    }
    let mut nl = Netlink::open()?;
    let lo = nl.link_index("lo")?;
    nl.link_set_up(lo)?;
    let index = nl.link_index(&tap.name)?;
    nl.link_set_mtu(index, tap.mtu)?;
    if let Some(mac) = tap.mac {
        nl.link_set_mac(index, mac)?;
    }
    nl.addr_add_v4(index, tap.plan.guest, tap.plan.prefix_len)?;
    // Up before the route: the gateway is only reachable once the subnet route exists.
    nl.link_set_up(index)?;
    nl.route_add_default_v4(tap.plan.gateway)?;
    Ok(fd)
}

/// Puts `contents` at /etc/resolv.conf (or the file it links to) in this mount namespace only.
fn replace_resolv_conf(contents: &str) -> Result<(), ChildError> {
    // Without this, the bind mount could propagate back to the caller's namespace.
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .map_err(|e| ChildError::MakePrivate(e.into()))?;

    // A bind mount over a symlink would follow it anyway; resolve it first so that a
    // dangling link gets the clear message.
    let target = match std::fs::canonicalize(RESOLV_CONF) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(ChildError::ResolvConfMissing);
        }
        Err(e) => return Err(ChildError::ResolvConfTarget(e.into())),
    };
    let temp = write_temp_file(contents)?;
    let bound = mount(
        Some(&temp),
        &target,
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    );
    // The mount keeps the inode alive; the name is not needed any more either way.
    let _ = std::fs::remove_file(&temp);
    bound.map_err(|e| ChildError::ResolvConfBind {
        target: target.display().to_string(),
        cause: e.into(),
    })
}

/// Creates a new file in the temporary directory with `contents`, never following or reusing
/// an existing name.
fn write_temp_file(contents: &str) -> Result<PathBuf, ChildError> {
    let dir = std::env::temp_dir();
    let pid = std::process::id();
    let mut attempt = 0;
    loop {
        let path = dir.join(format!("tapir-resolv.conf.{pid}.{attempt}"));
        let opened = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .open(&path);
        match opened {
            Ok(mut f) => {
                return match f.write_all(contents.as_bytes()) {
                    Ok(()) => Ok(path),
                    Err(e) => {
                        let _ = std::fs::remove_file(&path);
                        Err(temp_error(&path, e.into()))
                    }
                };
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && attempt < 10 => attempt += 1,
            Err(e) => return Err(temp_error(&path, e.into())),
        }
    }
}

fn temp_error(path: &Path, cause: OsError) -> ChildError {
    ChildError::ResolvConfTemp {
        path: path.display().to_string(),
        cause,
    }
}

#[cfg(test)]
mod test {
    use super::*;

    #[test]
    fn temp_files_are_fresh_and_hold_the_contents() {
        let a = write_temp_file("nameserver 10.0.2.3\n").unwrap();
        let b = write_temp_file("other").unwrap();
        assert_ne!(a, b);
        assert_eq!(
            std::fs::read_to_string(&a).unwrap(),
            "nameserver 10.0.2.3\n"
        );
        std::fs::remove_file(a).unwrap();
        std::fs::remove_file(b).unwrap();
    }

    #[test]
    fn path_lookup_finds_only_existing_files() {
        assert!(found_in_path(c"sh"));
        assert!(found_in_path(c"/bin/sh"));
        assert!(!found_in_path(c"tapir-no-such-command"));
        assert!(!found_in_path(c"/nonexistent/sh"));
    }
}
