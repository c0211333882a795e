//! The command line: `tapir run [OPTIONS] -- CMD...`.

use std::ffi::OsString;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::forward::spec::PortForward;

#[derive(Debug, Parser)]
#[command(
    name = "tapir",
    version,
    about = "Networking for rootless containers, through a userspace TCP/IP stack"
)]
pub struct Cli {
    /// More logging (-v info, -vv debug, -vvv trace); RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a command, unprivileged, in new user+network namespaces with a working network.
    Run(RunArgs),
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Forward a host port into the guest: [HOST_IP:]HOST_PORT:GUEST_PORT[/tcp|/udp]
    /// (HOST_IP defaults to 0.0.0.0). Repeatable.
    #[arg(short = 'p', long = "publish", value_name = "SPEC")]
    pub publish: Vec<PortForward>,
    /// MTU of the guest's tap0.
    #[arg(long, default_value_t = 65520)]
    pub mtu: u32,
    /// The guest's network: gateway at +2, DNS at +3, guest at +100.
    #[arg(long, default_value = "10.0.2.0/24")]
    pub cidr: String,
    /// Do not let the guest reach the host's loopback (10.0.2.2) or the host's own addresses.
    #[arg(long)]
    pub disable_host_loopback: bool,
    /// IPv6 too: fd00::/64 by router advertisement, gateway fd00::2 (the host's ::1 unless
    /// --disable-host-loopback), DNS fd00::3.
    #[arg(short = '6', long)]
    pub enable_ipv6: bool,
    /// Write every frame on the guest's TAP to this file (pcap format).
    #[arg(long, value_name = "FILE")]
    pub pcap: Option<PathBuf>,
    /// The command to run, and its arguments. (Checked by `commands::run`, so that a missing
    /// command gets one sentence rather than clap's usage block.)
    #[arg(trailing_var_arg = true, value_name = "CMD")]
    pub command: Vec<OsString>,
}
