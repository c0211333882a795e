//! The hermetic world every integration test builds for itself.
//!
//! Theory of operation. A test is a bash *scenario*: a short body written with the verbs of
//! `prelude.sh` (`start`, `wait_port`, `guest`, `in_remote`, `check_eq`, ...), in the spirit of
//! passt's host/ns/check tests. [`World::run`] writes the scenario into a fresh directory (`$W`,
//! under /tmp), together with `actors.py` (the servers and clients the scenarios use) and a copy
//! of the tapir binary that uid 65534 can execute, and runs it as root under
//! `unshare --net --mount --pid --fork --mount-proc --propagation private --kill-child`, so that
//! "the host" of the scenario is a network namespace of its own, every mount it makes is private,
//! and every process it starts dies with it. tapir itself (or the slirp4netns it is compared
//! with) always runs as uid 65534: rootless means rootless.
//!
//! Invariants:
//! - A scenario only reaches loopback, the guest, and the "remote host" namespace it created.
//!   DNS goes to a fake server on 127.0.0.1 named by a resolv.conf bound over /etc in the
//!   scenario's mount namespace only.
//! - Every scenario is bounded in time: each guest command by `guest_timeout`, the whole
//!   scenario by `deadline`, after which it is killed (with everything it started) and reported.
//! - A failed scenario panics with its body, exit status, stdout, stderr, the trace of the
//!   commands it ran and the tail of every server's log, and its directory is kept.
//! - A test that cannot run here (not root, a missing tool, user namespaces disabled) prints a
//!   skip reason and passes; with `CI=true` it fails instead, because `.ci/run` installs
//!   everything. Tests against slirp4netns, which only prove the harness, always skip without it.
//!
//! Compatibility worlds ([`World::slirp4netns_compat`]) have no `guest` verb: their scenarios
//! drive a slirp4netns-compatible binary themselves, raw or through the real clients (rootlesskit,
//! rootless podman), and [`Impl`] chooses that binary: Debian's slirp4netns, which proves the
//! scenario, or tapir installed under the name `slirp4netns`. Such a world also gives uid 65534
//! subordinate ids (100000:65536) through private copies of /etc/subuid and /etc/subgid bound in
//! the scenario's mount namespace, which newuidmap/newgidmap (used by rootlesskit and podman) read.
//!
//! Environment: `CI=true` (skips are failures), `TAPIR_TEST_KEEP=1` (keep every world
//! directory), `TAPIR_TEST_TMPDIR` (where world directories go; default /tmp: each of its
//! parents must be searchable by uid 65534).

#![allow(dead_code)] // Each test crate uses its own part of the harness.

use std::fmt::Write as _;
use std::fs;
use std::io::Write as _;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread;
use std::time::{Duration, Instant};

const PRELUDE: &str = include_str!("prelude.sh");
const ACTORS: &str = include_str!("actors.py");

/// Programs the prelude itself uses; a test adds its own with [`World::needs`].
const BASE_TOOLS: &[&str] = &[
    "bash", "unshare", "nsenter", "setpriv", "ip", "ss", "mount", "mknod", "sysctl", "timeout",
    "sed", "grep",
];

/// The PATH scenarios run with (root's may hold directories uid 65534 cannot search).
const SCENARIO_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The rootless network helper a scenario's `guest` runs under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Guest {
    /// `tapir run [TAPIR_ARGS] -- CMD`, one tapir per `guest` call.
    Tapir,
    /// Debian's slirp4netns serving one guest namespace for the whole scenario: the reference
    /// that proves a scenario (and the harness) right while tapir is being written.
    Slirp4netns,
    /// No `guest` verb: the scenario drives a slirp4netns-compatible binary itself (`$S4NN`).
    Compat(Impl),
}

/// Which slirp4netns a compatibility world hands to its clients, as `$S4NN` (and, behind a
/// wrapper that logs each argv, as `$S4NN_LOGGED`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Impl {
    /// Debian's /usr/bin/slirp4netns: the real thing, which proves the scenario right.
    Debian,
    /// The tapir built with these tests, behind a symlink named `slirp4netns`, which is how it
    /// is installed as a drop-in.
    Tapir,
}

/// One scenario's world: what it needs and how long it may take.
pub struct World {
    name: String,
    guest: Guest,
    remote: bool,
    egress: bool,
    tools: Vec<&'static str>,
    deadline: Duration,
    guest_timeout: Duration,
}

/// How a scenario ended, with everything needed to tell why.
pub struct Outcome {
    pub name: String,
    /// Exit status of the scenario; `None` when it was killed at its deadline.
    pub status: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    pub elapsed: Duration,
    body: String,
    deadline: Duration,
    dir: PathBuf,
}

