//! The command line of slirp4netns 1.2, so that tapir can be installed as `slirp4netns`.
//!
//! RootlessKit, Podman and k3s start `slirp4netns` with fixed argument vectors and probe its
//! `--help` for option names, so this parser reproduces slirp4netns 1.2.0's surface exactly:
//! glibc `getopt_long` with the short options `ce:r:m:a:6hv` and the same long options in the
//! same table order (the order shows in "ambiguous" complaints). That means:
//!
//! - arguments are permuted: options may follow the positionals (`PID tap0 --mtu 1500`);
//! - short options cluster and take attached values (`-c6`, `-cr3`, `-m1500`), or the next
//!   argument whatever it looks like (`-r -1` gives `-r` the value `-1`);
//! - long options take `--opt=val` or `--opt val`, and any unambiguous prefix (`--mt 1500`);
//! - `--` ends the options and a lone `-` is a positional;
//! - options act in order, so `-h --bogus` prints help while `--bogus -h` fails, and a bad
//!   `--mtu` before `-h` fails before the help is seen.
//!
//! Every error reads exactly as slirp4netns prints it (tests and humans grep for them);
//! glibc's own complaints are given without the `argv[0]: ` prefix it adds. The warnings
//! slirp4netns prints on stdout while parsing (experimental features, deprecated aliases,
//! too many arguments) are collected in [`Slirp4netnsOptions::warnings`] for the shell to
//! print.
//!
//! Nothing here touches the system. Checks that need it stay with the caller: that
//! `--userns-path` exists (`userns path doesn't exist: PATH`), that a `--netns-type=path`
//! target exists (`existing path expected when --netns-type=path: ERRNO`), and resolving
//! `--outbound-addr[6]` when it names an interface.
//!
//! Where tapir deliberately differs from slirp4netns 1.2.0:
//! - `--netns-type=tapfd` (slirp4netns 1.3) and `--target-type=bess` are refused with a
//!   sentence saying so; an unknown `--netns-type` is refused instead of meaning `path`.
//! - A missing TAPNAME means `tap0` (slirp4netns prints its usage and fails).
//! - TAPNAME must be a valid Linux interface name rather than being silently cut to 15 bytes.
//! - Numbers that C would silently truncate (`-e 4294967299`, `--mtu 4294968796`) and an
//!   empty `-e ''` (which C reads as fd 0) are refused; a MAC with fewer than six bytes is
//!   refused rather than half-set.
//! - `POSIXLY_CORRECT` is ignored: arguments are always permuted.
//! - `--pcap FILE` is a tapir extension.

use std::ffi::{OsStr, OsString};
use std::net::Ipv4Addr;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

use crate::config::{AddressPlan, ConfigError};
use crate::flow::policy::Action;

/// The slirp4netns version tapir stands in for, with tapir marked as semver build metadata.
pub const VERSION: &str = "1.2.0+tapir";
/// The libslirp config version slirp4netns 1.2.0 reports; its tests skip features below 3.
pub const SLIRP_CONFIG_VERSION_MAX: u32 = 4;
/// `--mtu` default.
pub const DEFAULT_MTU: u32 = 1500;
/// The largest `--mtu` slirp4netns accepts.
pub const MAX_MTU: u32 = 65521;
/// `--cidr` default.
pub const DEFAULT_CIDR: &str = "10.0.2.0/24";
/// The TAP name used when the second positional is missing.
pub const DEFAULT_TAPNAME: &str = "tap0";
/// `sizeof(struct sockaddr_un.sun_path)`: an `--api-socket` path must be shorter.
pub const SUN_PATH_LEN: usize = 108;
/// `IFNAMSIZ`: an interface name has at most 15 bytes.
const IFNAMSIZ: usize = 16;

/// What the command line asks for.
// Built once per process and matched at once: boxing `Run` would only add a pointer chase.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parsed {
    /// `-h`/`--help`: print [`help_text`] to stdout and exit 0.
    Help,
    /// `-v`/`--version`: print [`version_text`] to stdout and exit 0.
    Version,
    /// Run the network for a target namespace.
    Run(Slirp4netnsOptions),
}

/// The network namespace to serve: the first positional argument.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// `--netns-type=pid` (the default): join `/proc/PID/ns/user` (best effort) and
    /// `/proc/PID/ns/net`.
    Pid(i32),
    /// `--netns-type=path`: join this netns file, and a userns only if `--userns-path` is given.
    Path(PathBuf),
}

/// How the target names its namespace (`--netns-type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NetnsType {
    Pid,
    Path,
}

/// A validated slirp4netns command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Slirp4netnsOptions {
    /// PID|PATH.
    pub target: Target,
    /// TAPNAME: the TAP to create or attach to inside the target namespace.
    pub tapname: String,
    /// `-c`: bring up lo and the TAP, set MTU, MAC, address net+100 and the default route.
    pub configure: bool,
    /// `-e FD`: exit 0 when this fd reports any poll event (HUP, or NVAL if not open).
    pub exit_fd: Option<i32>,
    /// `-r FD`: write `1` and close once ready.
    pub ready_fd: Option<i32>,
    /// `-m MTU`, in 1..=65521.
    pub mtu: u32,
    /// `-6`.
    pub enable_ipv6: bool,
    /// `-a PATH`, shorter than [`SUN_PATH_LEN`] bytes.
    pub api_socket: Option<PathBuf>,
    /// `--cidr` as given (or the default), already validated into `plan`.
    pub cidr: String,
    /// The addresses `cidr` implies, with `host_loopback = !disable_host_loopback`.
    pub plan: AddressPlan,
    /// `--disable-host-loopback` (or the deprecated `--no-host-loopback`).
    pub disable_host_loopback: bool,
    /// `--userns-path`.
    pub userns_path: Option<PathBuf>,
    /// `--enable-sandbox` (or the deprecated `--create-sandbox`).
    pub enable_sandbox: bool,
    /// `--enable-seccomp`.
    pub enable_seccomp: bool,
    /// `--outbound-addr`: an IPv4 address or an interface name, resolved by the caller.
    pub outbound_addr: Option<String>,
    /// `--outbound-addr6`: an IPv6 address or an interface name, resolved by the caller.
    pub outbound_addr6: Option<String>,
    /// `--disable-dns`.
    pub disable_dns: bool,
    /// `--macaddress` (only accepted with `-c`).
    pub macaddress: Option<[u8; 6]>,
    /// `--pcap FILE` (tapir extension): write every frame on the TAP to FILE.
    pub pcap: Option<PathBuf>,
    /// `--deny RULE` / `--allow RULE` (tapir extension), in command-line order, unparsed.
    pub rules: Vec<(Action, String)>,
    /// `--deny-private` (tapir extension).
    pub deny_private: bool,
    /// `--policy FILE` (tapir extension).
    pub policy_file: Option<PathBuf>,
    /// The `WARNING: ...` lines slirp4netns prints on stdout for this command line, in order.
    pub warnings: Vec<String>,
}

impl Slirp4netnsOptions {
    /// `--netns-type`, as implied by the target.
    pub fn netns_type(&self) -> NetnsType {
        match self.target {
            Target::Pid(_) => NetnsType::Pid,
            Target::Path(_) => NetnsType::Path,
        }
    }
}

