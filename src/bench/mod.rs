//! `tapir bench`: every path side by side, in one run, on one machine.
//!
//! Theory of operation. The bench re-executes itself under `unshare --net --mount --pid` (see
//! `commands::bench`), so "the host" is a network namespace of its own with only loopback (and,
//! for pasta, an uplink on 192.0.2.0/24 (a veth pair going nowhere) whose gateway pasta maps to the host), its mounts
//! are private, and everything it starts dies with it. In there it starts the host-side servers
//! (`load::HostServers`, and `iperf3 -s`), then for each MTU and each [`PathKind`] starts one
//! [`guest::Guest`] and runs the chosen [`Scenario`]s against it, one after another:
//!
//! - `tcp_stream`: iperf3 guest→host (the guest dials the host's server) and host→guest (the
//!   host dials the port the path publishes on 127.0.0.1, into `iperf3 -s` in the guest); the
//!   helper's utime+stime over both, divided by the bytes received, gives CPU s/GB;
//! - `tcp_rr`, `udp_rr`: one connection (socket), 64-byte request, 64-byte reply, every round
//!   trip timed, by our own client (`tapir bench-client`) in the guest;
//! - `connect_rate`: connect, 64-byte request and reply, close, as fast as one client can;
//! - `hold`: N connections opened from the guest and held while the helper's RSS is read.
//!
//! The helper's VmHWM when its guest ends is the path's peak RSS at that MTU. A path whose tool
//! is not installed is skipped with that reason; a scenario that fails leaves its cells empty
//! with a note, and the run goes on. Figures are measurements, never estimates: an empty cell
//! means "not measured". With `--rounds N` the whole sequence runs N times and each figure is
//! the median of its rounds (see [`combine`]): on a small VM a single latency figure lands in
//! one of two scheduling modes about 15 µs apart, for every userspace path alike, so one round's
//! ratio is partly luck. Non-goal: pinning CPUs (the report names the machine so runs can be
//! compared on the same one).

pub mod guest;
pub mod latency;
pub mod load;
pub mod report;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use guest::{GUEST_PORT, Guest, run_bounded};
use load::{HostServers, PORTS};

/// A way for a guest to reach the network.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum PathKind {
    /// `tapir run --mtu M -p …`: tapir's userspace path, as uid 65534.
    Tapir,
    /// The kernel path: `tapir run --network bridge -p …` (veth, bridge, nftables NAT and
    /// DNAT), as root, with clients dropped to uid 65534.
    Kernel,
    /// The kernel at its plainest: the guest's netns behind one veth, no bridge, no NAT.
    Veth,
    /// `slirp4netns --configure --mtu=M`, as uid 65534.
    Slirp4netns,
    /// `pasta --config-net -m M`, as uid 65534.
    Pasta,
}

impl PathKind {
    pub const ALL: [PathKind; 5] = [
        PathKind::Tapir,
        PathKind::Kernel,
        PathKind::Veth,
        PathKind::Slirp4netns,
        PathKind::Pasta,
    ];

    pub fn name(self) -> &'static str {
        match self {
            PathKind::Tapir => "tapir",
            PathKind::Kernel => "kernel",
            PathKind::Veth => "veth",
            PathKind::Slirp4netns => "slirp4netns",
            PathKind::Pasta => "pasta",
        }
    }

    /// What the path is, for the report's legend.
    pub fn description(self) -> &'static str {
        match self {
            PathKind::Tapir => "tapir run (userspace, smoltcp), uid 65534",
            PathKind::Kernel => "tapir run --network bridge (veth, bridge, nftables NAT), root",
            PathKind::Veth => "one veth into the bench's netns, no bridge, no NAT",
            PathKind::Slirp4netns => "slirp4netns --configure, uid 65534",
            PathKind::Pasta => "pasta --config-net, uid 65534",
        }
    }

    pub fn from_name(name: &str) -> Option<PathKind> {
        PathKind::ALL.into_iter().find(|p| p.name() == name)
    }

    /// The program the path needs, if not tapir itself.
    fn tool(self) -> Option<&'static str> {
        match self {
            PathKind::Tapir => None,
            PathKind::Kernel => Some("nft"),
            PathKind::Veth => Some("ip"),
            PathKind::Slirp4netns => Some("slirp4netns"),
            PathKind::Pasta => Some("pasta"),
        }
    }
}

