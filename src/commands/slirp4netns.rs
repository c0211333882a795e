//! `slirp4netns` (argv[0]) or `tapir slirp4netns`: slirp4netns 1.2's command line on tapir's
//! engine, so rootlesskit, podman and friends can use tapir by changing one binary path.
//!
//! The process model is slirp4netns's: a short-lived child joins the target's user and
//! network namespaces, opens (or attaches to) the TAP, configures it with `--configure`, and
//! passes the fd back; this process stays in the caller's namespaces and runs the network
//! until the exit fd hangs up or a termination signal arrives. "1" is written to the ready fd
//! once the TAP is held and the API socket listens.
//!
//! Compatibility notes (where tapir differs, and why):
//! - `--enable-sandbox` moves tapir into an empty filesystem (`sys::sandbox`): slirp4netns
//!   keeps /etc and /run readable in its sandbox to re-read resolv.conf, tapir keeps only the
//!   directories resolv.conf is in (`sys::resolv`). Unlike slirp4netns (#317) it also works with
//!   `--netns-type=path` and without root, through a user namespace of its own.
//! - `--enable-seccomp` sets no_new_privs and installs an allow-list (`sys::sandbox`) before
//!   the ready byte is written; a call outside it fails with EPERM instead of killing tapir.
//! - `--disable-dns`: TCP to the DNS address is refused at once rather than left to time out.
//! - a termination signal ends tapir cleanly (the API socket file is removed), with the
//!   128+N status a killed slirp4netns reports.

use std::ffi::OsString;
use std::io::Write;
use std::net::IpAddr;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use crate::api::server::ApiServer;
use crate::commands::slirp4netns_args::{self, Parsed, Slirp4netnsOptions, Target};
use crate::config::{AddressPlan, Limits};
use crate::event_loop::{self, Ending, GuestSockets, Lifetime, NetworkConfig};
use crate::namespace::{self, AttachTarget, TapConfig};
use crate::sys::resolv::{self, RESOLV_CONF};

/// Runs slirp4netns mode with `args` (without argv[0]); returns the exit code.
pub fn main(args: &[OsString]) -> i32 {
    let opts = match slirp4netns_args::parse(args) {
        Ok(Parsed::Help) => {
            print!("{}", slirp4netns_args::help_text());
            return 0;
        }
        Ok(Parsed::Version) => {
            print!("{}", slirp4netns_args::version_text());
            return 0;
        }
        Ok(Parsed::Run(opts)) => opts,
        Err(e) => {
            eprintln!("{e}");
            if e.shows_usage() {
                print!("{}", slirp4netns_args::help_text());
            }
            return 1;
        }
    };
    match run(opts) {
        Ok(code) => code,
        Err(sentence) => {
            eprintln!("{sentence}");
            1
        }
    }
}