/// A command line slirp4netns would refuse. Messages are slirp4netns's (or glibc's) verbatim,
/// except for the tapir-only refusals, which say what tapir does not support.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ArgsError {
    #[error("unrecognized option '{0}'")]
    UnrecognizedOption(String),
    #[error("invalid option -- '{0}'")]
    InvalidOption(String),
    #[error("option '{given}' is ambiguous; possibilities:{}", possibilities_text(.possibilities))]
    AmbiguousOption {
        given: String,
        possibilities: Vec<&'static str>,
    },
    #[error("option '--{0}' requires an argument")]
    LongOptionNeedsArgument(&'static str),
    #[error("option requires an argument -- '{0}'")]
    ShortOptionNeedsArgument(char),
    #[error("option '--{0}' doesn't allow an argument")]
    LongOptionTakesNoArgument(&'static str),
    #[error("exit-fd must be a non-negative integer")]
    ExitFd(String),
    #[error("ready-fd must be a non-negative integer")]
    ReadyFd(String),
    #[error("MTU must be a positive integer (< 65522)")]
    Mtu(String),
    #[error("--macaddr cannot be specified when --configure or -c is not specified")]
    MacNeedsConfigure,
    #[error("--target-type must be either \"netns\" or \"bess\"")]
    TargetType(String),
    #[error("--target-type=bess is not supported by tapir; only netns is")]
    BessUnsupported,
    #[error(
        "--netns-type=tapfd is not supported by tapir (it came with slirp4netns 1.3); use pid or path"
    )]
    TapfdUnsupported,
    #[error("--netns-type {0:?} is not supported: use pid or path")]
    NetnsType(String),
    #[error("missing PID|PATH argument: usage is slirp4netns [OPTION]... PID|PATH [TAPNAME]")]
    MissingTarget,
    #[error("PID must be a positive integer")]
    Pid(String),
    #[error("existing path expected when --netns-type=path: No such file or directory")]
    EmptyNetnsPath,
    #[error(
        "TAPNAME {0:?} is not a valid interface name (1 to 15 bytes, without '/', ':' or spaces)"
    )]
    TapName(String),
    #[error("invalid CIDR: {0}")]
    Cidr(String),
    #[error("invalid network address: {0}")]
    CidrAddress(String),
    #[error("prefix length needs to be 1-25")]
    CidrPrefix(String),
    #[error("CIDR needs to be a network address like 10.0.2.0/24, not like 10.0.2.100/24")]
    CidrNotNetwork(String),
    #[error("\"{0}\" is an invalid MAC address.")]
    MacAddress(String),
    #[error("\"{0}\" is an invalid MAC address.  Is it too long?")]
    MacAddressTooLong(String),
    #[error("outbound-addr has to be valid ipv4 address or interface name.")]
    OutboundAddr(String),
    #[error("outbound-addr6 has to be valid ipv6 address or interface name.")]
    OutboundAddr6(String),
    #[error("the specified API socket path is too long (>= {SUN_PATH_LEN})")]
    ApiSocketTooLong(PathBuf),
}

impl ArgsError {
    /// Whether slirp4netns prints its usage (to stdout) after this error. It does for
    /// everything found while reading the arguments, not for later validation.
    pub fn shows_usage(&self) -> bool {
        !matches!(
            self,
            ArgsError::Cidr(_)
                | ArgsError::CidrAddress(_)
                | ArgsError::CidrPrefix(_)
                | ArgsError::CidrNotNetwork(_)
                | ArgsError::MacAddress(_)
                | ArgsError::MacAddressTooLong(_)
                | ArgsError::OutboundAddr(_)
                | ArgsError::OutboundAddr6(_)
                | ArgsError::ApiSocketTooLong(_)
        )
    }
}

fn possibilities_text(names: &[&str]) -> String {
    names.iter().map(|n| format!(" '--{n}'")).collect()
}

/// One option, whichever spelling named it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Opt {
    Configure,
    ExitFd,
    ReadyFd,
    Mtu,
    Cidr,
    DisableHostLoopback,
    NoHostLoopback,
    NetnsType,
    UsernsPath,
    ApiSocket,
    EnableIpv6,
    EnableSandbox,
    CreateSandbox,
    EnableSeccomp,
    Help,
    Version,
    OutboundAddr,
    OutboundAddr6,
    DisableDns,
    MacAddress,
    TargetType,
    Pcap,
    Deny,
    Allow,
    DenyPrivate,
    Policy,
}

impl Opt {
    fn takes_value(self) -> bool {
        matches!(
            self,
            Opt::ExitFd
                | Opt::ReadyFd
                | Opt::Mtu
                | Opt::Cidr
                | Opt::NetnsType
                | Opt::UsernsPath
                | Opt::ApiSocket
                | Opt::OutboundAddr
                | Opt::OutboundAddr6
                | Opt::MacAddress
                | Opt::TargetType
                | Opt::Pcap
                | Opt::Deny
                | Opt::Allow
                | Opt::Policy
        )
    }
}

/// slirp4netns 1.2.0's `longopts`, in its order, then tapir's extensions.
const LONG_OPTIONS: &[(&str, Opt)] = &[
    ("configure", Opt::Configure),
    ("exit-fd", Opt::ExitFd),
    ("ready-fd", Opt::ReadyFd),
    ("mtu", Opt::Mtu),
    ("cidr", Opt::Cidr),
    ("disable-host-loopback", Opt::DisableHostLoopback),
    ("no-host-loopback", Opt::NoHostLoopback),
    ("netns-type", Opt::NetnsType),
    ("userns-path", Opt::UsernsPath),
    ("api-socket", Opt::ApiSocket),
    ("enable-ipv6", Opt::EnableIpv6),
    ("enable-sandbox", Opt::EnableSandbox),
    ("create-sandbox", Opt::CreateSandbox),
    ("enable-seccomp", Opt::EnableSeccomp),
    ("help", Opt::Help),
    ("version", Opt::Version),
    ("outbound-addr", Opt::OutboundAddr),
    ("outbound-addr6", Opt::OutboundAddr6),
    ("disable-dns", Opt::DisableDns),
    ("macaddress", Opt::MacAddress),
    ("target-type", Opt::TargetType),
    ("pcap", Opt::Pcap),
    ("deny", Opt::Deny),
    ("allow", Opt::Allow),
    ("deny-private", Opt::DenyPrivate),
    ("policy", Opt::Policy),
];

/// The getopt string `ce:r:m:a:6hv`.
const SHORT_OPTIONS: &[(u8, Opt)] = &[
    (b'c', Opt::Configure),
    (b'e', Opt::ExitFd),
    (b'r', Opt::ReadyFd),
    (b'm', Opt::Mtu),
    (b'a', Opt::ApiSocket),
    (b'6', Opt::EnableIpv6),
    (b'h', Opt::Help),
    (b'v', Opt::Version),
];

/// The options as read, before the checks slirp4netns makes after its getopt loop.
#[derive(Default)]
struct Raw {
    configure: bool,
    exit_fd: Option<i32>,
    ready_fd: Option<i32>,
    mtu: Option<u32>,
    cidr: Option<OsString>,
    disable_host_loopback: bool,
    netns_type: Option<OsString>,
    userns_path: Option<PathBuf>,
    api_socket: Option<PathBuf>,
    enable_ipv6: bool,
    enable_sandbox: bool,
    enable_seccomp: bool,
    outbound_addr: Option<String>,
    outbound_addr6: Option<String>,
    disable_dns: bool,
    macaddress: Option<OsString>,
    target_type: Option<OsString>,
    pcap: Option<PathBuf>,
    rules: Vec<(Action, String)>,
    deny_private: bool,
    policy: Option<PathBuf>,
    warnings: Vec<String>,
}

