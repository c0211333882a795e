//! One guest per path and MTU, and the commands that run inside it.
//!
//! Theory of operation. Every path gets the same shape of guest: a `sleep infinity` in a
//! network namespace whose only way out is the path under test, and a *helper* process (tapir,
//! slirp4netns or pasta) whose CPU time and memory the bench reads from /proc. Clients run
//! inside the guest with `nsenter`, as uid 65534: for the rootless paths by joining the user
//! namespace that uid 65534 owns, for the kernel and veth paths (root-made netns) by dropping
//! to 65534 with `setpriv` after joining. A guest lives for all the scenarios of one
//! path at one MTU, so the helper's peak RSS covers them all; dropping it kills what it started.
//!
//! Addresses: the guest dials [`Guest::server`] for the host's servers (10.0.2.2, mapped to
//! 127.0.0.1 by tapir and slirp4netns; the pasta uplink's gateway, mapped to the host by pasta;
//! the bridge's address on the kernel path; the veth's own address on the veth path, which has
//! no NAT), and the host dials
//! [`Guest::published`] to reach the guest's port [`GUEST_PORT`].

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use super::PathKind;

/// The unprivileged uid (and gid) the rootless paths and every client run as.
pub const NOBODY: u32 = 65534;
/// The guest's port that each path publishes on the host (h2g throughput).
pub const GUEST_PORT: u16 = 5202;
/// The host port it is published on (127.0.0.1).
pub const PUBLISHED_PORT: u16 = 15202;
/// The pasta path's uplink: pasta copies its address and default route into the guest.
pub const UPLINK_ADDR: &str = "192.0.2.2/24";
pub const UPLINK_GATEWAY: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
const GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 2);
/// The bridge's address in `tapir run --network bridge`'s default subnet (172.30.0.0/16).
const BRIDGE_GATEWAY: Ipv4Addr = Ipv4Addr::new(172, 30, 0, 1);
const GUEST: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 100);

pub struct Guest {
    pub kind: PathKind,
    pub mtu: u32,
    /// A process inside the guest's namespaces (the sleeper), for nsenter and /proc/PID/net.
    pub ns_pid: u32,
    /// Whether clients join the guest's user namespace (rootless) or drop to 65534 (kernel).
    join_user: bool,
    /// tapir, slirp4netns or pasta: the process whose CPU and memory are measured.
    helper: Option<Child>,
    /// The sleeper, when we started it directly (slirp4netns and kernel paths).
    sleeper: Option<Child>,
    pub server: IpAddr,
    pub published: SocketAddr,
    /// The guest's loopback port that the helper joins to the host's iperf3 server (tapir's
    /// and pasta's `-T`), when the path has such a splice.
    pub loopback_to_host: Option<u16>,
    /// Guest-side processes started in the background (iperf3 -s), killed with the guest.
    background: Vec<Child>,
}

impl Guest {
    /// Starts the guest of `kind` at `mtu`; `dir` is the bench's directory (0755, holding the
    /// tapir copy uid 65534 can run, and a 0777 `run/` for sockets and logs).
    pub fn start(kind: PathKind, mtu: u32, dir: &Path) -> Result<Guest, String> {
        match kind {
            PathKind::Tapir => start_tapir(mtu, dir),
            PathKind::Kernel => start_bridge(mtu, dir),
            PathKind::Veth => start_veth(mtu),
            PathKind::Slirp4netns => start_slirp4netns(mtu, dir),
            PathKind::Pasta => start_pasta(mtu, dir),
        }
    }

    /// A command that runs `program args` inside the guest as uid 65534.
    pub fn command(&self, program: &str, args: &[String]) -> Command {
        let target = self.ns_pid.to_string();
        let mut cmd = Command::new("nsenter");
        if self.join_user {
            cmd.args([
                "--preserve-credentials",
                "--user",
                "--net",
                "--target",
                &target,
                "--",
            ])
            .uid(NOBODY)
            .gid(NOBODY);
        } else {
            cmd.args(["--net", "--target", &target, "--"]).args([
                "setpriv",
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
                "--",
            ]);
        }
        cmd.arg(program).args(args);
        cmd
    }

