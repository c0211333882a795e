//! `tapir bench --quick` on the tapir path alone, one second per measurement: every scenario
//! runs and the JSON report carries every figure, a ratio-ready shape and a latency CDF. (The
//! figures themselves are not judged here: CI machines are noisy, and the bench is for reading.)
//! Bad options are refused with one sentence naming the value, before anything is set up. With
//! `--rounds 2` both rounds are kept and the figure is their median.
//!
//! `tapir bench` builds its own private namespaces (net, mount, pid) and runs tapir as uid
//! 65534, so the only requirement is root and iperf3; without them this skips, and with
//! `CI=true` (where .ci/run installs iperf3) it fails instead.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;

const TAPIR: &str = env!("CARGO_BIN_EXE_tapir");

fn in_ci() -> bool {
    matches!(std::env::var("CI").as_deref(), Ok("true" | "1"))
}

/// Why this machine cannot run the bench, if it cannot.
fn cannot_run() -> Option<String> {
    if !nix::unistd::geteuid().is_root() {
        return Some("tapir bench needs root".into());
    }
    let iperf3 = std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join("iperf3").is_file()));
    (!iperf3).then(|| "iperf3 is not installed".into())
}

/// Whether the bench can run here; in CI it must.
fn runnable() -> bool {
    let Some(reason) = cannot_run() else {
        return true;
    };
    assert!(
        !in_ci(),
        "bench_smoke cannot run in CI, where .ci/run provides everything: {reason}"
    );
    eprintln!("skipped: {reason}");
    false
}