/// Parses slirp4netns's arguments (without `argv[0]`).
pub fn parse(args: &[OsString]) -> Result<Parsed, ArgsError> {
    let mut raw = Raw::default();
    let mut positionals: Vec<&OsStr> = Vec::new();
    let mut i = 0;
    while i < args.len() {
        let arg = args[i].as_os_str();
        let bytes = arg.as_bytes();
        i += 1;
        if bytes == b"--" {
            positionals.extend(args[i..].iter().map(OsString::as_os_str));
            break;
        }
        let found = if let Some(long) = bytes.strip_prefix(b"--") {
            read_long(long, args, &mut i)?
        } else if bytes.len() > 1 && bytes[0] == b'-' {
            read_short_cluster(&bytes[1..], args, &mut i)?
        } else {
            positionals.push(arg);
            continue;
        };
        for (opt, value) in found {
            if let Some(done) = apply(&mut raw, opt, value)? {
                return Ok(done);
            }
        }
    }
    finish(raw, &positionals).map(Parsed::Run)
}

/// Reads one `--name[=value]` (the text after `--`), taking its value from the next argument
/// when needed.
fn read_long<'a>(
    text: &'a [u8],
    args: &'a [OsString],
    next: &mut usize,
) -> Result<Vec<(Opt, Option<&'a OsStr>)>, ArgsError> {
    let (name, inline) = match text.iter().position(|&b| b == b'=') {
        Some(eq) => (&text[..eq], Some(OsStr::from_bytes(&text[eq + 1..]))),
        None => (text, None),
    };
    let given = || format!("--{}", String::from_utf8_lossy(text));
    let (long_name, opt) = match LONG_OPTIONS.iter().find(|(n, _)| n.as_bytes() == name) {
        Some(&exact) => exact,
        None => {
            let matches: Vec<(&'static str, Opt)> = LONG_OPTIONS
                .iter()
                .copied()
                .filter(|(n, _)| n.as_bytes().starts_with(name))
                .collect();
            match matches.as_slice() {
                [] => return Err(ArgsError::UnrecognizedOption(given())),
                [only] => *only,
                _ => {
                    return Err(ArgsError::AmbiguousOption {
                        given: given(),
                        possibilities: matches.iter().map(|(n, _)| *n).collect(),
                    });
                }
            }
        }
    };
    if !opt.takes_value() {
        if inline.is_some() {
            return Err(ArgsError::LongOptionTakesNoArgument(long_name));
        }
        return Ok(vec![(opt, None)]);
    }
    if let Some(value) = inline {
        return Ok(vec![(opt, Some(value))]);
    }
    match args.get(*next) {
        Some(value) => {
            *next += 1;
            Ok(vec![(opt, Some(value.as_os_str()))])
        }
        None => Err(ArgsError::LongOptionNeedsArgument(long_name)),
    }
}

/// Reads a cluster of short options (the text after `-`), such as `c6`, `r3` or `cr`, where
/// an option that takes a value ends the cluster.
fn read_short_cluster<'a>(
    cluster: &'a [u8],
    args: &'a [OsString],
    next: &mut usize,
) -> Result<Vec<(Opt, Option<&'a OsStr>)>, ArgsError> {
    let mut found = Vec::new();
    for (at, &letter) in cluster.iter().enumerate() {
        let Some(&(_, opt)) = SHORT_OPTIONS.iter().find(|(l, _)| *l == letter) else {
            return Err(ArgsError::InvalidOption(
                String::from_utf8_lossy(&[letter]).into_owned(),
            ));
        };
        if !opt.takes_value() {
            found.push((opt, None));
            continue;
        }
        let rest = &cluster[at + 1..];
        if !rest.is_empty() {
            found.push((opt, Some(OsStr::from_bytes(rest))));
            return Ok(found);
        }
        match args.get(*next) {
            Some(value) => {
                *next += 1;
                found.push((opt, Some(value.as_os_str())));
                return Ok(found);
            }
            None => return Err(ArgsError::ShortOptionNeedsArgument(char::from(letter))),
        }
    }
    Ok(found)
}

/// Acts on one option as slirp4netns's getopt loop does; `Some` ends parsing early.
fn apply(raw: &mut Raw, opt: Opt, value: Option<&OsStr>) -> Result<Option<Parsed>, ArgsError> {
    let value = value.unwrap_or_default();
    let lossy = || value.to_string_lossy().into_owned();
    match opt {
        Opt::Configure => raw.configure = true,
        Opt::ExitFd => {
            let fd = parse_fd(value).ok_or_else(|| ArgsError::ExitFd(lossy()))?;
            raw.exit_fd = Some(fd);
        }
        Opt::ReadyFd => {
            let fd = parse_fd(value).ok_or_else(|| ArgsError::ReadyFd(lossy()))?;
            raw.ready_fd = Some(fd);
        }
        Opt::Mtu => {
            let mtu = c_strtol(value.as_bytes())
                .and_then(|n| u32::try_from(n).ok())
                .filter(|n| (1..=MAX_MTU).contains(n))
                .ok_or_else(|| ArgsError::Mtu(lossy()))?;
            raw.mtu = Some(mtu);
        }
        Opt::Cidr => raw.cidr = Some(value.to_owned()),
        Opt::NoHostLoopback => {
            raw.warnings.push(
                "WARNING: --no-host-loopback is deprecated and will be removed in future \
                 releases, please use --disable-host-loopback instead."
                    .into(),
            );
            raw.disable_host_loopback = true;
        }
        Opt::DisableHostLoopback => raw.disable_host_loopback = true,
        Opt::CreateSandbox => {
            raw.warnings.push(
                "WARNING: --create-sandbox is deprecated and will be removed in future \
                 releases, please use --enable-sandbox instead."
                    .into(),
            );
            raw.enable_sandbox = true;
        }
        Opt::EnableSandbox => raw.enable_sandbox = true,
        Opt::DenyPrivate => raw.deny_private = true,
        Opt::EnableSeccomp => {
            raw.warnings
                .push("WARNING: Support for seccomp is experimental".into());
            raw.enable_seccomp = true;
        }
        Opt::NetnsType => raw.netns_type = Some(value.to_owned()),
        Opt::UsernsPath => raw.userns_path = Some(PathBuf::from(value)),
        Opt::ApiSocket => raw.api_socket = Some(PathBuf::from(value)),
        Opt::EnableIpv6 => {
            raw.warnings
                .push("WARNING: Support for IPv6 is experimental".into());
            raw.enable_ipv6 = true;
        }
        Opt::Help => return Ok(Some(Parsed::Help)),
        Opt::Version => return Ok(Some(Parsed::Version)),
        Opt::OutboundAddr => {
            raw.warnings
                .push("WARNING: Support for --outbound-addr is experimental".into());
            let text = value.to_str().filter(|t| !t.is_empty());
            let text = text.ok_or_else(|| ArgsError::OutboundAddr(lossy()))?;
            raw.outbound_addr = Some(text.to_owned());
        }
        Opt::OutboundAddr6 => {
            raw.warnings
                .push("WARNING: Support for --outbound-addr6 is experimental".into());
            let text = value.to_str().filter(|t| !t.is_empty());
            let text = text.ok_or_else(|| ArgsError::OutboundAddr6(lossy()))?;
            raw.outbound_addr6 = Some(text.to_owned());
        }
        Opt::DisableDns => raw.disable_dns = true,
        Opt::MacAddress => raw.macaddress = Some(value.to_owned()),
        Opt::TargetType => raw.target_type = Some(value.to_owned()),
        Opt::Pcap => raw.pcap = Some(PathBuf::from(value)),
        Opt::Deny => raw
            .rules
            .push((Action::Deny, value.to_string_lossy().into_owned())),
        Opt::Allow => raw
            .rules
            .push((Action::Allow, value.to_string_lossy().into_owned())),
        Opt::Policy => raw.policy = Some(PathBuf::from(value)),
    }
    Ok(None)
}

