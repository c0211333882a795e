//! The two sysctls the bridge network needs, in the network namespace tapir runs in.
//!
//! `net.ipv4.ip_forward=1` lets the host route between the bridge and its other interfaces;
//! its old value is kept in the lease file and restored when the last bridge goes.
//! `net.ipv4.conf.BRIDGE.route_localnet=1` lets a connection to 127.0.0.1:PORT be DNATed to a
//! container (the kernel otherwise drops a packet with a loopback source on a non-loopback
//! route); it is set on the bridge only and goes with it. /proc/sys/net belongs to the network
//! namespace of the process that opens it, so this never reaches another namespace.

use std::path::PathBuf;

use crate::sys::OsError;

pub const IP_FORWARD: &str = "/proc/sys/net/ipv4/ip_forward";

#[derive(Debug, thiserror::Error)]
pub enum SysctlError {
    #[error("cannot read {path}: {cause}")]
    Read { path: PathBuf, cause: OsError },
    #[error("cannot set {path} to {value}: {cause}")]
    Write {
        path: PathBuf,
        value: String,
        cause: OsError,
    },
}

pub fn read(path: &str) -> Result<String, SysctlError> {
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_string())
        .map_err(|e| SysctlError::Read {
            path: path.into(),
            cause: e.into(),
        })
}

pub fn write(path: &str, value: &str) -> Result<(), SysctlError> {
    std::fs::write(path, value).map_err(|e| SysctlError::Write {
        path: path.into(),
        value: value.to_string(),
        cause: e.into(),
    })
}

/// `/proc/sys/net/ipv4/conf/BRIDGE/route_localnet`.
pub fn route_localnet(bridge: &str) -> String {
    format!("/proc/sys/net/ipv4/conf/{bridge}/route_localnet")
}
