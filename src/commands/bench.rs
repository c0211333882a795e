//! `tapir bench`: checks the options, moves into a private world, runs `bench::run`, reports.
//!
//! The private world: the command re-executes itself under
//! `unshare --net --mount --pid --fork --kill-child --mount-proc --propagation private`, so the
//! machine's own interfaces, routes and firewall are never in reach, every mount is private, and
//! every process the bench starts dies with it, however it ends. Inside (marked by
//! `TAPIR_BENCH_INSIDE`), it brings up `lo`, binds a resolv.conf naming 127.0.0.1 over
//! /etc/resolv.conf (nothing may query the machine's real DNS server), adds pasta's uplink (a veth pair going nowhere)
//! when pasta runs, and copies this binary where uid 65534 can run it.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::bench::{self, BenchError, Options, PathKind, Scenario, guest, load, report};
use crate::cli::{BenchArgs, BenchClientArgs};
use crate::config::check_mtu;
use crate::error::Error;

const INSIDE: &str = "TAPIR_BENCH_INSIDE";

pub fn bench(args: BenchArgs) -> Result<i32, Error> {
    let options = options(&args)?;
    if !nix::unistd::geteuid().is_root() {
        return Err(BenchError::NotRoot.into());
    }
    if std::env::var_os(INSIDE).is_none() {
        return reexec_in_private_world();
    }
    let dir = prepare_world(&options)?;
    let options = Options {
        dir: dir.clone(),
        ..options
    };
    let outcome = bench::run(options).map_err(BenchError::Setup);
    let _ = std::fs::remove_dir_all(&dir);
    let results = outcome?;
    print!("{}", report::table(&results));
    if let Some(path) = &args.json {
        let text = serde_json::to_string_pretty(&report::to_json(&results)).unwrap_or_default();
        write(path, &text)?;
    }
    if let Some(path) = &args.plot {
        write(path, &report::svg(&results))?;
    }
    Ok(0)
}

/// The guest side: runs one load-generator task and prints its JSON line.
pub fn client(args: BenchClientArgs) -> Result<i32, Error> {
    let task = load::ClientTask::from_name(&args.task)
        .ok_or_else(|| BenchError::UnknownScenario(args.task.clone()))?;
    let doc = load::run_client(
        task,
        args.server,
        Duration::from_millis(args.duration_ms),
        args.count,
    );
    if !doc.is_null() {
        println!("{doc}");
    }
    Ok(0)
}

fn options(args: &BenchArgs) -> Result<Options, Error> {
    let paths = if args.paths.is_empty() {
        PathKind::ALL.to_vec()
    } else {
        let mut paths = Vec::new();
        for name in &args.paths {
            let path = PathKind::from_name(name.trim())
                .ok_or_else(|| BenchError::UnknownPath(name.clone()))?;
            if !paths.contains(&path) {
                paths.push(path);
            }
        }
        paths
    };
    let scenarios = if args.scenarios.is_empty() {
        Scenario::ALL.to_vec()
    } else {
        let mut scenarios = Vec::new();
        for name in &args.scenarios {
            let s = Scenario::from_name(name.trim())
                .ok_or_else(|| BenchError::UnknownScenario(name.clone()))?;
            if !scenarios.contains(&s) {
                scenarios.push(s);
            }
        }
        scenarios
    };
    let mtus = match (args.mtu.is_empty(), args.quick) {
        (false, _) => args.mtu.clone(),
        (true, true) => vec![65520],
        (true, false) => vec![65520, 1500],
    };
    for &mtu in &mtus {
        check_mtu(mtu)?;
    }
    let secs = args.duration.unwrap_or(if args.quick { 1.0 } else { 5.0 });
    if !(0.1..=3600.0).contains(&secs) {
        return Err(BenchError::BadDuration(secs).into());
    }
    let rounds = args.rounds.unwrap_or(1);
    if !(1..=20).contains(&rounds) {
        return Err(BenchError::BadRounds(rounds).into());
    }
    if let Some(plot) = &args.plot
        && plot.extension().and_then(|e| e.to_str()) != Some("svg")
    {
        return Err(BenchError::PlotFormat(plot.clone()).into());
    }
    Ok(Options {
        paths,
        scenarios,
        mtus,
        duration: Duration::from_secs_f64(secs),
        hold: args.hold.unwrap_or(if args.quick { 1_000 } else { 10_000 }),
        rounds,
        dir: PathBuf::new(),
    })
}