/// The checks slirp4netns makes after its getopt loop, in its order, then the ones it makes
/// while building its configuration.
fn finish(raw: Raw, positionals: &[&OsStr]) -> Result<Slirp4netnsOptions, ArgsError> {
    let mut warnings = raw.warnings;
    if raw.macaddress.is_some() && !raw.configure {
        return Err(ArgsError::MacNeedsConfigure);
    }
    match raw.target_type.as_deref().map(OsStr::as_bytes) {
        None | Some(b"netns") => {}
        Some(b"bess") => return Err(ArgsError::BessUnsupported),
        Some(_) => return Err(ArgsError::TargetType(lossy(raw.target_type.as_deref()))),
    }
    let netns_type = match raw.netns_type.as_deref().map(OsStr::as_bytes) {
        None | Some(b"pid") => NetnsType::Pid,
        Some(b"path") => NetnsType::Path,
        Some(b"tapfd") => return Err(ArgsError::TapfdUnsupported),
        Some(_) => return Err(ArgsError::NetnsType(lossy(raw.netns_type.as_deref()))),
    };

    let (target, tapname) = match positionals {
        [] => return Err(ArgsError::MissingTarget),
        [target] => (*target, OsStr::new(DEFAULT_TAPNAME)),
        [target, tapname, rest @ ..] => {
            if !rest.is_empty() {
                // Not an error in slirp4netns, "for preventing potential compatibility issue".
                warnings.push("WARNING: too many arguments".into());
            }
            (*target, *tapname)
        }
    };
    let target = match netns_type {
        NetnsType::Pid => {
            let pid = c_strtol(target.as_bytes())
                .and_then(|n| i32::try_from(n).ok())
                .filter(|&n| n > 0)
                .ok_or_else(|| ArgsError::Pid(target.to_string_lossy().into_owned()))?;
            Target::Pid(pid)
        }
        NetnsType::Path if target.is_empty() => return Err(ArgsError::EmptyNetnsPath),
        NetnsType::Path => Target::Path(PathBuf::from(target)),
    };
    let tapname = check_tapname(tapname)?;

    let cidr = match raw.cidr {
        Some(text) => text.to_string_lossy().into_owned(),
        None => DEFAULT_CIDR.to_owned(),
    };
    let plan = parse_cidr(&cidr, !raw.disable_host_loopback)?;
    let macaddress = match raw.macaddress {
        Some(text) => Some(parse_mac(&text.to_string_lossy())?),
        None => None,
    };
    if let Some(path) = &raw.api_socket
        && path.as_os_str().len() >= SUN_PATH_LEN
    {
        return Err(ArgsError::ApiSocketTooLong(path.clone()));
    }

    Ok(Slirp4netnsOptions {
        target,
        tapname,
        configure: raw.configure,
        exit_fd: raw.exit_fd,
        ready_fd: raw.ready_fd,
        mtu: raw.mtu.unwrap_or(DEFAULT_MTU),
        enable_ipv6: raw.enable_ipv6,
        api_socket: raw.api_socket,
        cidr,
        plan,
        disable_host_loopback: raw.disable_host_loopback,
        userns_path: raw.userns_path,
        enable_sandbox: raw.enable_sandbox,
        enable_seccomp: raw.enable_seccomp,
        outbound_addr: raw.outbound_addr,
        outbound_addr6: raw.outbound_addr6,
        disable_dns: raw.disable_dns,
        macaddress,
        pcap: raw.pcap,
        rules: raw.rules,
        deny_private: raw.deny_private,
        policy_file: raw.policy,
        warnings,
    })
}

fn lossy(text: Option<&OsStr>) -> String {
    text.unwrap_or_default().to_string_lossy().into_owned()
}

/// C's `strtol(text, &end, 10)` followed by slirp4netns's `*end == '\0'` check: leading
/// white space and a sign are allowed, trailing text is not, and overflow fails. Unlike C, an
/// empty string is not read as 0.
fn c_strtol(text: &[u8]) -> Option<i64> {
    let start = text
        .iter()
        .position(|b| !matches!(b, b' ' | b'\t' | b'\n' | b'\x0b' | b'\x0c' | b'\r'))?;
    let text = &text[start..];
    let (negative, digits) = match text.split_first() {
        Some((b'-', rest)) => (true, rest),
        Some((b'+', rest)) => (false, rest),
        _ => (false, text),
    };
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let mut value: i64 = 0;
    for &d in digits {
        let d = i64::from(d - b'0');
        value = value.checked_mul(10)?;
        value = if negative {
            value.checked_sub(d)?
        } else {
            value.checked_add(d)?
        };
    }
    Some(value)
}

/// A file descriptor number for `-e`/`-r`: a non-negative `int`.
fn parse_fd(text: &OsStr) -> Option<i32> {
    c_strtol(text.as_bytes())
        .and_then(|n| i32::try_from(n).ok())
        .filter(|&n| n >= 0)
}

/// Linux's `dev_valid_name`: 1 to 15 bytes, not `.` or `..`, no `/`, `:` or white space.
fn check_tapname(name: &OsStr) -> Result<String, ArgsError> {
    let bad = || ArgsError::TapName(name.to_string_lossy().into_owned());
    let text = name.to_str().ok_or_else(bad)?;
    let valid = !text.is_empty()
        && text.len() < IFNAMSIZ
        && text != "."
        && text != ".."
        && !text
            .bytes()
            .any(|b| b == b'/' || b == b':' || b.is_ascii_whitespace());
    if valid {
        Ok(text.to_owned())
    } else {
        Err(bad())
    }
}