/// What is measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Scenario {
    TcpStream,
    TcpRr,
    UdpRr,
    ConnectRate,
    Hold,
}

impl Scenario {
    pub const ALL: [Scenario; 5] = [
        Scenario::TcpStream,
        Scenario::TcpRr,
        Scenario::UdpRr,
        Scenario::ConnectRate,
        Scenario::Hold,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Scenario::TcpStream => "tcp_stream",
            Scenario::TcpRr => "tcp_rr",
            Scenario::UdpRr => "udp_rr",
            Scenario::ConnectRate => "connect_rate",
            Scenario::Hold => "hold",
        }
    }

    pub fn from_name(name: &str) -> Option<Scenario> {
        Scenario::ALL.into_iter().find(|s| s.name() == name)
    }
}

/// One run's choices, validated by `commands::bench`.
#[derive(Debug, Clone)]
pub struct Options {
    pub paths: Vec<PathKind>,
    pub scenarios: Vec<Scenario>,
    pub mtus: Vec<u32>,
    pub duration: Duration,
    pub hold: u64,
    /// How often every path is measured, in turn; each figure is the median of its rounds.
    pub rounds: u32,
    /// The bench's directory (0755): bin/tapir, run/ (0777) for sockets and logs.
    pub dir: PathBuf,
}

/// The figures of one path at one MTU. Keys are `report::METRICS` names.
#[derive(Debug, Clone, Default)]
pub struct PathRun {
    pub metrics: BTreeMap<&'static str, f64>,
    /// Latency CDFs (µs, cumulative fraction) by scenario name.
    pub cdfs: BTreeMap<&'static str, Vec<[f64; 2]>>,
    /// What went wrong, one sentence each.
    pub notes: Vec<String>,
    /// Every round's figures, in the order they were measured (one entry per round).
    pub rounds: Vec<BTreeMap<&'static str, f64>>,
}

/// Everything one `tapir bench` measured.
#[derive(Debug, Clone)]
pub struct Results {
    pub options: Options,
    pub machine: String,
    pub tools: BTreeMap<String, String>,
    /// (path, MTU) → figures.
    pub runs: BTreeMap<(PathKind, u32), PathRun>,
    /// Paths not run, with the reason.
    pub skipped: Vec<(PathKind, String)>,
}

/// Port of the host's `iperf3 -s` (guest→host).
const IPERF_PORT: u16 = 5201;

/// Runs the whole bench inside the namespaces `commands::bench` made. Returns an error only
/// when nothing can be measured (the host servers do not start).
pub fn run(options: Options) -> Result<Results, String> {
    load::raise_open_file_limit();
    let servers = HostServers::start(PORTS)
        .map_err(|e| format!("cannot start the host-side servers: {e}"))?;
    let needs_iperf = options.scenarios.contains(&Scenario::TcpStream);
    let mut iperf = None;
    let mut notes = Vec::new();
    if needs_iperf {
        match start_iperf_server() {
            Ok(child) => iperf = Some(child),
            Err(e) => notes.push(e),
        }
    }
    let mut results = Results {
        machine: machine(),
        tools: tool_versions(),
        runs: BTreeMap::new(),
        skipped: Vec::new(),
        options: options.clone(),
    };
    for &path in &options.paths {
        if let Some(reason) = missing(path) {
            results.skipped.push((path, reason));
        }
    }
    let mut measured: BTreeMap<(PathKind, u32), Vec<PathRun>> = BTreeMap::new();
    for round in 1..=options.rounds {
        for &mtu in &options.mtus {
            for &path in &options.paths {
                if results.skipped.iter().any(|(p, _)| *p == path) {
                    continue;
                }
                let label = if options.rounds > 1 {
                    format!(
                        "{} at MTU {mtu}, round {round}/{}",
                        path.name(),
                        options.rounds
                    )
                } else {
                    format!("{} at MTU {mtu}", path.name())
                };
                eprintln!("tapir bench: {label} ...");
                let run = measure_once(path, mtu, &options);
                servers.release_held();
                for note in &run.notes {
                    eprintln!("tapir bench: {label}: {note}");
                }
                measured.entry((path, mtu)).or_default().push(run);
            }
        }
    }
    for (key, rounds) in measured {
        let mut run = combine(rounds);
        run.notes.splice(0..0, notes.iter().cloned());
        results.runs.insert(key, run);
    }
    if let Some(mut child) = iperf {
        let _ = child.kill();
        let _ = child.wait();
    }
    Ok(results)
}