impl World {
    /// A world whose guest runs under the tapir binary built with these tests.
    pub fn tapir(name: &str) -> World {
        World::new(name, Guest::Tapir)
    }

    /// A world whose guest runs under Debian's slirp4netns (see [`Guest::Slirp4netns`]).
    pub fn slirp4netns(name: &str) -> World {
        World::new(name, Guest::Slirp4netns)
    }

    /// A world for scenarios that run a slirp4netns-compatible binary, `implementation`, the
    /// way its real clients do (see [`Guest::Compat`] and [`Impl`]).
    pub fn slirp4netns_compat(name: &str, implementation: Impl) -> World {
        // getent and cut name uid 65534 in the private /etc/subuid; pgrep finds sleepers.
        World::new(name, Guest::Compat(implementation)).needs(&["getent", "cut", "pgrep"])
    }

    fn new(name: &str, guest: Guest) -> World {
        World {
            name: name.to_string(),
            guest,
            remote: false,
            egress: false,
            tools: Vec::new(),
            deadline: Duration::from_secs(60),
            guest_timeout: Duration::from_secs(30),
        }
    }

    /// Adds the remote host: a network namespace at 198.51.100.10, reached from the host
    /// (198.51.100.1) over a veth.
    pub fn with_remote(mut self) -> World {
        self.remote = true;
        self
    }

    /// Makes the remote host "the world" of the egress-policy tests: besides 198.51.100.10 (and
    /// 2001:db8:100::10), a private LAN (10.1.2.3, 10.1.2.4, fd42::3, fd42::4) and a metadata
    /// service (169.254.169.254), each on a veth of its own from the host, all serving TCP on
    /// 22, 80 and 443, a TCP echo on 7, UDP echo on 7 and 22, and ping; and a server on the
    /// host's own port 8088. See section 2b of prelude.sh. Implies [`World::with_remote`].
    pub fn with_egress_world(mut self) -> World {
        self.remote = true;
        self.egress = true;
        self.tools.push("ping");
        self
    }

