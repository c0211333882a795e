//! The command line: `tapir run [OPTIONS] -- CMD...`.

use std::ffi::OsString;
use std::path::PathBuf;

use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand};

use crate::forward::spec::PortForward;
use crate::forward::to_host::ToHost;

#[derive(Debug, Parser)]
#[command(
    name = "tapir",
    version,
    about = "Networking for rootless containers, through a userspace TCP/IP stack",
    after_help = "Installed or symlinked as `slirp4netns`, or run as `tapir slirp4netns ARGS`, \
                  tapir takes slirp4netns 1.2's command line instead (`tapir slirp4netns --help`). \
                  Installed or symlinked as `tapir-cni`, it is a CNI plugin (`tapir cni`)."
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
    /// Run a command, unprivileged, in new user+network namespaces with a working network
    /// (or, as root, with --network bridge|host|none, on the kernel's own stack).
    // Boxed: RunArgs is large, and clippy::large_enum_variant asks for it.
    Run(Box<RunArgs>),
    /// Manage the privileged bridge networks.
    #[command(subcommand)]
    Network(NetworkCommand),
    /// Act as a CNI 1.0 plugin (ADD, DEL, CHECK, VERSION from CNI_COMMAND, the network
    /// configuration on stdin, the result on stdout); also when installed as `tapir-cni`.
    Cni,
    /// Measure tapir against the kernel path, slirp4netns and pasta, side by side (root; all
    /// traffic stays in a private network namespace; rootless paths run as uid 65534).
    Bench(BenchArgs),
    /// The load generator `tapir bench` runs inside each guest (not for direct use).
    #[command(hide = true)]
    BenchClient(BenchClientArgs),
}

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Paths to measure, comma-separated: tapir, kernel (tapir run --network bridge), veth,
    /// slirp4netns, pasta (default: all; one whose tool is not installed is skipped).
    #[arg(long, value_delimiter = ',', value_name = "PATH,...")]
    pub paths: Vec<String>,
    /// Scenarios, comma-separated: tcp_stream, tcp_rr, udp_rr, connect_rate, hold (default: all).
    #[arg(long, value_delimiter = ',', value_name = "SCENARIO,...")]
    pub scenarios: Vec<String>,
    /// Guest MTUs, comma-separated (default: 65520,1500; with --quick: 65520).
    #[arg(long, value_delimiter = ',', value_name = "MTU,...")]
    pub mtu: Vec<u32>,
    /// Seconds per measurement (default: 5; with --quick: 1).
    #[arg(long, value_name = "SECONDS")]
    pub duration: Option<f64>,
    /// Connections the hold scenario opens and holds (default: 10000; with --quick: 1000).
    #[arg(long, value_name = "N")]
    pub hold: Option<u64>,
    /// Measure every path N times, in turn, and report each figure's median; the JSON keeps
    /// every round. Latency on a small VM lands in one of two scheduling modes per run, so
    /// compare paths over 3 or 5 rounds (default: 1).
    #[arg(long, value_name = "N")]
    pub rounds: Option<u32>,
    /// A short run: 1 s per measurement, MTU 65520 only, 1,000 held connections.
    #[arg(long)]
    pub quick: bool,
    /// Also write every figure, ratio and latency CDF to FILE as JSON.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// Also draw throughput bars and latency CDFs to FILE (.svg).
    #[arg(long, value_name = "FILE.svg")]
    pub plot: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct BenchClientArgs {
    /// tcp_rr, udp_rr, connect_rate or hold.
    pub task: String,
    /// The host-side server, as the guest reaches it.
    pub server: std::net::SocketAddr,
    #[arg(long, default_value_t = 1000)]
    pub duration_ms: u64,
    /// Connections to hold (hold).
    #[arg(long, default_value_t = 0)]
    pub count: u64,
}

#[derive(Debug, Subcommand)]
pub enum NetworkCommand {
    /// Remove what killed `tapir run --network bridge` runs left behind: stale leases, their
    /// veths, unused bridges, and their nftables rules.
    Prune {
        /// The state directory (default: $TAPIR_STATE_DIR, else /run/tapir/netns-INODE of the
        /// current network namespace).
        #[arg(long, value_name = "DIR")]
        state_dir: Option<PathBuf>,
    },
}