/// One round of one path at one MTU: its own guest, every scenario.
fn measure_once(path: PathKind, mtu: u32, options: &Options) -> PathRun {
    let mut run = PathRun::default();
    match Guest::start(path, mtu, &options.dir) {
        Ok(mut guest) => {
            measure(&mut guest, options, &mut run);
            if let Some(pid) = guest.helper_pid() {
                put(&mut run, "peak_rss_mib", guest::vm_mib(pid, "VmHWM:"));
            }
        }
        Err(e) => run
            .notes
            .push(format!("{} did not start: {e}", path.name())),
    }
    run
}

/// The rounds of one path at one MTU as one set of figures: each metric is the median of the
/// rounds that measured it (the mean of the middle two for an even count), except the peak
/// RSS, which is the highest. A latency CDF is the one of the round whose p50 is nearest that
/// median, so the curve agrees with the table. Notes keep their round when there are several.
pub fn combine(rounds: Vec<PathRun>) -> PathRun {
    let mut run = PathRun::default();
    let keys: std::collections::BTreeSet<&'static str> = rounds
        .iter()
        .flat_map(|r| r.metrics.keys().copied())
        .collect();
    for key in keys {
        let mut values: Vec<f64> = rounds
            .iter()
            .filter_map(|r| r.metrics.get(key).copied())
            .collect();
        values.sort_by(f64::total_cmp);
        let value = if key == "peak_rss_mib" {
            values[values.len() - 1]
        } else {
            let mid = values.len() / 2;
            if values.len() % 2 == 1 {
                values[mid]
            } else {
                (values[mid - 1] + values[mid]) / 2.0
            }
        };
        run.metrics.insert(key, value);
    }
    let scenarios: std::collections::BTreeSet<&'static str> =
        rounds.iter().flat_map(|r| r.cdfs.keys().copied()).collect();
    for scenario in scenarios {
        let p50 = format!("{scenario}_p50_us");
        let target = run.metrics.get(p50.as_str()).copied();
        let distance = |r: &PathRun| match (r.metrics.get(p50.as_str()), target) {
            (Some(v), Some(t)) => (v - t).abs(),
            _ => f64::INFINITY,
        };
        let chosen = rounds
            .iter()
            .filter(|r| r.cdfs.contains_key(scenario))
            .min_by(|a, b| distance(a).total_cmp(&distance(b)));
        if let Some(curve) = chosen.and_then(|r| r.cdfs.get(scenario)) {
            run.cdfs.insert(scenario, curve.clone());
        }
    }
    let several = rounds.len() > 1;
    for (i, round) in rounds.into_iter().enumerate() {
        for note in round.notes {
            run.notes.push(if several {
                format!("round {}: {note}", i + 1)
            } else {
                note
            });
        }
        run.rounds.push(round.metrics);
    }
    run
}