    /// Programs the scenario body uses beyond the prelude's own.
    pub fn needs(mut self, tools: &[&'static str]) -> World {
        self.tools.extend_from_slice(tools);
        self
    }

    /// Limits for the whole scenario and for each guest command (defaults: 60 s and 30 s).
    pub fn time_limits(mut self, deadline_secs: u64, guest_secs: u64) -> World {
        self.deadline = Duration::from_secs(deadline_secs);
        self.guest_timeout = Duration::from_secs(guest_secs);
        self
    }

    /// Runs the scenario and panics with a full report unless it exits 0.
    pub fn run_ok(&self, body: &str) {
        if let Some(outcome) = self.run(body) {
            outcome.assert_success();
        }
    }

    /// Runs the scenario; `None` when this machine cannot (the reason has been printed).
    pub fn run(&self, body: &str) -> Option<Outcome> {
        // The slirp4netns references only prove the harness: without slirp4netns they skip,
        // even in CI.
        let reference = matches!(self.guest, Guest::Slirp4netns | Guest::Compat(Impl::Debian));
        if reference && find_tool("slirp4netns").is_none() {
            say_skipped(&self.name, "slirp4netns is not installed");
            return None;
        }
        if let Some(reason) = self.cannot_run() {
            if matches!(std::env::var("CI").as_deref(), Ok("true" | "1")) {
                panic!(
                    "{} cannot run in CI, where .ci/run provides everything: {reason}",
                    self.name
                );
            }
            say_skipped(&self.name, &reason);
            return None;
        }
        let dir = self
            .prepare(body)
            .unwrap_or_else(|e| panic!("{}: cannot prepare the world directory: {e}", self.name));
        Some(self.execute(body, dir))
    }

    fn cannot_run(&self) -> Option<String> {
        let euid = fs::metadata("/proc/self")
            .map(|m| m.uid())
            .unwrap_or(u32::MAX);
        if euid != 0 {
            return Some(format!(
                "needs root (to create namespaces and run tapir as uid 65534), running as uid {euid}"
            ));
        }
        if !Path::new("/usr/bin/python3").exists() {
            return Some("/usr/bin/python3 is missing (apt-get install python3)".to_string());
        }
        if !Path::new("/dev/net/tun").exists() {
            return Some("/dev/net/tun is missing (no tun driver)".to_string());
        }
        let missing: Vec<&str> = BASE_TOOLS
            .iter()
            .chain(&self.tools)
            .copied()
            .filter(|tool| find_tool(tool).is_none())
            .collect();
        if !missing.is_empty() {
            return Some(format!(
                "missing tools: {} (see .ci/run)",
                missing.join(", ")
            ));
        }
        user_namespaces_disabled()
    }

    /// Creates `$W` with the scenario script, actors.py and (for tapir) the binary.
    fn prepare(&self, body: &str) -> std::io::Result<PathBuf> {
        static WORLDS: AtomicU32 = AtomicU32::new(0);
        let base = std::env::var("TAPIR_TEST_TMPDIR").unwrap_or_else(|_| "/tmp".to_string());
        let dir = PathBuf::from(base).join(format!(
            "tapir-test-{}-{}-{}",
            self.name,
            std::process::id(),
            WORLDS.fetch_add(1, Ordering::Relaxed)
        ));
        assert!(!dir.to_string_lossy().contains('\''), "quote in {dir:?}");
        if dir.exists() {
            fs::remove_dir_all(&dir)?;
        }
        for (sub, mode) in [("", 0o755), ("bin", 0o755), ("log", 0o755), ("tmp", 0o1777)] {
            let path = dir.join(sub);
            fs::create_dir_all(&path)?;
            fs::set_permissions(&path, fs::Permissions::from_mode(mode))?;
        }
        let tapir = dir.join("bin/tapir");
        if matches!(self.guest, Guest::Tapir | Guest::Compat(Impl::Tapir)) {
            fs::copy(env!("CARGO_BIN_EXE_tapir"), &tapir)?;
            fs::set_permissions(&tapir, fs::Permissions::from_mode(0o755))?;
        }
        let actors = dir.join("actors.py");
        fs::write(&actors, ACTORS)?;
        fs::set_permissions(&actors, fs::Permissions::from_mode(0o644))?;
        fs::write(dir.join("scenario.sh"), self.script(&dir, &tapir, body))?;
        Ok(dir)
    }

    fn script(&self, dir: &Path, tapir: &Path, body: &str) -> String {
        let header = format!(
            "#!/bin/bash\n# Scenario {name}, written by tests/common/mod.rs.\n\
             W='{w}'\nTAPIR='{tapir}'\nGUEST_KIND={kind}\nS4NN_IMPL={implementation}\n\
             REMOTE={remote}\nEGRESS_WORLD={egress}\nGUEST_TIMEOUT={timeout}\n",
            name = self.name,
            w = dir.display(),
            tapir = tapir.display(),
            kind = match self.guest {
                Guest::Tapir => "tapir",
                Guest::Slirp4netns => "slirp4netns",
                Guest::Compat(_) => "compat",
            },
            implementation = match self.guest {
                Guest::Compat(Impl::Debian) => "debian",
                Guest::Compat(Impl::Tapir) => "tapir",
                Guest::Tapir | Guest::Slirp4netns => "none",
            },
            remote = u8::from(self.remote),
            egress = u8::from(self.egress),
            timeout = self.guest_timeout.as_secs(),
        );
        // BODY_LINE is the line before the body, so that LINENO - BODY_LINE is a body line.
        let body_line = header.lines().count() + 1 + PRELUDE.lines().count() + 1;
        format!("{header}BODY_LINE={body_line}\n{PRELUDE}set -x\n{body}\n")
    }

    fn execute(&self, body: &str, dir: PathBuf) -> Outcome {
        let open = |name: &str| {
            fs::File::create(dir.join(name))
                .unwrap_or_else(|e| panic!("{}: cannot create {name}: {e}", self.name))
        };
        let started = Instant::now();
        let mut child = Command::new("unshare")
            .args(["--net", "--mount", "--pid", "--fork", "--mount-proc"])
            .args(["--propagation", "private", "--kill-child", "--", "bash"])
            .arg(dir.join("scenario.sh"))
            .env("PATH", SCENARIO_PATH)
            .stdin(Stdio::null())
            .stdout(open("stdout"))
            .stderr(open("stderr"))
            .spawn()
            .unwrap_or_else(|e| panic!("{}: cannot start unshare: {e}", self.name));
        let status = loop {
            match child.try_wait() {
                Ok(Some(status)) => {
                    break Some(
                        status
                            .code()
                            .unwrap_or_else(|| 128 + status.signal().unwrap_or(0)),
                    );
                }
                Ok(None) if started.elapsed() < self.deadline => {
                    thread::sleep(Duration::from_millis(20))
                }
                // Past the deadline (or unwaitable): killing unshare kills the scenario's PID
                // namespace (--kill-child), and with it everything the scenario started.
                _ => {
                    let _ = child.kill();
                    let _ = child.wait();
                    break None;
                }
            }
        };
        let read = |name: &str| fs::read_to_string(dir.join(name)).unwrap_or_default();
        Outcome {
            name: self.name.clone(),
            status,
            stdout: read("stdout"),
            stderr: read("stderr"),
            elapsed: started.elapsed(),
            body: body.to_string(),
            deadline: self.deadline,
            dir,
        }
    }
}

impl Outcome {
    pub fn success(&self) -> bool {
        self.status == Some(0)
    }

