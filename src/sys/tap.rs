//! Opening a TAP device through /dev/net/tun.
//!
//! `TUNSETIFF` with `IFF_TAP | IFF_NO_PI` either creates the named device in the caller's
//! network namespace or, if a persistent TAP of that name already exists there, attaches to it
//! (the kernel needs CAP_NET_ADMIN over the namespace to create; attaching to a persistent
//! device owned by the caller needs nothing). With a virtio-net header, every frame read or
//! written is prefixed by the 10-byte `struct virtio_net_hdr`, and `TUNSETOFFLOAD` lets the
//! guest hand over unchecksummed TSO super-frames (see research/smoltcp-performance.md §3).
//!
//! The returned fd is non-blocking and close-on-exec. This module does not configure
//! addresses or bring the link up; that is `netlink.rs`'s job.

use std::os::fd::{AsRawFd, OwnedFd};

use nix::errno::Errno;
use nix::fcntl::{OFlag, open};
use nix::sys::stat::Mode;

use super::OsError;

/// The clone device every TUN/TAP is made from.
pub const TUN_PATH: &str = "/dev/net/tun";

/// Bytes of `struct virtio_net_hdr` in front of every frame when the vnet header is on.
pub const VNET_HDR_LEN: usize = 10;

/// Interface names are at most IFNAMSIZ - 1 bytes.
const MAX_NAME_LEN: usize = libc::IFNAMSIZ - 1;

/// Why a TAP device could not be opened.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TapError {
    #[error(
        "TAP device name {0:?} is not valid: it must be 1 to 15 bytes without '/', ':', whitespace or NUL"
    )]
    Name(String),
    #[error("cannot open {TUN_PATH}: {0}{hint}", hint = open_hint(.0))]
    Open(OsError),
    #[error("cannot create or attach to TAP device {name:?}: {cause}{hint}", hint = setiff_hint(.cause))]
    SetIff { name: String, cause: OsError },
    #[error("cannot set the virtio-net header size on TAP device {name:?}: {cause}")]
    VnetHdr { name: String, cause: OsError },
    #[error("cannot enable checksum and TSO offload on TAP device {name:?}: {cause}")]
    Offload { name: String, cause: OsError },
}

fn open_hint(cause: &OsError) -> &'static str {
    match cause.0 {
        Errno::EACCES | Errno::EPERM => {
            " (it must be readable and writable by your user; distributions ship it 0666)"
        }
        Errno::ENOENT | Errno::ENODEV | Errno::ENXIO => {
            " (is the tun kernel module loaded? try `modprobe tun`)"
        }
        _ => "",
    }
}

fn setiff_hint(cause: &OsError) -> &'static str {
    match cause.0 {
        Errno::EPERM => {
            " (creating a TAP needs CAP_NET_ADMIN in the owner of the network namespace; a persistent \
             TAP must belong to your user)"
        }
        Errno::EBUSY => " (another process already has it open)",
        Errno::EINVAL => " (a device of that name exists and is not a TAP, or its flags differ)",
        _ => "",
    }
}

/// `struct ifreq` as TUNSETIFF reads it: the name, then `ifr_flags`, padded to the union size.
#[repr(C)]
struct IfReqFlags {
    name: [u8; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

const _: () = assert!(size_of::<IfReqFlags>() == size_of::<libc::ifreq>());

/// Checks an interface name the way the kernel's `dev_valid_name` does.
pub fn check_name(name: &str) -> Result<(), TapError> {
    let bad = name.is_empty()
        || name.len() > MAX_NAME_LEN
        || name == "."
        || name == ".."
        || name
            .bytes()
            .any(|b| b == b'/' || b == b':' || b == 0 || b.is_ascii_whitespace());
    if bad {
        Err(TapError::Name(name.to_string()))
    } else {
        Ok(())
    }
}

/// Opens (creating or attaching to) the TAP device `name` in the current network namespace.
pub fn open_tap(name: &str, vnet_hdr: bool) -> Result<OwnedFd, TapError> {
    check_name(name)?;
    let flags = OFlag::O_RDWR | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC;
    let fd = open(TUN_PATH, flags, Mode::empty()).map_err(|e| TapError::Open(e.into()))?;

    let mut req = IfReqFlags {
        name: [0; libc::IFNAMSIZ],
        flags: 0,
        _pad: [0; 22],
    };
    req.name[..name.len()].copy_from_slice(name.as_bytes());
    let mut iff = libc::IFF_TAP | libc::IFF_NO_PI;
    if vnet_hdr {
        iff |= libc::IFF_VNET_HDR;
    }
    // The flags are 0x7002 at most, which fits a c_short.
    req.flags = iff as libc::c_short;
    // SAFETY: TUNSETIFF reads and writes a `struct ifreq`; `req` has its size and layout and
    // lives across the call.
    let ret = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TUNSETIFF, &mut req as *mut IfReqFlags) };
    Errno::result(ret).map_err(|e| TapError::SetIff {
        name: name.to_string(),
        cause: e.into(),
    })?;

    if vnet_hdr {
        let size: libc::c_int = VNET_HDR_LEN as libc::c_int;
        // SAFETY: TUNSETVNETHDRSZ reads one int through the pointer, which is valid here.
        let ret = unsafe {
            libc::ioctl(
                fd.as_raw_fd(),
                libc::TUNSETVNETHDRSZ,
                &size as *const libc::c_int,
            )
        };
        Errno::result(ret).map_err(|e| TapError::VnetHdr {
            name: name.to_string(),
            cause: e.into(),
        })?;

        let offload = libc::TUN_F_CSUM | libc::TUN_F_TSO4 | libc::TUN_F_TSO6;
        // SAFETY: TUNSETOFFLOAD takes its argument by value, not through a pointer.
        let ret = unsafe {
            libc::ioctl(
                fd.as_raw_fd(),
                libc::TUNSETOFFLOAD,
                libc::c_ulong::from(offload),
            )
        };
        Errno::result(ret).map_err(|e| TapError::Offload {
            name: name.to_string(),
            cause: e.into(),
        })?;
    }
    Ok(fd)
}

#[cfg(test)]
mod test {
    use super::*;

    #[test]
    fn names_follow_the_kernel_rules() {
        assert!(check_name("tap0").is_ok());
        assert!(check_name("a-very-long-nam").is_ok());
        for bad in ["", "a-very-long-name", "tap/0", "tap 0", "tap:0", ".", ".."] {
            assert_eq!(
                check_name(bad),
                Err(TapError::Name(bad.to_string())),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn errors_say_what_to_do() {
        let e = TapError::Open(OsError(Errno::EACCES));
        assert_eq!(
            e.to_string(),
            "cannot open /dev/net/tun: permission denied (it must be readable and writable by your \
             user; distributions ship it 0666)"
        );
        let e = TapError::SetIff {
            name: "tap0".into(),
            cause: OsError(Errno::EBUSY),
        };
        assert_eq!(
            e.to_string(),
            "cannot create or attach to TAP device \"tap0\": device or resource busy (another \
             process already has it open)"
        );
    }
}