fn reexec_in_private_world() -> Result<i32, Error> {
    let exe = std::env::current_exe()
        .map_err(|e| BenchError::Setup(format!("cannot find tapir's own binary: {e}")))?;
    let status = Command::new("unshare")
        .args([
            "--net",
            "--mount",
            "--pid",
            "--fork",
            "--kill-child",
            "--mount-proc",
            "--propagation",
            "private",
            "--",
        ])
        .arg(exe)
        .args(std::env::args_os().skip(1))
        // The pid seen outside names the bench's directory: inside, every bench is pid 1.
        .env(INSIDE, std::process::id().to_string())
        .status()
        .map_err(|e| BenchError::Setup(format!("cannot run unshare: {e}")))?;
    Ok(status.code().unwrap_or(125))
}

/// Sets up the private world (see the module header) and returns the bench's directory.
fn prepare_world(options: &Options) -> Result<PathBuf, BenchError> {
    let setup = BenchError::Setup;
    guest::ip(&["link", "set", "lo", "up"]).map_err(setup)?;
    let outer = std::env::var(INSIDE).unwrap_or_default();
    let dir = std::env::temp_dir().join(format!("tapir-bench.{outer}"));
    make_dir(&dir, 0o755)?;
    make_dir(&dir.join("bin"), 0o755)?;
    make_dir(&dir.join("run"), 0o777)?;
    let exe = std::env::current_exe()
        .map_err(|e| setup(format!("cannot find tapir's own binary: {e}")))?;
    let tapir = dir.join("bin/tapir");
    std::fs::copy(&exe, &tapir)
        .and_then(|_| std::fs::set_permissions(&tapir, std::fs::Permissions::from_mode(0o755)))
        .map_err(|e| {
            setup(format!(
                "cannot copy {} to {}: {e}",
                exe.display(),
                tapir.display()
            ))
        })?;
    let resolv = dir.join("resolv.conf");
    std::fs::write(&resolv, "nameserver 127.0.0.1\n")
        .and_then(|()| std::fs::set_permissions(&resolv, std::fs::Permissions::from_mode(0o644)))
        .map_err(|e| setup(format!("cannot write {}: {e}", resolv.display())))?;
    nix::mount::mount(
        Some(&resolv),
        "/etc/resolv.conf",
        None::<&str>,
        nix::mount::MsFlags::MS_BIND,
        None::<&str>,
    )
    .map_err(|e| {
        setup(format!(
            "cannot bind {} over /etc/resolv.conf: {e}",
            resolv.display()
        ))
    })?;
    if options.paths.contains(&PathKind::Pasta) && bench::installed("pasta") {
        let gateway = guest::UPLINK_GATEWAY.to_string();
        for args in [
            &[
                "link",
                "add",
                "tapir-uplink",
                "type",
                "veth",
                "peer",
                "name",
                "tapir-uplink1",
            ][..],
            &["addr", "add", guest::UPLINK_ADDR, "dev", "tapir-uplink"],
            &["link", "set", "tapir-uplink1", "up"],
            &["link", "set", "tapir-uplink", "up"],
            &["route", "add", "default", "via", &gateway],
        ] {
            guest::ip(args).map_err(setup)?;
        }
    }
    Ok(dir)
}

fn make_dir(path: &Path, mode: u32) -> Result<(), BenchError> {
    std::fs::create_dir_all(path)
        .and_then(|()| std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)))
        .map_err(|e| BenchError::Setup(format!("cannot make {}: {e}", path.display())))
}

fn write(path: &Path, text: &str) -> Result<(), BenchError> {
    std::fs::write(path, text).map_err(|source| BenchError::Write {
        path: path.to_path_buf(),
        source,
    })
}