/// Which network `tapir run` gives the command.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum NetworkMode {
    /// Rootless: a userspace TCP/IP stack (smoltcp) behind a TAP (the default).
    #[default]
    Userspace,
    /// Root: a veth on a Linux bridge, NAT and published ports through nftables.
    Bridge,
    /// Root: the host's own network stack, as `docker run --network host`.
    Host,
    /// Root: a network namespace with only loopback.
    None,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// The command's network: userspace (rootless, the default), or, as root, bridge, host or
    /// none.
    #[arg(long, value_enum, default_value_t = NetworkMode::Userspace, value_name = "MODE")]
    pub network: NetworkMode,
    /// --network bridge: the Linux bridge to attach to (created if missing).
    #[arg(long, default_value = crate::kernel::DEFAULT_BRIDGE, value_name = "NAME")]
    pub bridge: String,
    /// --network bridge: the bridge's subnet; the bridge takes its first address.
    #[arg(long, default_value = crate::kernel::DEFAULT_SUBNET, value_name = "CIDR")]
    pub subnet: String,
    /// --network bridge: where leases are kept (default: $TAPIR_STATE_DIR, else
    /// /run/tapir/netns-INODE of the current network namespace).
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// Forward a host port into the guest: [HOST_IP:]HOST_PORT:GUEST_PORT[/tcp|/udp]
    /// (HOST_IP defaults to 0.0.0.0). Repeatable.
    #[arg(short = 'p', long = "publish", value_name = "SPEC")]
    pub publish: Vec<PortForward>,
    /// Carry -p clients from the host's loopback through the TAP like the others (the guest
    /// sees them come from 10.0.2.2), instead of splicing them to the guest's own 127.0.0.1
    /// with no copy (the guest sees them come from 127.0.0.1, as with pasta).
    #[arg(long)]
    pub no_splice: bool,
    /// Let the guest reach a host port on its own loopback: clients of the guest's
    /// 127.0.0.1:GUEST_PORT go to the host's 127.0.0.1:HOST_PORT (the same port if omitted),
    /// spliced with no copy, as pasta's -T does. TCP only. Repeatable.
    #[arg(short = 'T', long = "tcp-ns", value_name = "GUEST_PORT[:HOST_PORT]")]
    pub to_host: Vec<ToHost>,
    /// Spin on a non-blocking poll for up to this many microseconds before sleeping, while
    /// the traffic is small messages that come back quickly (adaptive, as QEMU's iothread
    /// polling: an idle or streaming tapir does not spin). Lower latency for CPU; 0: never.
    /// Default 128.
    #[arg(long, value_name = "MICROSECONDS", value_parser = clap::value_parser!(u64).range(0..=1000))]
    pub busy_poll: Option<u64>,
    /// MTU of the guest's interface: tap0 (default 65520), or with --network bridge the veth
    /// pair (default: the kernel's, 1500).
    #[arg(long)]
    pub mtu: Option<u32>,
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
    /// Refuse new guest flows to CIDR[:PORT|:LO-HI][/tcp|/udp|/icmp] (or `all`). With
    /// --allow, rules apply in the order given; the first match wins; the default is allow.
    #[arg(long, value_name = "RULE")]
    pub deny: Vec<String>,
    /// Allow new guest flows to CIDR[:PORT|:LO-HI][/tcp|/udp|/icmp] (see --deny).
    #[arg(long, value_name = "RULE")]
    pub allow: Vec<String>,
    /// Refuse private, link-local, CGNAT, multicast and the host's own addresses (after the
    /// explicit rules, so an --allow can make an exception).
    #[arg(long)]
    pub deny_private: bool,
    /// Read rules from a TOML file: rules = ["allow ...", "deny ..."], deny-private = true.
    #[arg(long, value_name = "FILE")]
    pub policy: Option<PathBuf>,
    /// --deny and --allow merged in command-line order (filled in by `Cli::parse_ordered`).
    #[arg(skip)]
    pub rules: Vec<(crate::flow::policy::Action, String)>,
    /// Change a resource limit: tcp-flows (16384), tcp-pending (1024, host connects under
    /// way), tcp-buffer (bytes per direction per flow, 1048576),
    /// tcp-buffer-total (all TCP buffers together, 268435456), udp-flows (4096),
    /// udp-idle-secs (60), icmp-flows (256), icmp-idle-secs (10), icmp-rate (1000, echo
    /// requests a second to the host, all flows together), tx-frames (1024, frames queued
    /// towards the guest). Repeatable.
    #[arg(long = "limit", value_name = "NAME=N")]
    pub limits: Vec<String>,
    /// Write every frame on the guest's TAP to this file (pcap format).
    #[arg(long, value_name = "FILE")]
    pub pcap: Option<PathBuf>,
    /// Do not confine tapir's network process. By default, once the command runs and every
    /// socket and file tapir needs is open, it moves into an empty filesystem of its own, sets
    /// no_new_privs and installs a seccomp allow-list (see README). For debugging.
    #[arg(long)]
    pub no_sandbox: bool,
    /// The command to run, and its arguments. (Checked by `commands::run`, so that a missing
    /// command gets one sentence rather than clap's usage block.)
    #[arg(trailing_var_arg = true, value_name = "CMD")]
    pub command: Vec<OsString>,
}

impl Cli {
    /// Parses the process's arguments like `Cli::parse`, and also keeps the relative order of
    /// `--deny` and `--allow`, which two separate lists lose.
    pub fn parse_ordered() -> Cli {
        let matches = Cli::command().get_matches();
        let mut cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
        if let (Command::Run(run), Some(sub)) =
            (&mut cli.command, matches.subcommand_matches("run"))
        {
            run.rules = ordered_rules(sub);
        }
        cli
    }
}

fn ordered_rules(m: &clap::ArgMatches) -> Vec<(crate::flow::policy::Action, String)> {
    use crate::flow::policy::Action;
    let mut rules = Vec::new();
    for (id, action) in [("deny", Action::Deny), ("allow", Action::Allow)] {
        if let (Some(indices), Some(values)) = (m.indices_of(id), m.get_many::<String>(id)) {
            rules.extend(indices.zip(values).map(|(i, v)| (i, action, v.clone())));
        }
    }
    rules.sort_by_key(|r| r.0);
    rules.into_iter().map(|(_, a, v)| (a, v)).collect()
}