/// slirp4netns's `parse_cidr`: the regex `^(([0-9]{1,3}\.){3}[0-9]{1,3})/([0-9]{1,2})$`,
/// then `inet_pton`, then the prefix range, then the network-address check.
fn parse_cidr(cidr: &str, host_loopback: bool) -> Result<AddressPlan, ArgsError> {
    let syntax = || ArgsError::Cidr(cidr.to_owned());
    let (address, prefix) = cidr.split_once('/').ok_or_else(syntax)?;
    let octets: Vec<&str> = address.split('.').collect();
    let digits =
        |s: &str, max: usize| (1..=max).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_digit());
    if octets.len() != 4 || !octets.iter().all(|o| digits(o, 3)) || !digits(prefix, 2) {
        return Err(syntax());
    }
    // Like inet_pton, Ipv4Addr refuses octets above 255 and leading zeros.
    let network: Ipv4Addr = address
        .parse()
        .map_err(|_| ArgsError::CidrAddress(address.to_owned()))?;
    let prefix_len: u32 = prefix.parse().map_err(|_| syntax())?;
    if !(1..=25).contains(&prefix_len) {
        return Err(ArgsError::CidrPrefix(cidr.to_owned()));
    }
    let mask = u32::MAX << (32 - prefix_len);
    if u32::from(network) & !mask != 0 {
        return Err(ArgsError::CidrNotNetwork(cidr.to_owned()));
    }
    // The checks above are at least as strict as from_cidr's, so this only builds the plan.
    AddressPlan::from_cidr(cidr, host_loopback).map_err(|e| match e {
        ConfigError::CidrPrefix(_) => ArgsError::CidrPrefix(cidr.to_owned()),
        ConfigError::CidrNotNetwork(_) => ArgsError::CidrNotNetwork(cidr.to_owned()),
        _ => syntax(),
    })
}

/// `xx:xx:xx:xx:xx:xx`, each byte one or two hex digits.
fn parse_mac(text: &str) -> Result<[u8; 6], ArgsError> {
    let parts: Vec<&str> = text.split(':').collect();
    if parts.len() > 6 {
        return Err(ArgsError::MacAddressTooLong(text.to_owned()));
    }
    let mut mac = [0u8; 6];
    if parts.len() != mac.len() {
        return Err(ArgsError::MacAddress(text.to_owned()));
    }
    for (byte, part) in mac.iter_mut().zip(&parts) {
        let hex = (1..=2).contains(&part.len()) && part.bytes().all(|b| b.is_ascii_hexdigit());
        *byte = u8::from_str_radix(part, 16)
            .ok()
            .filter(|_| hex)
            .ok_or_else(|| ArgsError::MacAddress(text.to_owned()))?;
    }
    Ok(mac)
}

/// slirp4netns 1.2.0's usage, line for line (including its stray tabs), so that feature
/// probes grepping for option names find them, plus tapir's own options.
pub fn help_text() -> String {
    [
        "Usage: slirp4netns [OPTION]... PID|PATH [TAPNAME]",
        "User-mode networking for unprivileged network namespaces.",
        "",
        "-c, --configure          bring up the interface",
        "-e, --exit-fd=FD         specify the FD for terminating slirp4netns",
        "-r, --ready-fd=FD        specify the FD to write to when the network is configured",
        "-m, --mtu=MTU            specify MTU (default=1500, max=65521)",
        "-6, --enable-ipv6        enable IPv6 (experimental)",
        "-a, --api-socket=PATH    specify API socket path",
        "--cidr=CIDR              specify network address CIDR (default=10.0.2.0/24)",
        "--disable-host-loopback  prohibit connecting to 127.0.0.1:* on the host namespace",
        "--netns-type=TYPE \t specify network namespace type ([path|pid], default=pid)",
        "--userns-path=PATH\t specify user namespace path",
        "--enable-sandbox         create a new mount namespace (and drop all caps except \
         CAP_NET_BIND_SERVICE if running as the root)",
        "--enable-seccomp         enable seccomp to limit syscalls (experimental)",
        "--outbound-addr=IPv4     sets outbound ipv4 address to bound to (experimental)",
        "--outbound-addr6=IPv6    sets outbound ipv6 address to bound to (experimental)",
        "--disable-dns            disables 10.0.2.3 (or configured internal ip) to host dns \
         redirect (experimental)",
        "--macaddress=MAC         specify the MAC address of the TAP (only valid with -c)",
        "--target-type=TYPE       specify the target type ([netns], default=netns; tapir does \
         not support bess)",
        "--pcap=FILE              write every frame on the TAP to FILE in pcap format (tapir)",
        "--deny=RULE              refuse new flows to CIDR[:PORT|:LO-HI][/tcp|/udp|/icmp] (tapir)",
        "--allow=RULE             allow them; rules apply in order, first match wins (tapir)",
        "--deny-private           refuse private, link-local and the host's addresses (tapir)",
        "--policy=FILE            rules from a TOML file: rules = [...], deny-private (tapir)",
        "-h, --help               show this help and exit",
        "-v, --version            show version and exit",
        "",
    ]
    .join("\n")
}

/// The `--version` lines in slirp4netns's runc-style `key: value` format. Scripts grep
/// `SLIRP_CONFIG_VERSION_MAX` and skip tests below 2 or 3.
pub fn version_text() -> String {
    format!(
        "slirp4netns version {VERSION}\n\
         commit: tapir-{}\n\
         libslirp: (tapir)\n\
         SLIRP_CONFIG_VERSION_MAX: {SLIRP_CONFIG_VERSION_MAX}\n\
         libseccomp: (none)\n",
        env!("CARGO_PKG_VERSION")
    )
}

#[cfg(test)]
mod test {
    use super::*;
    use std::os::unix::ffi::OsStringExt;

    fn argv(text: &str) -> Vec<OsString> {
        text.split_whitespace().map(OsString::from).collect()
    }

    fn run(text: &str) -> Slirp4netnsOptions {
        match parse(&argv(text)) {
            Ok(Parsed::Run(options)) => options,
            other => panic!("{text:?} gave {other:?}"),
        }
    }

    fn err(text: &str) -> String {
        match parse(&argv(text)) {
            Err(e) => e.to_string(),
            other => panic!("{text:?} gave {other:?}"),
        }
    }

    #[test]
    fn rootlesskit_argv() {
        let o = run(
            "--mtu 65520 -r 3 --disable-host-loopback --api-socket /x/.s4nn.sock \
             --enable-sandbox --enable-seccomp 1234 tap0",
        );
        assert_eq!(o.target, Target::Pid(1234));
        assert_eq!(o.netns_type(), NetnsType::Pid);
        assert_eq!(o.tapname, "tap0");
        assert_eq!(o.mtu, 65520);
        assert_eq!(o.ready_fd, Some(3));
        assert_eq!(o.exit_fd, None);
        assert!(o.disable_host_loopback && !o.plan.host_loopback);
        assert_eq!(o.api_socket, Some(PathBuf::from("/x/.s4nn.sock")));
        assert!(o.enable_sandbox && o.enable_seccomp);
        assert!(!o.configure && !o.enable_ipv6 && !o.disable_dns);
        assert_eq!(o.cidr, "10.0.2.0/24");
        assert_eq!(o.plan.guest, Ipv4Addr::new(10, 0, 2, 100));
        assert_eq!(o.userns_path, None);
        assert_eq!(o.warnings, ["WARNING: Support for seccomp is experimental"]);
    }

    #[test]
    fn rootlesskit_detach_netns_argv() {
        let o = run(
            "--mtu 65520 -r 3 --disable-host-loopback --api-socket /x/.s4nn.sock \
             --userns-path=/proc/1/ns/user --netns-type=path /run/x/netns tap0",
        );
        assert_eq!(o.target, Target::Path("/run/x/netns".into()));
        assert_eq!(o.netns_type(), NetnsType::Path);
        assert_eq!(o.userns_path, Some(PathBuf::from("/proc/1/ns/user")));
        assert_eq!(o.tapname, "tap0");
        assert!(!o.enable_sandbox);
    }