fn measure(guest: &mut Guest, options: &Options, run: &mut PathRun) {
    for &scenario in &options.scenarios {
        let outcome = match scenario {
            Scenario::TcpStream => tcp_stream(guest, options, run),
            Scenario::TcpRr | Scenario::UdpRr => rr(guest, options, scenario, run),
            Scenario::ConnectRate => connect_rate(guest, options, run),
            Scenario::Hold => hold(guest, options, run),
        };
        if let Err(e) = outcome {
            run.notes.push(format!("{}: {e}", scenario.name()));
        }
    }
}

fn put(run: &mut PathRun, key: &'static str, value: Option<f64>) {
    if let Some(v) = value.filter(|v| v.is_finite()) {
        run.metrics.insert(key, v);
    }
}

/// Time a measurement may take beyond its duration before it counts as hung.
fn limit(options: &Options) -> Duration {
    options.duration + Duration::from_secs(30)
}

fn tcp_stream(guest: &mut Guest, options: &Options, run: &mut PathRun) -> Result<(), String> {
    let secs = options.duration.as_secs().max(1).to_string();
    let cpu_before = guest.helper_pid().and_then(guest::cpu_seconds);
    let server = guest.server.to_string();
    let g2h = run_bounded(
        &mut guest.command(
            "iperf3",
            &strings(&[
                "-c",
                &server,
                "-p",
                &IPERF_PORT.to_string(),
                "-t",
                &secs,
                "-J",
            ]),
        ),
        limit(options),
    )
    .and_then(|out| iperf_received(&out));
    // The host dials the guest's iperf3 through the port the path publishes.
    guest.spawn_background(
        "iperf3",
        &strings(&["-s", "-1", "-p", &GUEST_PORT.to_string()]),
    )?;
    let listening = (0..250).any(|_| {
        let up = guest.listening(GUEST_PORT);
        if !up {
            std::thread::sleep(Duration::from_millis(20));
        }
        up
    });
    let h2g = if listening {
        let SocketAddr::V4(to) = guest.published else {
            return Err("the published address is not IPv4".into());
        };
        run_bounded(
            Command::new("iperf3").args(strings(&[
                "-c",
                &to.ip().to_string(),
                "-p",
                &to.port().to_string(),
                "-t",
                &secs,
                "-J",
            ])),
            limit(options),
        )
        .and_then(|out| iperf_received(&out))
    } else {
        Err("iperf3 -s in the guest did not listen within 5 s".to_string())
    };
    let cpu_after = guest.helper_pid().and_then(guest::cpu_seconds);
    // Not counted in the CPU figure, which stays the TAP path's.
    if let Some(port) = guest.loopback_to_host {
        let to = [
            "-c",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-t",
            &secs,
            "-J",
        ];
        match run_bounded(&mut guest.command("iperf3", &strings(&to)), limit(options))
            .and_then(|out| iperf_received(&out))
        {
            Ok((bits, _)) => put(run, "tcp_g2h_lo_gbit_s", Some(bits / 1e9)),
            Err(e) => run
                .notes
                .push(format!("guest→host throughput through the loopback: {e}")),
        }
    }
    let mut bytes = 0.0;
    match &g2h {
        Ok((bits, b)) => {
            put(run, "tcp_g2h_gbit_s", Some(bits / 1e9));
            bytes += b;
        }
        Err(e) => run.notes.push(format!("guest→host throughput: {e}")),
    }
    match &h2g {
        Ok((bits, b)) => {
            put(run, "tcp_h2g_gbit_s", Some(bits / 1e9));
            bytes += b;
        }
        Err(e) => run.notes.push(format!("host→guest throughput: {e}")),
    }
    if let (Some(before), Some(after)) = (cpu_before, cpu_after)
        && bytes > 0.0
    {
        put(run, "cpu_s_per_gb", Some((after - before) / (bytes / 1e9)));
    }
    Ok(())
}