    /// Starts `program args` in the guest in the background, until the guest is dropped.
    pub fn spawn_background(&mut self, program: &str, args: &[String]) -> Result<(), String> {
        let child = self
            .command(program, args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot start {program} in the guest: {e}"))?;
        self.background.push(child);
        Ok(())
    }

    pub fn helper_pid(&self) -> Option<u32> {
        self.helper.as_ref().map(Child::id)
    }

    /// Whether a TCP socket in the guest listens on `port` (from /proc/PID/net/tcp and tcp6:
    /// iperf3 listens on the IPv6 wildcard, which takes IPv4 too).
    pub fn listening(&self, port: u16) -> bool {
        ["tcp", "tcp6"].iter().any(|table| {
            let text = std::fs::read_to_string(format!("/proc/{}/net/{table}", self.ns_pid))
                .unwrap_or_default();
            proc_net_listens(&text, port)
        })
    }
}

impl Drop for Guest {
    fn drop(&mut self) {
        // The sleeper first: a helper's guest can outlive it, holding the helper's listening
        // sockets (pasta's published port) and the guest's namespaces.
        if self.ns_pid != 0 {
            let pid = nix::unistd::Pid::from_raw(self.ns_pid as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
        }
        // tapir (either mode) ends when its command does, tearing down what it made (the
        // bridge path's veth, lease and rules); give it the chance before killing it.
        let _ = wait_until(Duration::from_secs(5), || {
            self.helper
                .iter_mut()
                .chain(self.sleeper.iter_mut())
                .all(|c| matches!(c.try_wait(), Ok(Some(_))))
        });
        for child in self
            .background
            .iter_mut()
            .chain(self.helper.iter_mut())
            .chain(self.sleeper.iter_mut())
        {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn start_tapir(mtu: u32, dir: &Path) -> Result<Guest, String> {
    let publish = format!("127.0.0.1:{PUBLISHED_PORT}:{GUEST_PORT}/tcp");
    let to_host = super::IPERF_PORT.to_string();
    let mut helper = Command::new(dir.join("bin/tapir"));
    helper.args([
        "run",
        "--mtu",
        &mtu.to_string(),
        "-p",
        &publish,
        "-T",
        &to_host,
        "--",
    ]);
    let mut guest = start_own_namespaces(PathKind::Tapir, mtu, dir, helper, GATEWAY)?;
    guest.loopback_to_host = Some(super::IPERF_PORT);
    Ok(guest)
}

fn start_veth(mtu: u32) -> Result<Guest, String> {
    let sleeper = Command::new("unshare")
        .args(["--net", "sleep", "infinity"])
        .stdin(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot start the veth path's guest: {e}"))?;
    let pid = sleeper.id();
    let guest = Guest {
        kind: PathKind::Veth,
        mtu,
        ns_pid: pid,
        join_user: false,
        helper: None,
        sleeper: Some(sleeper),
        server: GATEWAY.into(),
        published: SocketAddr::from((GUEST, GUEST_PORT)),
        loopback_to_host: None,
        background: Vec::new(),
    };
    wait_until(Duration::from_secs(5), || {
        comm(pid).as_deref() == Some("sleep")
    })
    .map_err(|()| "the kernel path's guest namespace did not start".to_string())?;
    let m = mtu.to_string();
    let p = pid.to_string();
    // The veth dies with the guest's netns when the sleeper is killed.
    ip(&[
        "link",
        "add",
        "tapir-bench0",
        "mtu",
        &m,
        "type",
        "veth",
        "peer",
        "name",
        "eth0",
    ])?;
    ip(&["link", "set", "eth0", "mtu", &m, "netns", &p])?;
    ip(&["addr", "add", "10.0.2.2/24", "dev", "tapir-bench0"])?;
    ip(&["link", "set", "tapir-bench0", "up"])?;
    let inside = ["-t", &p, "-n", "ip"];
    for args in [
        &["link", "set", "lo", "up"][..],
        &["addr", "add", "10.0.2.100/24", "dev", "eth0"],
        &["link", "set", "eth0", "up"],
    ] {
        run_quiet(Command::new("nsenter").args(inside).args(args))?;
    }
    Ok(guest)
}

/// `tapir run --network bridge`: root makes the netns, veth, bridge and nftables rules; tapir
/// itself then only waits for the command, so it is not the measured helper (the kernel does
/// the work, in softirq time no process is charged with).
fn start_bridge(mtu: u32, dir: &Path) -> Result<Guest, String> {
    let log_name = format!("kernel-{mtu}.log");
    let publish = format!("127.0.0.1:{PUBLISHED_PORT}:{GUEST_PORT}/tcp");
    let state = dir.join("run/kernel-state");
    let owner = Command::new(dir.join("bin/tapir"))
        .args([
            "run",
            "--network",
            "bridge",
            "--mtu",
            &mtu.to_string(),
            "-p",
            &publish,
        ])
        .arg("--state-dir")
        .arg(&state)
        .args(["--", "sleep", "infinity"])
        .stdin(Stdio::null())
        .stdout(log_file(dir, &log_name)?)
        .stderr(log_file(dir, &log_name)?)
        .spawn()
        .map_err(|e| format!("cannot start tapir run --network bridge: {e}"))?;
    let owner_pid = owner.id();
    let mut guest = Guest {
        kind: PathKind::Kernel,
        mtu,
        ns_pid: 0,
        join_user: false,
        helper: None,
        sleeper: Some(owner),
        server: BRIDGE_GATEWAY.into(),
        published: SocketAddr::from(([127, 0, 0, 1], PUBLISHED_PORT)),
        loopback_to_host: None,
        background: Vec::new(),
    };
    guest.ns_pid = wait_for_sleeper(owner_pid, dir, &log_name)?;
    wait_for_default_route(guest.ns_pid)?;
    set_bridge_mtu(guest.ns_pid, mtu)?;
    Ok(guest)
}

/// `tapir run --network bridge` has no --mtu (it takes the kernel's default, 1500): set the
/// bench's MTU on the bridge's ports, the bridge, and the guest's eth0, all in namespaces the
/// bench made.
fn set_bridge_mtu(ns_pid: u32, mtu: u32) -> Result<(), String> {
    let m = mtu.to_string();
    let bridge = crate::kernel::DEFAULT_BRIDGE;
    let ports = run_bounded(
        Command::new("ip").args(["-o", "link", "show", "master", bridge]),
        Duration::from_secs(10),
    )?;
    for line in ports.lines() {
        let Some(name) = line
            .split(':')
            .nth(1)
            .map(|n| n.trim().split('@').next().unwrap_or(""))
        else {
            continue;
        };
        ip(&["link", "set", "dev", name, "mtu", &m])?;
    }
    ip(&["link", "set", "dev", bridge, "mtu", &m])?;
    run_quiet(Command::new("nsenter").args([
        "-t",
        &ns_pid.to_string(),
        "-n",
        "ip",
        "link",
        "set",
        "eth0",
        "mtu",
        &m,
    ]))
}

fn start_slirp4netns(mtu: u32, dir: &Path) -> Result<Guest, String> {
    let sleeper = Command::new("unshare")
        .args(["--user", "--map-root-user", "--net", "sleep", "infinity"])
        .uid(NOBODY)
        .gid(NOBODY)
        .stdin(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot start slirp4netns's guest: {e}"))?;
    let pid = sleeper.id();
    wait_until(Duration::from_secs(5), || {
        comm(pid).as_deref() == Some("sleep")
    })
    .map_err(|()| "slirp4netns's guest namespace did not start".to_string())?;
    let socket = dir.join(format!("run/slirp4netns-{mtu}.sock"));
    let log_name = format!("slirp4netns-{mtu}.log");
    let helper = Command::new("slirp4netns")
        .arg("--configure")
        .arg(format!("--mtu={mtu}"))
        .arg(format!("--api-socket={}", socket.display()))
        .args([&pid.to_string(), "tap0"])
        .uid(NOBODY)
        .gid(NOBODY)
        .stdin(Stdio::null())
        .stdout(log_file(dir, &log_name)?)
        .stderr(log_file(dir, &log_name)?)
        .spawn()
        .map_err(|e| format!("cannot start slirp4netns: {e}"))?;
    let guest = Guest {
        kind: PathKind::Slirp4netns,
        mtu,
        ns_pid: pid,
        join_user: true,
        helper: Some(helper),
        sleeper: Some(sleeper),
        server: GATEWAY.into(),
        published: SocketAddr::from(([127, 0, 0, 1], PUBLISHED_PORT)),
        loopback_to_host: None,
        background: Vec::new(),
    };
    wait_for_default_route(pid)?;
    wait_until(Duration::from_secs(5), || socket.exists())
        .map_err(|()| format!("slirp4netns made no API socket at {}", socket.display()))?;
    let request = format!(
        r#"{{"execute":"add_hostfwd","arguments":{{"proto":"tcp","host_addr":"127.0.0.1","host_port":{PUBLISHED_PORT},"guest_port":{GUEST_PORT}}}}}"#
    );
    let reply = api_call(&socket, &request)?;
    if !reply.contains("\"return\"") || reply.contains("\"error\"") {
        return Err(format!("slirp4netns refused the port forward: {reply}"));
    }
    Ok(guest)
}

fn start_pasta(mtu: u32, dir: &Path) -> Result<Guest, String> {
    let publish = format!("127.0.0.1/{PUBLISHED_PORT}:{GUEST_PORT}");
    let to_host = super::IPERF_PORT.to_string();
    let mut helper = Command::new("pasta");
    helper
        .args(["-f", "--config-net", "-m", &mtu.to_string(), "-t", &publish])
        .args(["-u", "none", "-T", &to_host, "-U", "none", "--"]);
    let mut guest = start_own_namespaces(PathKind::Pasta, mtu, dir, helper, UPLINK_GATEWAY)?;
    guest.loopback_to_host = Some(super::IPERF_PORT);
    Ok(guest)
}

/// Starts `helper`, a tool that makes the guest's namespaces itself and runs the command given
/// after its arguments (here `sleep infinity`) in them, as uid 65534; the guest is ready once
/// the sleeper runs and has a default route. Its output goes to `KIND-MTU.log`.
fn start_own_namespaces(
    kind: PathKind,
    mtu: u32,
    dir: &Path,
    mut helper: Command,
    server: Ipv4Addr,
) -> Result<Guest, String> {
    let log_name = format!("{}-{mtu}.log", kind.name());
    let helper = helper
        .args(["sleep", "infinity"])
        .uid(NOBODY)
        .gid(NOBODY)
        .stdin(Stdio::null())
        .stdout(log_file(dir, &log_name)?)
        .stderr(log_file(dir, &log_name)?)
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", kind.name()))?;
    let mut guest = Guest {
        kind,
        mtu,
        ns_pid: 0,
        join_user: true,
        helper: Some(helper),
        sleeper: None,
        server: server.into(),
        published: SocketAddr::from(([127, 0, 0, 1], PUBLISHED_PORT)),
        loopback_to_host: None,
        background: Vec::new(),
    };
    let helper_pid = guest.helper_pid().unwrap_or_default();
    guest.ns_pid = wait_for_sleeper(helper_pid, dir, &log_name)?;
    wait_for_default_route(guest.ns_pid)?;
    Ok(guest)
}

/// Runs `cmd` (its output captured) until it exits or `limit` passes, then kills it.
pub fn run_bounded(cmd: &mut Command, limit: Duration) -> Result<String, String> {
    let program = format!("{:?}", cmd.get_program());
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start {program}: {e}"))?;
    let stdout = child.stdout.take();
    let stderr = child.stderr.take();
    let out = thread::spawn(move || read_all(stdout));
    let err = thread::spawn(move || read_all(stderr));
    let start = Instant::now();
    let status = loop {
        if let Ok(Some(status)) = child.try_wait() {
            break Some(status);
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        thread::sleep(Duration::from_millis(20));
    };
    let out = out.join().unwrap_or_default();
    let err = err.join().unwrap_or_default();
    match status {
        None => Err(format!("{program} ran longer than {} s", limit.as_secs())),
        Some(s) if s.success() => Ok(out),
        Some(s) => Err(format!(
            "{program} failed ({s}): {}",
            last_line(if err.trim().is_empty() { &out } else { &err })
        )),
    }
}

fn read_all<R: Read>(pipe: Option<R>) -> String {
    let mut text = String::new();
    if let Some(mut p) = pipe {
        let _ = p.read_to_string(&mut text);
    }
    text
}

pub fn last_line(text: &str) -> &str {
    text.lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("")
        .trim()
}

fn run_quiet(cmd: &mut Command) -> Result<(), String> {
    run_bounded(cmd, Duration::from_secs(10)).map(drop)
}

pub fn ip(args: &[&str]) -> Result<(), String> {
    run_quiet(Command::new("ip").args(args)).map_err(|e| format!("ip {}: {e}", args.join(" ")))
}

fn log_file(dir: &Path, name: &str) -> Result<std::fs::File, String> {
    let path = dir.join("run").join(name);
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .map_err(|e| format!("cannot open {}: {e}", path.display()))
}

fn log_tail(dir: &Path, name: &str) -> String {
    let text = std::fs::read_to_string(dir.join("run").join(name)).unwrap_or_default();
    last_line(&text).to_string()
}

/// Waits for the `sleep` a helper started as its guest (a child or grandchild of `helper`).
fn wait_for_sleeper(helper: u32, dir: &Path, log: &str) -> Result<u32, String> {
    let mut found = None;
    let waited = wait_until(Duration::from_secs(10), || {
        found = descendant_named(helper, "sleep");
        found.is_some() || comm(helper).is_none()
    });
    match (waited, found) {
        (Ok(()), Some(pid)) => Ok(pid),
        _ => Err(format!(
            "its guest never started (log: {})",
            log_tail(dir, log)
        )),
    }
}

fn wait_for_default_route(pid: u32) -> Result<(), String> {
    let has_route = || {
        std::fs::read_to_string(format!("/proc/{pid}/net/route"))
            .unwrap_or_default()
            .lines()
            .skip(1)
            .any(|l| l.split_whitespace().nth(1) == Some("00000000"))
    };
    wait_until(Duration::from_secs(10), has_route)
        .map_err(|()| "the guest's network was not configured within 10 s".to_string())
}

fn wait_until(limit: Duration, mut ready: impl FnMut() -> bool) -> Result<(), ()> {
    let start = Instant::now();
    while !ready() {
        if start.elapsed() > limit {
            return Err(());
        }
        thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

fn comm(pid: u32) -> Option<String> {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .ok()
        .map(|s| s.trim().to_string())
}

/// The first process named `name` below `root` in the process tree.
fn descendant_named(root: u32, name: &str) -> Option<u32> {
    let mut parents = Vec::new();
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        if let Some(ppid) = stat_field(&stat, 4) {
            parents.push((pid, ppid as u32));
        }
    }
    let mut frontier = vec![root];
    while let Some(parent) = frontier.pop() {
        for &(pid, ppid) in &parents {
            if ppid == parent {
                if comm(pid).as_deref() == Some(name) {
                    return Some(pid);
                }
                frontier.push(pid);
            }
        }
    }
    None
}

/// Field `n` (1-based, as in proc(5)) of /proc/PID/stat, counting past the `(comm)` field.
pub fn stat_field(stat: &str, n: usize) -> Option<u64> {
    let after_comm = &stat[stat.rfind(')')? + 1..];
    after_comm
        .split_whitespace()
        .nth(n.checked_sub(3)?)?
        .parse()
        .ok()
}

/// utime + stime of `pid`, in seconds.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let ticks = stat_field(&stat, 14)? + stat_field(&stat, 15)?;
    let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .unwrap_or(100);
    Some(ticks as f64 / hz as f64)
}

/// A `Vm*` line of /proc/PID/status (VmHWM, VmRSS), in MiB.
pub fn vm_mib(pid: u32, field: &str) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

fn api_call(socket: &PathBuf, request: &str) -> Result<String, String> {
    let mut stream = UnixStream::connect(socket).map_err(|e| {
        format!(
            "cannot reach slirp4netns's API at {}: {e}",
            socket.display()
        )
    })?;
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    stream
        .write_all(request.as_bytes())
        .and_then(|()| stream.shutdown(std::net::Shutdown::Write))
        .map_err(|e| format!("cannot write to slirp4netns's API: {e}"))?;
    let mut reply = String::new();
    let _ = stream.read_to_string(&mut reply);
    Ok(reply)
}

/// Whether a /proc/net/tcp{,6} table has a socket listening (state 0A) on `port`.
fn proc_net_listens(table: &str, port: u16) -> bool {
    let local = format!(":{port:04X}");
    table.lines().skip(1).any(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        fields.len() > 3 && fields[1].ends_with(&local) && fields[3] == "0A"
    })
}

#[cfg(test)]
mod test {
    use super::*;

    #[test]
    fn listeners_are_found_in_proc_net_tables() {
        let tcp6 = "  sl  local_address                         remote_address                        st\n   0: 00000000000000000000000000000000:1452 00000000000000000000000000000000:0000 0A 00000000:00000000\n   1: 00000000000000000000000001000000:1452 00000000000000000000000001000000:C350 01 00000000:00000000\n";
        assert!(proc_net_listens(tcp6, 5202));
        assert!(!proc_net_listens(tcp6, 5201));
        let established_only = "sl local remote st\n 0: 0100007F:1452 0100007F:C350 01 0\n";
        assert!(!proc_net_listens(established_only, 5202));
    }

    #[test]
    fn stat_fields_are_counted_past_a_comm_with_spaces() {
        let stat = "4242 (tap ir) S 1 4242 4242 0 -1 4194560 100 0 0 0 250 75 0 0 20 0 3 0";
        assert_eq!(stat_field(stat, 4), Some(1));
        assert_eq!(stat_field(stat, 14), Some(250));
        assert_eq!(stat_field(stat, 15), Some(75));
        assert_eq!(stat_field(stat, 2), None);
        assert_eq!(stat_field("garbage", 14), None);
    }
}