/// Runs `tapir bench ARGS --json DIR/bench.json`, which must succeed, in a fresh scratch
/// directory `DIR`; returns the directory, the table and the JSON (as text and parsed).
fn bench(name: &str, args: &[&str], limit: Duration) -> (PathBuf, String, String, Value) {
    let dir = std::env::temp_dir().join(format!("tapir-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a scratch directory");
    let json = dir.join("bench.json");
    let mut all = vec!["bench"];
    all.extend_from_slice(args);
    all.extend(["--json", json.to_str().unwrap_or_default()]);
    let (code, stdout, stderr) = tapir(&all, limit);
    assert_eq!(code, Some(0), "tapir bench failed:\n{stdout}\n{stderr}");
    let text = std::fs::read_to_string(&json).expect("the --json file");
    let doc = serde_json::from_str(&text).expect("valid JSON");
    (dir, stdout, text, doc)
}

/// Runs `tapir ARGS` to its end (at most `limit`), returning (exit code, stdout, stderr).
fn tapir(args: &[&str], limit: Duration) -> (Option<i32>, String, String) {
    let dir = std::env::temp_dir().join(format!("tapir-bench-smoke-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a scratch directory");
    // Tests run in parallel: each call gets files of its own.
    static CALLS: AtomicUsize = AtomicUsize::new(0);
    let call = CALLS.fetch_add(1, Ordering::Relaxed);
    let (out, err) = (
        dir.join(format!("out-{call}")),
        dir.join(format!("err-{call}")),
    );
    let mut child = Command::new(TAPIR)
        .args(args)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out).expect("a stdout file"))
        .stderr(std::fs::File::create(&err).expect("a stderr file"))
        .spawn()
        .expect("tapir starts");
    let start = Instant::now();
    let code = loop {
        if let Some(status) = child.try_wait().expect("waitpid") {
            break status.code();
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "tapir {} ran longer than {limit:?}; stderr: {}",
                args.join(" "),
                std::fs::read_to_string(&err).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let text = |p| std::fs::read_to_string(p).unwrap_or_default();
    (code, text(&out), text(&err))
}

#[test]
fn quick_bench_of_tapir_reports_every_figure() {
    if !runnable() {
        return;
    }
    let svg = std::env::temp_dir().join(format!("tapir-bench-smoke-{}.svg", std::process::id()));
    let (dir, stdout, text, doc) = bench(
        "bench-smoke-run",
        &[
            "--quick",
            "--paths",
            "tapir",
            "--duration",
            "1",
            "--hold",
            "200",
            "--plot",
            svg.to_str().unwrap_or_default(),
        ],
        Duration::from_secs(120),
    );
    assert!(
        stdout.contains("TCP RR p50 µs"),
        "no table on stdout:\n{stdout}"
    );
    let runs = doc["runs"].as_array().expect("a runs array");
    assert_eq!(runs.len(), 1, "{text}");
    let run = &runs[0];
    assert_eq!(run["path"], "tapir");
    assert_eq!(run["mtu"], 65520);
    assert_eq!(
        run["notes"],
        serde_json::json!([]),
        "the run left notes: {text}"
    );
    for key in [
        "tcp_g2h_gbit_s",
        "tcp_g2h_lo_gbit_s",
        "tcp_h2g_gbit_s",
        "tcp_rr_p50_us",
        "tcp_rr_p99_us",
        "tcp_rr_cpu_us",
        "udp_rr_p50_us",
        "udp_rr_p99_us",
        "connect_per_s",
        "cpu_s_per_gb",
        "peak_rss_mib",
        "held_rss_mib",
    ] {
        let v = run["metrics"][key].as_f64();
        assert!(v.is_some_and(|v| v > 0.0), "metric {key} is {v:?}: {text}");
    }
    assert_eq!(run["metrics"]["held_connections"], 200.0);
    let p50 = run["metrics"]["tcp_rr_p50_us"].as_f64().unwrap_or(0.0);
    let p99 = run["metrics"]["tcp_rr_p99_us"].as_f64().unwrap_or(0.0);
    assert!(p50 <= p99, "p50 {p50} above p99 {p99}");
    for cdf in ["tcp_rr", "udp_rr"] {
        let points = run["cdf_us"][cdf].as_array().map_or(0, Vec::len);
        assert!(points > 10, "the {cdf} CDF has {points} points");
    }
    assert_eq!(doc["options"]["paths"], serde_json::json!(["tapir"]));
    let plot = std::fs::read_to_string(&svg).expect("the --plot file");
    assert!(plot.starts_with("<svg") && plot.contains("<rect") && plot.contains("<polyline"));
    let _ = std::fs::remove_file(&svg);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn bad_options_are_refused_naming_the_value() {
    for (args, offending) in [
        (&["bench", "--paths", "tapir,vpnkit"][..], "vpnkit"),
        (&["bench", "--scenarios", "tcp_crr"], "tcp_crr"),
        (&["bench", "--plot", "out.png"], "out.png"),
        (&["bench", "--mtu", "70000"], "70000"),
        (&["bench", "--duration", "0"], "--duration 0"),
        (&["bench", "--rounds", "0"], "--rounds 0"),
        (&["bench", "--rounds", "21"], "--rounds 21"),
    ] {
        let (code, _, stderr) = tapir(args, Duration::from_secs(10));
        assert_ne!(code, Some(0), "tapir {} succeeded", args.join(" "));
        assert!(
            stderr.contains(offending),
            "tapir {}: {stderr}",
            args.join(" ")
        );
        assert_eq!(
            stderr.trim().lines().count(),
            1,
            "not one sentence: {stderr}"
        );
    }
}

#[test]
fn rounds_are_each_kept_and_the_figure_is_their_median() {
    if !runnable() {
        return;
    }
    let (dir, stdout, text, doc) = bench(
        "bench-rounds",
        &[
            "--paths",
            "tapir",
            "--scenarios",
            "tcp_rr",
            "--mtu",
            "1500",
            "--duration",
            "0.5",
            "--rounds",
            "2",
        ],
        Duration::from_secs(60),
    );
    assert!(
        stdout.contains("each figure the median of 2 rounds"),
        "{stdout}"
    );
    assert_eq!(doc["options"]["rounds"], 2);
    let run = &doc["runs"][0];
    let p50s: Vec<f64> = run["rounds"]
        .as_array()
        .expect("a rounds array")
        .iter()
        .filter_map(|r| r["tcp_rr_p50_us"].as_f64())
        .collect();
    assert_eq!(p50s.len(), 2, "{text}");
    let median = run["metrics"]["tcp_rr_p50_us"].as_f64().unwrap_or(0.0);
    assert!(
        (median - (p50s[0] + p50s[1]) / 2.0).abs() < 1e-9,
        "p50 {median} is not the median of {p50s:?}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