    #[test]
    fn podman_argv() {
        let o = run(
            "--disable-host-loopback --mtu=65520 --enable-sandbox --enable-seccomp \
             --enable-ipv6 -c -r 3 -e 4 --netns-type=path /run/user/1000/netns/x tap0",
        );
        assert_eq!(o.target, Target::Path("/run/user/1000/netns/x".into()));
        assert!(o.configure && o.enable_ipv6 && o.enable_sandbox && o.enable_seccomp);
        assert_eq!((o.ready_fd, o.exit_fd, o.mtu), (Some(3), Some(4), 65520));
        assert_eq!(
            o.warnings,
            [
                "WARNING: Support for seccomp is experimental",
                "WARNING: Support for IPv6 is experimental"
            ]
        );
        let o = run(
            "--disable-host-loopback --mtu=65520 --enable-sandbox --enable-seccomp \
             --cidr=10.8.0.0/16 --enable-ipv6 --outbound-addr=eth0 --outbound-addr6=fd00::9 \
             -c -r 3 -e 4 --api-socket /tmp/ctr.net --netns-type=path /run/netns/x tap0",
        );
        assert_eq!(o.outbound_addr.as_deref(), Some("eth0"));
        assert_eq!(o.outbound_addr6.as_deref(), Some("fd00::9"));
        assert_eq!(o.plan.gateway, Ipv4Addr::new(10, 8, 0, 2));
    }

    #[test]
    fn k3s_argv() {
        let o = run(
            "--mtu 65520 -r 3 --disable-host-loopback --cidr 10.41.0.0/16 --enable-ipv6 77 tap0",
        );
        assert_eq!(o.cidr, "10.41.0.0/16");
        assert_eq!(o.plan.network, Ipv4Addr::new(10, 41, 0, 0));
        assert_eq!(o.plan.prefix_len, 16);
        assert_eq!(o.plan.gateway, Ipv4Addr::new(10, 41, 0, 2));
        assert_eq!(o.plan.dns, Ipv4Addr::new(10, 41, 0, 3));
        assert_eq!(o.plan.guest, Ipv4Addr::new(10, 41, 0, 100));
        assert_eq!(o.target, Target::Pid(77));
    }

    #[test]
    fn defaults() {
        let o = run("42 tap0");
        assert_eq!(o.mtu, 1500);
        assert_eq!(o.cidr, "10.0.2.0/24");
        assert!(o.plan.host_loopback);
        assert_eq!(o.macaddress, None);
        assert_eq!(o.pcap, None);
        assert!(o.warnings.is_empty());
    }

    #[test]
    fn short_options_cluster_and_attach_values() {
        let o = run("-c6 -r3 -m1500 -e 7 9 tap0");
        assert!(o.configure && o.enable_ipv6);
        assert_eq!((o.ready_fd, o.mtu, o.exit_fd), (Some(3), 1500, Some(7)));
        let o = run("-cr 3 9 tap0");
        assert!(o.configure);
        assert_eq!(o.ready_fd, Some(3));
        let o = run("-cr3 -a/tmp/a.sock 9 tap0");
        assert_eq!(o.ready_fd, Some(3));
        assert_eq!(o.api_socket, Some("/tmp/a.sock".into()));
        // A value is taken from the next argument even when it looks like an option.
        assert_eq!(
            err("-r -1 9 tap0"),
            "ready-fd must be a non-negative integer"
        );
        assert_eq!(
            err("-c6m0 9 tap0"),
            "MTU must be a positive integer (< 65522)"
        );
    }

    #[test]
    fn long_options_take_equals_or_next_and_unique_prefixes() {
        assert_eq!(run("--mtu=9000 9 tap0").mtu, 9000);
        assert_eq!(run("--mtu 9000 9 tap0").mtu, 9000);
        assert_eq!(run("--mt 9000 9 tap0").mtu, 9000);
        assert_eq!(run("--ready=5 9 tap0").ready_fd, Some(5));
        assert!(run("--conf 9 tap0").configure);
        // Only the first `=` separates: the value here is `1500=3`.
        assert_eq!(
            err("--mtu=1500=3 9 tap0"),
            "MTU must be a positive integer (< 65522)"
        );
    }

    #[test]
    fn exact_name_wins_over_longer_prefix_match() {
        let o = run("--outbound-addr 1.2.3.4 9 tap0");
        assert_eq!(o.outbound_addr.as_deref(), Some("1.2.3.4"));
        assert_eq!(o.outbound_addr6, None);
    }

    #[test]
    fn options_may_follow_positionals_and_double_dash_ends_them() {
        let o = run("9 tap0 --mtu 4000 -c");
        assert_eq!((o.mtu, o.configure), (4000, true));
        let o = run("-- 9 tap0");
        assert_eq!(o.target, Target::Pid(9));
        let o = run("9 -- tap0 --mtu 0");
        assert_eq!(o.mtu, 1500);
        assert_eq!(o.warnings, ["WARNING: too many arguments"]);
        assert_eq!(err("- tap0"), "PID must be a positive integer");
    }

    #[test]
    fn help_and_version_act_where_they_stand() {
        assert_eq!(parse(&argv("-h")), Ok(Parsed::Help));
        assert_eq!(parse(&argv("--he")), Ok(Parsed::Help));
        assert_eq!(parse(&argv("-v")), Ok(Parsed::Version));
        assert_eq!(parse(&argv("--v")), Ok(Parsed::Version));
        assert_eq!(parse(&argv("-h --bogus")), Ok(Parsed::Help));
        assert_eq!(parse(&argv("-h -m 0")), Ok(Parsed::Help));
        assert_eq!(parse(&argv("-ch")), Ok(Parsed::Help));
        assert_eq!(err("--bogus -h"), "unrecognized option '--bogus'");
        assert_eq!(err("-m 0 -h"), "MTU must be a positive integer (< 65522)");
    }

    #[test]
    fn deprecated_aliases_warn() {
        let o = run("--no-host-loopback --create-sandbox 9 tap0");
        assert!(o.disable_host_loopback && o.enable_sandbox);
        assert_eq!(
            o.warnings,
            [
                "WARNING: --no-host-loopback is deprecated and will be removed in future \
                 releases, please use --disable-host-loopback instead.",
                "WARNING: --create-sandbox is deprecated and will be removed in future \
                 releases, please use --enable-sandbox instead."
            ]
        );
    }

    #[test]
    fn positionals() {
        assert_eq!(run("9").tapname, "tap0", "a missing TAPNAME means tap0");
        let o = run("9 tun11 extra more");
        assert_eq!(o.tapname, "tun11");
        assert_eq!(o.warnings, ["WARNING: too many arguments"]);
        assert_eq!(
            run(" +9 tap0").target,
            Target::Pid(9),
            "strtol skips blanks"
        );
        assert_eq!(
            run("--netns-type=pid 2147483647 tap0").target,
            Target::Pid(i32::MAX)
        );
    }

    #[test]
    fn paths_keep_their_bytes() {
        let args = vec![
            OsString::from("--netns-type=path"),
            OsString::from("--api-socket"),
            OsString::from_vec(b"/tmp/\xff.sock".to_vec()),
            OsString::from_vec(b"/run/\xfe".to_vec()),
        ];
        let Ok(Parsed::Run(o)) = parse(&args) else {
            panic!("should parse")
        };
        assert_eq!(
            o.target,
            Target::Path(OsString::from_vec(b"/run/\xfe".to_vec()).into())
        );
        assert_eq!(
            o.api_socket.unwrap().as_os_str().as_bytes(),
            b"/tmp/\xff.sock"
        );
    }