/// The receiver's rate (bit/s) and bytes from `iperf3 -J` output.
fn iperf_received(out: &str) -> Result<(f64, f64), String> {
    let doc: serde_json::Value = serde_json::from_str(out)
        .map_err(|_| format!("iperf3 printed no JSON: {}", guest::last_line(out)))?;
    if let Some(e) = doc.get("error").and_then(|e| e.as_str()) {
        return Err(format!("iperf3: {e}"));
    }
    let sum = &doc["end"]["sum_received"];
    match (sum["bits_per_second"].as_f64(), sum["bytes"].as_f64()) {
        (Some(bits), Some(bytes)) => Ok((bits, bytes)),
        _ => Err("iperf3's JSON has no end.sum_received".to_string()),
    }
}

fn client(
    guest: &Guest,
    options: &Options,
    task: load::ClientTask,
    port: u16,
) -> Result<serde_json::Value, String> {
    let tapir = options.dir.join("bin/tapir");
    let args = strings(&[
        "bench-client",
        task.name(),
        &SocketAddr::new(guest.server, port).to_string(),
        "--duration-ms",
        &options.duration.as_millis().to_string(),
    ]);
    let out = run_bounded(
        &mut guest.command(&tapir.to_string_lossy(), &args),
        limit(options),
    )?;
    let doc: serde_json::Value = serde_json::from_str(out.trim())
        .map_err(|_| format!("the client printed no JSON: {}", guest::last_line(&out)))?;
    match doc.get("error").and_then(|e| e.as_str()) {
        Some(e) => Err(e.to_string()),
        None => Ok(doc),
    }
}

fn rr(
    guest: &Guest,
    options: &Options,
    scenario: Scenario,
    run: &mut PathRun,
) -> Result<(), String> {
    let (task, port, prefix) = if scenario == Scenario::TcpRr {
        (load::ClientTask::TcpRr, PORTS.tcp_rr, "tcp_rr")
    } else {
        (load::ClientTask::UdpRr, PORTS.udp_rr, "udp_rr")
    };
    let cpu_before = guest.helper_pid().and_then(guest::cpu_seconds);
    let doc = client(guest, options, task, port)?;
    let cpu_after = guest.helper_pid().and_then(guest::cpu_seconds);
    let count = doc["count"].as_u64().unwrap_or(0);
    if count == 0 {
        return Err("no round trip completed".to_string());
    }
    // What the latency costs: busy polling (tapir's --busy-poll) buys it with CPU.
    if let (Scenario::TcpRr, Some(before), Some(after)) = (scenario, cpu_before, cpu_after) {
        put(
            run,
            "tcp_rr_cpu_us",
            Some((after - before) * 1e6 / count as f64),
        );
    }
    let (p50, p99) = if scenario == Scenario::TcpRr {
        ("tcp_rr_p50_us", "tcp_rr_p99_us")
    } else {
        ("udp_rr_p50_us", "udp_rr_p99_us")
    };
    put(run, p50, doc["p50_us"].as_f64());
    put(run, p99, doc["p99_us"].as_f64());
    let cdf: Vec<[f64; 2]> = doc["cdf_us"]
        .as_array()
        .map(|points| {
            points
                .iter()
                .filter_map(|p| Some([p[0].as_f64()?, p[1].as_f64()?]))
                .collect()
        })
        .unwrap_or_default();
    run.cdfs.insert(prefix, cdf);
    let errors = doc["errors"].as_u64().unwrap_or(0);
    if errors > 0 {
        run.notes
            .push(format!("{prefix}: {errors} requests lost or failed"));
    }
    Ok(())
}

fn connect_rate(guest: &Guest, options: &Options, run: &mut PathRun) -> Result<(), String> {
    let doc = client(guest, options, load::ClientTask::ConnectRate, PORTS.connect)?;
    if doc["connections"].as_u64().unwrap_or(0) == 0 {
        return Err("no connection completed".to_string());
    }
    put(run, "connect_per_s", doc["per_sec"].as_f64());
    let failures = doc["failures"].as_u64().unwrap_or(0);
    if failures > 0 {
        run.notes
            .push(format!("connect_rate: {failures} connections failed"));
    }
    Ok(())
}