fn run(opts: Slirp4netnsOptions) -> Result<i32, String> {
    for warning in &opts.warnings {
        println!("{warning}");
    }
    let plan = opts.plan;
    let target = match (&opts.target, &opts.userns_path) {
        (Target::Pid(pid), None) => AttachTarget::Pid(*pid),
        (Target::Pid(pid), Some(userns)) => AttachTarget::Path {
            netns: PathBuf::from(format!("/proc/{pid}/ns/net")),
            userns: Some(userns.clone()),
        },
        (Target::Path(netns), userns) => AttachTarget::Path {
            netns: netns.clone(),
            userns: userns.clone(),
        },
    };
    let tap_config = TapConfig {
        mac: opts.macaddress,
        name: opts.tapname.clone(),
        mtu: opts.mtu,
        plan,
        vnet_hdr: true,
    };
    let nameservers = if opts.disable_dns {
        Vec::new()
    } else {
        resolv::read_nameservers(Path::new(RESOLV_CONF)).unwrap_or_default()
    };
    let outbound4 = match &opts.outbound_addr {
        Some(spec) => match super::outbound_address(spec, false)? {
            IpAddr::V4(v4) => Some(v4),
            IpAddr::V6(_) => None,
        },
        None => None,
    };
    let outbound6 = match &opts.outbound_addr6 {
        Some(spec) => match super::outbound_address(spec, true)? {
            IpAddr::V6(v6) => Some(v6),
            IpAddr::V4(_) => None,
        },
        None => None,
    };
    // Every option is checked before anything is started.
    let host_addrs = super::host_addresses();
    let policy = super::build_policy(
        &opts.rules,
        opts.deny_private,
        opts.policy_file.as_deref(),
        &host_addrs,
    )?;
    let ready_fd = opts.ready_fd.and_then(crate::sys::inherited_fd);
    // Taken now so that it is open (or known closed) before anything else can reuse the number.
    let exit_fd = opts.exit_fd.map(crate::sys::inherited_fd);

    let tap = namespace::attach(&target, &tap_config, opts.configure).map_err(|e| e.to_string())?;
    // The target process's exit ends the network: tapir's TAP fd keeps the namespace alive,
    // so its end would never show on the TAP. (A target that cannot be watched, say one that
    // already exited, leaves the exit fd and signals to end it, as in slirp4netns.)
    let target_pidfd = match &target {
        namespace::AttachTarget::Pid(pid) => crate::sys::pidfd_open(*pid)
            .map_err(|e| log::warn!("cannot watch the target process {pid}: {e}"))
            .ok(),
        namespace::AttachTarget::Path { .. } => None,
    };
    eprintln!("sent tapfd for {}", opts.tapname);
    print_banner(&opts, &plan);

    let api = match &opts.api_socket {
        Some(path) => Some(
            ApiServer::bind(path)
                .map_err(|e| format!("cannot listen on the API socket {}: {e}", path.display()))?,
        ),
        None => None,
    };
    let config = NetworkConfig {
        plan,
        mtu: opts.mtu,
        limits: Limits::default(),
        forwards: Vec::new(),
        vnet_hdr: tap_config.vnet_hdr,
        nameservers,
        resolv_conf: (!opts.disable_dns).then(|| RESOLV_CONF.into()),
        host_addrs,
        outbound: (outbound4, outbound6),
        pcap: opts.pcap.clone(),
        ipv6: opts.enable_ipv6,
        policy,
        busy_poll: crate::busy_poll::DEFAULT_MAX,
    };
    crate::sys::set_malloc_mmap_threshold(128 * 1024);
    crate::sys::raise_fd_limit();
    let lifetime = match exit_fd {
        // An exit fd that was given but is not open: slirp4netns is set up and says so on
        // its ready fd, then its first poll sees POLLNVAL and it exits.
        Some(None) => {
            signal_ready(ready_fd);
            eprintln!("exitfd event");
            return Ok(0);
        }
        Some(Some(fd)) => Lifetime::ExitFd(Some(fd), target_pidfd),
        None => Lifetime::ExitFd(None, target_pidfd),
    };
    let (sandbox, seccomp) = (opts.enable_sandbox, opts.enable_seccomp);
    let ready = || {
        if sandbox {
            crate::sys::sandbox::isolate_filesystem(config.resolv_conf.as_deref())
                .map_err(|e| e.to_string())?;
        }
        if seccomp {
            crate::sys::sandbox::confine().map_err(|e| e.to_string())?;
        }
        signal_ready(ready_fd);
        Ok(())
    };
    let ending = event_loop::serve(tap, &config, lifetime, api, GuestSockets::default(), ready)
        .map_err(|e| e.to_string())?;
    Ok(match ending {
        Ending::ExitFd => {
            eprintln!("exitfd event");
            0
        }
        Ending::Signal(sig) => 128 + sig as i32,
        Ending::GuestGone | Ending::Child(_) => 0,
    })
}

/// Writes "1" to the ready fd and closes it, as slirp4netns does.
fn signal_ready(fd: Option<OwnedFd>) {
    if let Some(fd) = fd {
        let mut file = std::fs::File::from(fd);
        if let Err(e) = file.write_all(b"1") {
            log::warn!("cannot write to the ready fd: {e}");
        }
    }
}

/// What slirp4netns prints on start; some scripts read it.
fn print_banner(opts: &Slirp4netnsOptions, plan: &AddressPlan) {
    println!("Starting slirp");
    println!("* MTU:             {}", opts.mtu);
    println!("* Network:         {}", plan.network);
    println!("* Netmask:         {}", plan.netmask());
    println!("* Gateway:         {}", plan.gateway);
    println!("* DNS:             {}", plan.dns);
    // slirp4netns's range is network+15..30; tapir's DHCP hands out the guest's one address.
    println!("* DHCP begin:      {}", plan.guest);
    println!("* DHCP end:        {}", plan.guest);
    println!("* Recommended IP:  {}", plan.guest);
    if plan.host_loopback {
        println!(
            "WARNING: 127.0.0.1:* on the host is accessible as {} (set --disable-host-loopback to prohibit connecting to 127.0.0.1:*)",
            plan.gateway
        );
    }
    let _ = std::io::stdout().flush();
}