    #[test]
    fn macaddress_with_configure() {
        let o = run("-c --macaddress 02:0a:FF:3:4:5 9 tap0");
        assert_eq!(o.macaddress, Some([0x02, 0x0a, 0xff, 0x03, 0x04, 0x05]));
    }

    #[test]
    fn pcap_extension() {
        let o = run("--pcap /tmp/t.pcap 9 tap0");
        assert_eq!(o.pcap, Some(PathBuf::from("/tmp/t.pcap")));
    }

    #[test]
    fn getopt_messages() {
        assert_eq!(err("--bogus 9 tap0"), "unrecognized option '--bogus'");
        assert_eq!(err("--bogus=x 9 tap0"), "unrecognized option '--bogus=x'");
        assert_eq!(err("-x 9 tap0"), "invalid option -- 'x'");
        assert_eq!(err("-W foo 9 tap0"), "invalid option -- 'W'");
        assert_eq!(err("--mtu"), "option '--mtu' requires an argument");
        assert_eq!(err("--mt"), "option '--mtu' requires an argument");
        assert_eq!(err("-m"), "option requires an argument -- 'm'");
        assert_eq!(err("-a"), "option requires an argument -- 'a'");
        assert_eq!(
            err("--configure=x 9 tap0"),
            "option '--configure' doesn't allow an argument"
        );
        assert_eq!(
            err("--conf=x 9 tap0"),
            "option '--configure' doesn't allow an argument"
        );
        assert_eq!(
            err("--enable 9 tap0"),
            "option '--enable' is ambiguous; possibilities: '--enable-ipv6' \
             '--enable-sandbox' '--enable-seccomp'"
        );
        assert_eq!(
            err("--enable=x 9 tap0"),
            "option '--enable=x' is ambiguous; possibilities: '--enable-ipv6' \
             '--enable-sandbox' '--enable-seccomp'"
        );
        assert_eq!(
            err("--disable 9 tap0"),
            "option '--disable' is ambiguous; possibilities: '--disable-host-loopback' \
             '--disable-dns'"
        );
        assert_eq!(
            err("--outbound 1.2.3.4 9 tap0"),
            "option '--outbound' is ambiguous; possibilities: '--outbound-addr' \
             '--outbound-addr6'"
        );
        assert_eq!(
            err("--c 9 tap0"),
            "option '--c' is ambiguous; possibilities: '--configure' '--cidr' \
             '--create-sandbox'"
        );
        assert!(err("--= 9 tap0").starts_with(
            "option '--=' is ambiguous; possibilities: '--configure' '--exit-fd' '--ready-fd'"
        ));
    }

    #[test]
    fn value_messages() {
        for mtu in [
            "0",
            "65522",
            "abc",
            "65521x",
            "",
            "-1",
            "4294968796",
            "1500 ",
        ] {
            let args = vec![OsString::from("--mtu"), OsString::from(mtu), "9".into()];
            assert_eq!(
                parse(&args).unwrap_err(),
                ArgsError::Mtu(mtu.into()),
                "{mtu:?}"
            );
        }
        assert_eq!(run("--mtu 65521 9 tap0").mtu, 65521);
        assert_eq!(run("--mtu 1 9 tap0").mtu, 1);
        assert_eq!(err("-e x 9 tap0"), "exit-fd must be a non-negative integer");
        assert_eq!(
            err("--exit-fd=2147483648 9 tap0"),
            "exit-fd must be a non-negative integer"
        );
        assert_eq!(
            err("-r -1 9 tap0"),
            "ready-fd must be a non-negative integer"
        );
        assert_eq!(run("-e -0 9 tap0").exit_fd, Some(0));
        assert_eq!(err("0 tap0"), "PID must be a positive integer");
        assert_eq!(err("abc tap0"), "PID must be a positive integer");
        assert_eq!(err("-5 tap0"), "invalid option -- '5'");
        assert_eq!(err("2147483648 tap0"), "PID must be a positive integer");
        assert_eq!(err("4294967297 tap0"), "PID must be a positive integer");
        assert_eq!(
            err("--netns-type pid 0 tap0"),
            "PID must be a positive integer"
        );
    }

    #[test]
    fn cidr_messages() {
        assert_eq!(
            err("--cidr 10.0.2.100/24 9 tap0"),
            "CIDR needs to be a network address like 10.0.2.0/24, not like 10.0.2.100/24"
        );
        assert_eq!(
            err("--cidr 10.0.2.0/26 9 tap0"),
            "prefix length needs to be 1-25"
        );
        assert_eq!(
            err("--cidr 10.0.2.0/0 9 tap0"),
            "prefix length needs to be 1-25"
        );
        assert_eq!(
            err("--cidr 10.0.2.0/00 9 tap0"),
            "prefix length needs to be 1-25"
        );
        assert_eq!(err("--cidr foo 9 tap0"), "invalid CIDR: foo");
        assert_eq!(err("--cidr fd00::/64 9 tap0"), "invalid CIDR: fd00::/64");
        assert_eq!(
            err("--cidr 10.0.2.0/024 9 tap0"),
            "invalid CIDR: 10.0.2.0/024"
        );
        assert_eq!(err("--cidr 10.0.2.0 9 tap0"), "invalid CIDR: 10.0.2.0");
        assert_eq!(err("--cidr 10.0.2/24 9 tap0"), "invalid CIDR: 10.0.2/24");
        assert_eq!(
            err("--cidr 1.2.3.4.5/8 9 tap0"),
            "invalid CIDR: 1.2.3.4.5/8"
        );
        assert_eq!(
            err("--cidr 1000.0.0.0/8 9 tap0"),
            "invalid CIDR: 1000.0.0.0/8"
        );
        assert_eq!(
            err("--cidr 300.0.0.0/8 9 tap0"),
            "invalid network address: 300.0.0.0"
        );
        assert_eq!(
            err("--cidr 010.0.2.0/24 9 tap0"),
            "invalid network address: 010.0.2.0"
        );
        let args = vec!["--cidr".into(), " 10.0.2.0/24".into(), "9".into()];
        assert_eq!(
            parse(&args).unwrap_err().to_string(),
            "invalid CIDR:  10.0.2.0/24"
        );
        // A two-digit prefix with a leading zero passes the regex, as in slirp4netns.
        assert_eq!(run("--cidr 10.0.0.0/08 9 tap0").plan.prefix_len, 8);
        assert_eq!(
            run("--cidr 10.0.2.0/24 --cidr 10.0.3.0/24 9 tap0").cidr,
            "10.0.3.0/24"
        );
        assert_eq!(
            run("--cidr 192.168.0.0/25 9 tap0").plan.guest,
            Ipv4Addr::new(192, 168, 0, 100)
        );
    }