/// How long the hold client may take to open its connections: 10,000 take seconds through
/// tapir or the kernel, but slirp4netns slows down with every connection it holds.
const HOLD_BUDGET: Duration = Duration::from_secs(60);

/// Opens `options.hold` connections from the guest, reads the helper's RSS while they are
/// open, then lets the client close them.
fn hold(guest: &Guest, options: &Options, run: &mut PathRun) -> Result<(), String> {
    use std::io::BufRead;
    let tapir = options.dir.join("bin/tapir");
    let args = strings(&[
        "bench-client",
        "hold",
        &SocketAddr::new(guest.server, PORTS.hold).to_string(),
        "--count",
        &options.hold.to_string(),
        "--duration-ms",
        &HOLD_BUDGET.as_millis().to_string(),
    ]);
    let mut child = guest
        .command(&tapir.to_string_lossy(), &args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot start the client: {e}"))?;
    let stdout = child.stdout.take();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        if let Some(out) = stdout {
            let _ = std::io::BufReader::new(out).read_line(&mut line);
        }
        let _ = tx.send(line);
    });
    let line = rx.recv_timeout(HOLD_BUDGET + Duration::from_secs(30));
    let outcome = match line {
        Ok(line) => match serde_json::from_str::<serde_json::Value>(line.trim()) {
            Ok(doc) => {
                let held = doc["held"].as_f64();
                put(run, "held_connections", held);
                if let Some(pid) = guest.helper_pid() {
                    // Give the helper a moment to settle after the last handshake.
                    std::thread::sleep(Duration::from_millis(300));
                    put(run, "held_rss_mib", guest::vm_mib(pid, "VmRSS:"));
                }
                if held.unwrap_or(0.0) < options.hold as f64 {
                    run.notes.push(format!(
                        "hold: only {} of {} connections opened (the client stops at 60 s or \
                         after five failed connects in a row)",
                        held.unwrap_or(0.0),
                        options.hold
                    ));
                }
                Ok(())
            }
            Err(_) => Err("the client printed no JSON".to_string()),
        },
        Err(_) => Err("the client did not report within the time limit".to_string()),
    };
    drop(child.stdin.take());
    let _ = run_exit(&mut child, Duration::from_secs(10));
    outcome
}

fn run_exit(child: &mut Child, limit: Duration) -> Option<std::process::ExitStatus> {
    let start = std::time::Instant::now();
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            return child.wait().ok();
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn start_iperf_server() -> Result<Child, String> {
    let child = Command::new("iperf3")
        .args(["-s", "-p", &IPERF_PORT.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("tcp_stream: cannot start iperf3 -s: {e}"))?;
    let up = (0..250).any(|_| {
        let up = std::net::TcpStream::connect(("127.0.0.1", IPERF_PORT)).is_ok();
        if !up {
            std::thread::sleep(Duration::from_millis(20));
        }
        up
    });
    if up {
        Ok(child)
    } else {
        Err("tcp_stream: iperf3 -s did not listen within 5 s".to_string())
    }
}

/// Why `path` cannot run here, if it cannot.
fn missing(path: PathKind) -> Option<String> {
    let tool = path.tool()?;
    if installed(tool) {
        None
    } else {
        Some(format!("{tool} is not installed"))
    }
}

pub fn installed(program: &str) -> bool {
    std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).any(|d| is_executable(&d.join(program))))
        .unwrap_or(false)
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    path.metadata()
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| s.to_string()).collect()
}

fn machine() -> String {
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .map(|s| s.trim().to_string())
        .unwrap_or_default();
    let kernel = nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_default();
    // BBR, when it is the default, paces every kernel TCP sender; it changes the figures.
    let congestion = std::fs::read_to_string("/proc/sys/net/ipv4/tcp_congestion_control")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into());
    format!("{cpus} CPUs, {model}, Linux {kernel}, TCP congestion control {congestion}")
}