    /// Panics with [`Outcome::report`] unless the scenario exited 0; removes its directory if it
    /// did (unless `TAPIR_TEST_KEEP` is set).
    pub fn assert_success(self) {
        if !self.success() {
            panic!("{}", self.report());
        }
        if std::env::var_os("TAPIR_TEST_KEEP").is_none() {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }

    /// Everything that tells why a scenario failed: how it ended, its body with line numbers
    /// (the FAILED lines on stderr name them), its output, trace and server logs.
    pub fn report(&self) -> String {
        let mut r = String::new();
        let ending = match self.status {
            Some(code) => format!("exited with status {code}"),
            None => format!("was killed at its {} s deadline", self.deadline.as_secs()),
        };
        let _ = writeln!(
            r,
            "\nscenario `{}` {ending} after {:.1} s\n",
            self.name,
            self.elapsed.as_secs_f64()
        );
        let _ = writeln!(r, "--- scenario body ---");
        for (i, line) in self.body.trim_end().lines().enumerate() {
            let _ = writeln!(r, "{:4}  {line}", i + 1);
        }
        section(&mut r, "stderr", &self.stderr, 60);
        section(&mut r, "stdout", &self.stdout, 40);
        let trace = fs::read_to_string(self.dir.join("trace")).unwrap_or_default();
        section(
            &mut r,
            "trace (last commands; `verb N` = line N)",
            &trace,
            40,
        );
        let mut logs: Vec<PathBuf> = fs::read_dir(self.dir.join("log"))
            .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect())
            .unwrap_or_default();
        logs.sort();
        for log in logs {
            let text = fs::read_to_string(&log).unwrap_or_default();
            let title = format!(
                "log/{}",
                log.file_name().unwrap_or_default().to_string_lossy()
            );
            section(&mut r, &title, &text, 20);
        }
        let _ = writeln!(r, "--- world kept at {} ---", self.dir.display());
        r
    }
}

/// Prints a skip past the test harness's output capture, so that it is seen, not just passed.
fn say_skipped(name: &str, reason: &str) {
    let _ = writeln!(std::io::stderr(), "SKIPPED {name}: {reason}");
}

/// Appends the last `max` lines of `text` under a title.
fn section(report: &mut String, title: &str, text: &str, max: usize) {
    let lines: Vec<&str> = text.trim_end().lines().collect();
    let skipped = lines.len().saturating_sub(max);
    let _ = writeln!(report, "--- {title} ---");
    if lines.is_empty() {
        let _ = writeln!(report, "(empty)");
    }
    if skipped > 0 {
        let _ = writeln!(report, "({skipped} earlier lines not shown)");
    }
    for line in &lines[skipped..] {
        let _ = writeln!(report, "{line}");
    }
}

/// The path of `tool` on the scenarios' PATH, if it is there and executable.
pub fn find_tool(tool: &str) -> Option<PathBuf> {
    SCENARIO_PATH
        .split(':')
        .map(|dir| Path::new(dir).join(tool))
        .find(|path| {
            fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

/// Why uid 65534 cannot create a user namespace here, if it cannot.
fn user_namespaces_disabled() -> Option<String> {
    let read = |path: &str| fs::read_to_string(path).ok().map(|s| s.trim().to_string());
    if read("/proc/sys/user/max_user_namespaces").as_deref() == Some("0") {
        return Some("user namespaces are disabled (user.max_user_namespaces = 0)".to_string());
    }
    if read("/proc/sys/kernel/unprivileged_userns_clone").is_some_and(|v| v == "0") {
        return Some(
            "unprivileged user namespaces are disabled (kernel.unprivileged_userns_clone = 0)"
                .to_string(),
        );
    }
    if read("/proc/sys/kernel/apparmor_restrict_unprivileged_userns").is_some_and(|v| v == "1") {
        return Some(
            "AppArmor restricts unprivileged user namespaces \
             (kernel.apparmor_restrict_unprivileged_userns = 1)"
                .to_string(),
        );
    }
    None
}