    #[test]
    fn macaddress_messages() {
        assert_eq!(
            err("--macaddress 11:22:33:44:55:66 9 tap0"),
            "--macaddr cannot be specified when --configure or -c is not specified"
        );
        assert_eq!(
            err("-c --macaddress 11:22:33:44:55:zz 9 tap0"),
            "\"11:22:33:44:55:zz\" is an invalid MAC address."
        );
        assert_eq!(
            err("-c --macaddress 11:22:33:44:55:66:77 9 tap0"),
            "\"11:22:33:44:55:66:77\" is an invalid MAC address.  Is it too long?"
        );
        for bad in [
            "11:22:33",
            "",
            "111:22:33:44:55:66",
            "+1:2:3:4:5:6",
            "1::3:4:5:6",
        ] {
            let args = vec!["-c".into(), "--macaddress".into(), bad.into(), "9".into()];
            assert_eq!(
                parse(&args),
                Err(ArgsError::MacAddress(bad.into())),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn target_and_netns_type_messages() {
        assert_eq!(
            err("--target-type=foo 9 tap0"),
            "--target-type must be either \"netns\" or \"bess\""
        );
        assert_eq!(
            err("--target-type=bess /x"),
            "--target-type=bess is not supported by tapir; only netns is"
        );
        assert_eq!(run("--target-type=netns 9 tap0").target, Target::Pid(9));
        assert_eq!(
            err("--netns-type=tapfd 3"),
            "--netns-type=tapfd is not supported by tapir (it came with slirp4netns 1.3); \
             use pid or path"
        );
        assert_eq!(
            err("--netns-type=PID 9 tap0"),
            "--netns-type \"PID\" is not supported: use pid or path"
        );
        let args = vec!["--netns-type=path".into(), "".into(), "tap0".into()];
        assert_eq!(
            parse(&args).unwrap_err().to_string(),
            "existing path expected when --netns-type=path: No such file or directory"
        );
        assert_eq!(
            err(""),
            "missing PID|PATH argument: usage is slirp4netns [OPTION]... PID|PATH [TAPNAME]"
        );
        assert_eq!(
            err("--"),
            "missing PID|PATH argument: usage is slirp4netns [OPTION]... PID|PATH [TAPNAME]"
        );
    }

    #[test]
    fn tapname_must_be_an_interface_name() {
        assert_eq!(run("9 abcdefghijklmno").tapname, "abcdefghijklmno");
        for bad in ["abcdefghijklmnop", "a/b", "a:b", ".", "..", ""] {
            let args = vec!["9".into(), bad.into()];
            assert_eq!(parse(&args), Err(ArgsError::TapName(bad.into())), "{bad:?}");
        }
        assert_eq!(
            err("9 a:b"),
            "TAPNAME \"a:b\" is not a valid interface name (1 to 15 bytes, without '/', ':' \
             or spaces)"
        );
    }

    #[test]
    fn api_socket_must_fit_sun_path() {
        let ok = format!("/{}", "a".repeat(SUN_PATH_LEN - 2));
        assert_eq!(
            run(&format!("--api-socket {ok} 9 tap0")).api_socket,
            Some(PathBuf::from(&ok))
        );
        let long = format!("/{}", "a".repeat(SUN_PATH_LEN - 1));
        let e = parse(&argv(&format!("-a {long} 9 tap0"))).unwrap_err();
        assert_eq!(e, ArgsError::ApiSocketTooLong(PathBuf::from(&long)));
        assert_eq!(
            e.to_string(),
            "the specified API socket path is too long (>= 108)"
        );
        assert!(!e.shows_usage());
    }

    #[test]
    fn outbound_addr_messages() {
        let args = vec!["--outbound-addr=".into(), "9".into()];
        assert_eq!(
            parse(&args).unwrap_err().to_string(),
            "outbound-addr has to be valid ipv4 address or interface name."
        );
        let args = vec!["--outbound-addr6".into(), "".into(), "9".into()];
        assert_eq!(
            parse(&args).unwrap_err().to_string(),
            "outbound-addr6 has to be valid ipv6 address or interface name."
        );
    }

    #[test]
    fn usage_follows_reading_errors_only() {
        assert!(parse(&argv("--bogus")).unwrap_err().shows_usage());
        assert!(parse(&argv("0 tap0")).unwrap_err().shows_usage());
        assert!(!parse(&argv("--cidr x 9")).unwrap_err().shows_usage());
    }

    #[test]
    fn help_lists_every_probed_option() {
        let help = help_text();
        for probe in [
            "--netns-type",
            "--mtu",
            "--cidr",
            "--disable-host-loopback",
            "--api-socket",
            "--enable-ipv6",
            "--enable-sandbox",
            "--enable-seccomp",
            "--outbound-addr",
            "--outbound-addr6",
            "--userns-path",
            "--disable-dns",
            "--macaddress",
            "--target-type",
            "--configure",
            "--exit-fd",
            "--ready-fd",
            "--help",
            "--version",
            "--pcap",
        ] {
            assert!(help.contains(probe), "{probe}");
        }
        assert!(help.starts_with("Usage: slirp4netns [OPTION]... PID|PATH [TAPNAME]\n"));
        // Every long option the parser knows is listed, except the deprecated aliases.
        for (name, _) in LONG_OPTIONS {
            if *name != "no-host-loopback" && *name != "create-sandbox" {
                assert!(help.contains(&format!("--{name}")), "{name}");
            }
        }
    }

    #[test]
    fn version_lines() {
        let text = version_text();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 5);
        assert_eq!(lines[0], "slirp4netns version 1.2.0+tapir");
        assert!(lines[1].starts_with("commit: "));
        assert_eq!(lines[2], "libslirp: (tapir)");
        assert_eq!(lines[3], "SLIRP_CONFIG_VERSION_MAX: 4");
        assert_eq!(lines[4], "libseccomp: (none)");
        assert!(text.ends_with('\n'));
    }

    #[test]
    fn strtol_edges() {
        assert_eq!(c_strtol(b"42"), Some(42));
        assert_eq!(c_strtol(b"  +42"), Some(42));
        assert_eq!(c_strtol(b"\t-7"), Some(-7));
        assert_eq!(c_strtol(b"-9223372036854775808"), Some(i64::MIN));
        assert_eq!(c_strtol(b"9223372036854775808"), None);
        for bad in [&b""[..], b" ", b"+", b"-", b"4 ", b"0x10", b"1e3", b"\xff"] {
            assert_eq!(c_strtol(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn never_panics_on_odd_arguments() {
        let odd: Vec<Vec<u8>> = vec![
            b"-".to_vec(),
            b"--".to_vec(),
            b"---".to_vec(),
            b"--=".to_vec(),
            b"-\xff".to_vec(),
            b"--\xff".to_vec(),
            b"--mtu=\xff".to_vec(),
            b"-m\xff".to_vec(),
            b"\xff".to_vec(),
            b"-e".to_vec(),
            b"--cidr=\xff/24".to_vec(),
            b"--macaddress=\xff".to_vec(),
            b"--netns-type=\xff".to_vec(),
            b"--target-type=\xff".to_vec(),
            b"--outbound-addr=\xff".to_vec(),
            b"-c".to_vec(),
            b"\0".to_vec(),
            "--é".as_bytes().to_vec(),
            "-é".as_bytes().to_vec(),
        ];
        for a in &odd {
            for b in &odd {
                let args = vec![
                    OsString::from_vec(a.clone()),
                    OsString::from_vec(b.clone()),
                    OsString::from_vec(a.clone()),
                ];
                let _ = parse(&args);
            }
        }
        let _ = parse(&[]);
    }
}