fn tool_versions() -> BTreeMap<String, String> {
    let mut tools = BTreeMap::new();
    tools.insert("tapir".to_string(), env!("CARGO_PKG_VERSION").to_string());
    for (tool, flag) in [
        ("iperf3", "--version"),
        ("slirp4netns", "--version"),
        ("pasta", "--version"),
    ] {
        if !installed(tool) {
            continue;
        }
        let out =
            run_bounded(Command::new(tool).arg(flag), Duration::from_secs(5)).unwrap_or_default();
        let first = out.lines().next().unwrap_or("").trim().to_string();
        tools.insert(tool.to_string(), first);
    }
    tools
}

/// Why `tapir bench` cannot start (a path or scenario that fails only leaves a note).
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error(
        "tapir bench must run as root (it builds its own network namespaces; the rootless paths still run as uid 65534)"
    )]
    NotRoot,
    #[error("unknown path {0:?}: expected tapir, kernel, veth, slirp4netns or pasta")]
    UnknownPath(String),
    #[error("unknown scenario {0:?}: expected tcp_stream, tcp_rr, udp_rr, connect_rate or hold")]
    UnknownScenario(String),
    #[error("--duration {0} is not a number of seconds between 0.1 and 3600")]
    BadDuration(f64),
    #[error("--rounds {0} is not a whole number between 1 and 20")]
    BadRounds(u32),
    #[error("cannot draw {0}: only .svg plots are supported")]
    PlotFormat(PathBuf),
    #[error("cannot build the bench's private world: {0}")]
    Setup(String),
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

#[cfg(test)]
mod test {
    use super::*;

    fn round(g2h: f64, p50: f64, rss: f64, note: Option<&str>) -> PathRun {
        let mut run = PathRun::default();
        run.metrics.insert("tcp_g2h_gbit_s", g2h);
        run.metrics.insert("tcp_rr_p50_us", p50);
        run.metrics.insert("peak_rss_mib", rss);
        run.cdfs.insert("tcp_rr", vec![[p50, 1.0]]);
        run.notes.extend(note.map(String::from));
        run
    }

    #[test]
    fn rounds_combine_into_medians_the_highest_peak_and_the_median_round_s_curve() {
        let run = combine(vec![
            round(14.0, 62.0, 40.0, None),
            round(16.0, 47.0, 45.0, Some("udp_rr: no answer")),
            round(15.0, 49.0, 41.0, None),
        ]);
        assert_eq!(run.metrics["tcp_g2h_gbit_s"], 15.0);
        assert_eq!(run.metrics["tcp_rr_p50_us"], 49.0);
        assert_eq!(run.metrics["peak_rss_mib"], 45.0);
        assert_eq!(run.cdfs["tcp_rr"], vec![[49.0, 1.0]]);
        assert_eq!(run.notes, vec!["round 2: udp_rr: no answer".to_string()]);
        let g2h: Vec<f64> = run.rounds.iter().map(|r| r["tcp_g2h_gbit_s"]).collect();
        assert_eq!(g2h, vec![14.0, 16.0, 15.0]);
    }

    #[test]
    fn an_even_count_takes_the_middle_two_and_a_missing_figure_is_skipped() {
        let mut failed = PathRun::default();
        failed.notes.push("tcp_stream: iperf3 failed".into());
        let run = combine(vec![
            round(10.0, 50.0, 40.0, None),
            failed,
            round(14.0, 60.0, 40.0, None),
        ]);
        assert_eq!(run.metrics["tcp_g2h_gbit_s"], 12.0);
        assert_eq!(run.metrics["tcp_rr_p50_us"], 55.0);
        assert_eq!(run.rounds.len(), 3);
        assert!(run.rounds[1].is_empty());
    }

    #[test]
    fn one_round_is_left_as_it_was_measured() {
        let run = combine(vec![round(9.0, 40.0, 12.0, Some("pasta did not start"))]);
        assert_eq!(run.metrics["tcp_g2h_gbit_s"], 9.0);
        assert_eq!(run.notes, vec!["pasta did not start".to_string()]);
        assert_eq!(run.rounds.len(), 1);
    }
}
