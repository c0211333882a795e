//! `tapir cni` / `tapir-cni`: the CNI plugin's shell around `cni::handle`.
//!
//! Reads the `CNI_*` environment and at most `cni::MAX_CONFIG_LEN` (+1, to tell "too long")
//! bytes of stdin, runs the protocol with the kernel path as the backend, prints the reply on
//! stdout and returns the exit status. Logs go to stderr, which runtimes keep; stdout carries
//! nothing but the one JSON document.

use std::collections::HashMap;
use std::io::{Read, Write};

use crate::cni::{self, Attached, Backend, CniError, ErrorCode, Invocation, NetConf};

/// Runs one CNI operation; returns the process exit status.
pub fn main() -> i32 {
    let env: HashMap<String, String> = std::env::vars_os()
        .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
        .filter(|(k, _)| k.starts_with("CNI_"))
        .collect();
    let mut stdin = Vec::new();
    let limit = u64::try_from(cni::MAX_CONFIG_LEN + 1).unwrap_or(u64::MAX);
    let reply = match std::io::stdin().lock().take(limit).read_to_end(&mut stdin) {
        Ok(_) => cni::handle(&env, &stdin, &mut KernelBackend),
        Err(e) => cni::unreadable_stdin(&e),
    };
    let mut out = std::io::stdout().lock();
    if out
        .write_all(reply.stdout.as_bytes())
        .and_then(|()| out.flush())
        .is_err()
    {
        return 1;
    }
    reply.exit_code
}

/// The kernel path (`crate::kernel`): veth, bridge, lease, nftables.
pub struct KernelBackend;

impl Backend for KernelBackend {
    fn add(&mut self, _conf: &NetConf, _call: &Invocation) -> Result<Attached, CniError> {
        Err(not_built())
    }

    fn del(&mut self, _conf: &NetConf, _call: &Invocation) -> Result<(), CniError> {
        Err(not_built())
    }

    fn check(&mut self, _conf: &NetConf, _call: &Invocation) -> Result<Attached, CniError> {
        Err(not_built())
    }
}

fn not_built() -> CniError {
    CniError::new(
        ErrorCode::Tapir,
        "this tapir was built without the kernel path, so it cannot attach containers",
    )
}
