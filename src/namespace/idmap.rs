//! The user namespace's id maps: the only mapping an unprivileged process may write for itself.
//!
//! Without privilege, a process that has just unshared a user namespace may map exactly one
//! id: its own effective uid (gid) outside to 0 inside, and for the gid map only after writing
//! `deny` to `setgroups` (user_namespaces(7), "Defining user and group ID mappings"). The guest
//! then runs as root in its namespace while the host sees the caller's ids. Subordinate id
//! ranges (newuidmap) are deliberately not used: they need setuid helpers and /etc/subuid.

use std::fs::OpenOptions;
use std::io::Write;

use nix::unistd::{getegid, geteuid};

use super::ChildError;

/// What the child writes to `/proc/self/setgroups` before its gid map.
pub const SETGROUPS_DENY: &str = "deny";

/// The caller's effective ids outside, captured before unsharing (afterwards they read as the
/// overflow id until the maps are written).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CallerIds {
    pub uid: u32,
    pub gid: u32,
}

impl CallerIds {
    pub fn current() -> Self {
        CallerIds {
            uid: geteuid().as_raw(),
            gid: getegid().as_raw(),
        }
    }

    /// The `uid_map` contents: root inside is the caller outside.
    pub fn uid_map(&self) -> String {
        map_line(0, self.uid, 1)
    }

    /// The `gid_map` contents: group root inside is the caller's group outside.
    pub fn gid_map(&self) -> String {
        map_line(0, self.gid, 1)
    }
}

/// One line of a `uid_map`/`gid_map`: `ID-inside ID-outside length`.
pub fn map_line(inside: u32, outside: u32, count: u32) -> String {
    format!("{inside} {outside} {count}\n")
}

/// Writes setgroups, uid_map and gid_map for the calling process, which must have just
/// unshared its user namespace. A missing `setgroups` file (Linux < 3.19) is not an error.
pub fn write_self(ids: CallerIds) -> Result<(), ChildError> {
    match write_proc("/proc/self/setgroups", SETGROUPS_DENY) {
        Err(ChildError::IdMap { cause, .. }) if cause.0 == nix::errno::Errno::ENOENT => {}
        other => other?,
    }
    write_proc("/proc/self/uid_map", &ids.uid_map())?;
    write_proc("/proc/self/gid_map", &ids.gid_map())
}

/// These files want the whole contents in a single write(2).
fn write_proc(file: &'static str, contents: &str) -> Result<(), ChildError> {
    let error = |e: std::io::Error| ChildError::IdMap {
        file,
        contents: contents.trim_end().to_string(),
        cause: e.into(),
    };
    let mut f = OpenOptions::new().write(true).open(file).map_err(error)?;
    let written = f.write(contents.as_bytes()).map_err(error)?;
    if written != contents.len() {
        return Err(error(std::io::Error::from_raw_os_error(libc::EIO)));
    }
    Ok(())
}

#[cfg(test)]
mod test {
    use super::*;

    #[test]
    fn maps_the_caller_to_root() {
        let ids = CallerIds {
            uid: 1000,
            gid: 100,
        };
        assert_eq!(ids.uid_map(), "0 1000 1\n");
        assert_eq!(ids.gid_map(), "0 100 1\n");
        assert_eq!(map_line(0, 65534, 1), "0 65534 1\n");
    }

    #[test]
    fn write_errors_show_the_line() {
        let e = ChildError::IdMap {
            file: "/proc/self/uid_map",
            contents: "0 1000 1".into(),
            cause: nix::errno::Errno::EPERM.into(),
        };
        assert_eq!(
            e.to_string(),
            "cannot write \"0 1000 1\" to /proc/self/uid_map: operation not permitted"
        );
    }
}
