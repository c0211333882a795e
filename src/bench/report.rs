//! The bench's report: a table with ratios, JSON, and an SVG plot (pure: results in, text out).
//!
//! Ratios compare a path with slirp4netns and with the kernel path *at the same MTU, in the same
//! run*: absolute figures depend on the machine, ratios much less. A ratio is "this path's
//! figure / the reference's", for every metric, so for latency, CPU and memory below 1 is
//! better and for throughput and rates above 1 is.

use std::fmt::Write as _;

use serde_json::json;

use super::{PathKind, PathRun, Results};

/// One column of the report.
pub struct Metric {
    pub key: &'static str,
    pub label: &'static str,
    pub higher_is_better: bool,
}

pub const METRICS: &[Metric] = &[
    Metric {
        key: "tcp_g2h_gbit_s",
        label: "TCP guest→host Gbit/s",
        higher_is_better: true,
    },
    Metric {
        key: "tcp_g2h_lo_gbit_s",
        label: "TCP guest→host via the guest's loopback (-T) Gbit/s",
        higher_is_better: true,
    },
    Metric {
        key: "tcp_h2g_gbit_s",
        label: "TCP host→guest Gbit/s",
        higher_is_better: true,
    },
    Metric {
        key: "tcp_rr_p50_us",
        label: "TCP RR p50 µs",
        higher_is_better: false,
    },
    Metric {
        key: "tcp_rr_p99_us",
        label: "TCP RR p99 µs",
        higher_is_better: false,
    },
    Metric {
        key: "tcp_rr_cpu_us",
        label: "helper CPU µs per TCP round trip",
        higher_is_better: false,
    },
    Metric {
        key: "udp_rr_p50_us",
        label: "UDP RR p50 µs",
        higher_is_better: false,
    },
    Metric {
        key: "udp_rr_p99_us",
        label: "UDP RR p99 µs",
        higher_is_better: false,
    },
    Metric {
        key: "connect_per_s",
        label: "TCP connections/s",
        higher_is_better: true,
    },
    Metric {
        key: "cpu_s_per_gb",
        label: "helper CPU s/GB",
        higher_is_better: false,
    },
    Metric {
        key: "peak_rss_mib",
        label: "helper peak RSS MiB",
        higher_is_better: false,
    },
    Metric {
        key: "held_connections",
        label: "connections held",
        higher_is_better: true,
    },
    Metric {
        key: "held_rss_mib",
        label: "RSS while held MiB",
        higher_is_better: false,
    },
];

/// The references every other path is compared with.
const REFERENCES: [PathKind; 2] = [PathKind::Slirp4netns, PathKind::Kernel];

fn ratio(
    results: &Results,
    path: PathKind,
    mtu: u32,
    key: &str,
    reference: PathKind,
) -> Option<f64> {
    if path == reference {
        return None;
    }
    let value = results.runs.get(&(path, mtu))?.metrics.get(key)?;
    let base = results.runs.get(&(reference, mtu))?.metrics.get(key)?;
    (*base > 0.0).then(|| value / base)
}

fn figure(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

/// The runs by MTU, then path, in the order the options gave them.
fn in_order(results: &Results) -> Vec<(PathKind, u32, &PathRun)> {
    let mut runs = Vec::new();
    for &mtu in &results.options.mtus {
        for &path in &results.options.paths {
            if let Some(run) = results.runs.get(&(path, mtu)) {
                runs.push((path, mtu, run));
            }
        }
    }
    runs
}

/// The human-readable table: one block per metric, one line per MTU and path.
pub fn table(results: &Results) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "machine: {}", results.machine);
    for (tool, version) in &results.tools {
        let _ = writeln!(out, "  {tool}: {version}");
    }
    let rounds = match results.options.rounds {
        1 => String::new(),
        n => format!(", each figure the median of {n} rounds"),
    };
    let _ = writeln!(
        out,
        "{} s per measurement{rounds}; ratios: this path / slirp4netns and / kernel, same MTU, this run",
        results.options.duration.as_secs_f64()
    );
    for path in results.options.paths.iter() {
        let _ = writeln!(out, "  {:<12} {}", path.name(), path.description());
    }
    for (path, reason) in &results.skipped {
        let _ = writeln!(out, "  skipped {}: {reason}", path.name());
    }
    for metric in METRICS {
        let measured = results
            .runs
            .values()
            .any(|run| run.metrics.contains_key(metric.key));
        if !measured {
            continue;
        }
        let better = if metric.higher_is_better {
            "higher"
        } else {
            "lower"
        };
        let _ = writeln!(out, "\n{} ({better} is better)", metric.label);
        let _ = writeln!(
            out,
            "  {:>6}  {:<12} {:>10}  {:>14}  {:>9}",
            "MTU", "path", "value", "vs slirp4netns", "vs kernel"
        );
        for (path, mtu, run) in in_order(results) {
            let Some(value) = run.metrics.get(metric.key) else {
                continue;
            };
            let cell = |reference| {
                ratio(results, path, mtu, metric.key, reference)
                    .map_or_else(|| "-".to_string(), |r| format!("{r:.2}×"))
            };
            let _ = writeln!(
                out,
                "  {mtu:>6}  {:<12} {:>10}  {:>14}  {:>9}",
                path.name(),
                figure(*value),
                cell(REFERENCES[0]),
                cell(REFERENCES[1])
            );
        }
    }
    let notes: Vec<String> = in_order(results)
        .into_iter()
        .flat_map(|(path, mtu, run)| {
            run.notes
                .iter()
                .map(move |n| format!("  {} at MTU {mtu}: {n}", path.name()))
        })
        .collect();
    if !notes.is_empty() {
        let _ = writeln!(out, "\nnotes:");
        for n in notes {
            let _ = writeln!(out, "{n}");
        }
    }
    out
}

/// The whole run as JSON: options, machine, every figure, ratios and the latency CDFs.
pub fn to_json(results: &Results) -> serde_json::Value {
    let runs: Vec<serde_json::Value> = results
        .runs
        .iter()
        .map(|(&(path, mtu), run)| run_json(results, path, mtu, run))
        .collect();
    json!({
        "tapir_bench": 1,
        "machine": results.machine,
        "tools": results.tools,
        "options": {
            "paths": results.options.paths.iter().map(|p| p.name()).collect::<Vec<_>>(),
            "scenarios": results.options.scenarios.iter().map(|s| s.name()).collect::<Vec<_>>(),
            "mtus": results.options.mtus,
            "duration_s": results.options.duration.as_secs_f64(),
            "hold": results.options.hold,
            "rounds": results.options.rounds,
        },
        "paths": PathKind::ALL.iter().map(|p| json!({"name": p.name(), "description": p.description()})).collect::<Vec<_>>(),
        "skipped": results.skipped.iter().map(|(p, r)| json!({"path": p.name(), "reason": r})).collect::<Vec<_>>(),
        "runs": runs,
    })
}

fn run_json(results: &Results, path: PathKind, mtu: u32, run: &PathRun) -> serde_json::Value {
    let mut ratios = serde_json::Map::new();
    for reference in REFERENCES {
        let mut by_metric = serde_json::Map::new();
        for metric in METRICS {
            if let Some(r) = ratio(results, path, mtu, metric.key, reference) {
                by_metric.insert(metric.key.to_string(), json!(r));
            }
        }
        if !by_metric.is_empty() {
            ratios.insert(format!("vs_{}", reference.name()), by_metric.into());
        }
    }
    json!({
        "path": path.name(),
        "mtu": mtu,
        "metrics": run.metrics,
        "ratios": ratios,
        "cdf_us": run.cdfs,
        "notes": run.notes,
        "rounds": run.rounds,
    })
}

const COLORS: [&str; 5] = ["#1b9e77", "#7570b3", "#66a61e", "#d95f02", "#e7298a"];

fn color(path: PathKind) -> &'static str {
    COLORS[PathKind::ALL.iter().position(|p| *p == path).unwrap_or(0)]
}

/// An SVG with throughput bars (each MTU and direction, a bar per path) on the left and the
/// TCP and UDP request/response latency CDFs (log-scale µs) on the right.
pub fn svg(results: &Results) -> String {
    let (w, h) = (1100.0, 460.0);
    let mut out = String::new();
    let _ = writeln!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(out, r#"<rect width="{w}" height="{h}" fill="white"/>"#);
    let _ = writeln!(
        out,
        r#"<text x="10" y="18" font-size="13">tapir bench — {}</text>"#,
        escape(&results.machine)
    );
    bars(&mut out, results, (60.0, 50.0, 460.0, 340.0));
    cdf(&mut out, results, (620.0, 50.0, 440.0, 340.0));
    let mut x = 60.0;
    for path in paths_with_runs(results) {
        let _ = writeln!(
            out,
            r#"<rect x="{x}" y="430" width="12" height="12" fill="{}"/><text x="{}" y="441">{}</text>"#,
            color(path),
            x + 16.0,
            path.name()
        );
        x += 130.0;
    }
    out.push_str("</svg>\n");
    out
}

fn paths_with_runs(results: &Results) -> Vec<PathKind> {
    let mut paths: Vec<PathKind> = results.runs.keys().map(|(p, _)| *p).collect();
    paths.dedup();
    paths.sort();
    paths.dedup();
    paths
}

fn bars(out: &mut String, results: &Results, (x0, y0, w, h): (f64, f64, f64, f64)) {
    let paths = paths_with_runs(results);
    let mut groups = Vec::new();
    for &mtu in &results.options.mtus {
        for (key, dir) in [("tcp_g2h_gbit_s", "g→h"), ("tcp_h2g_gbit_s", "h→g")] {
            groups.push((format!("{dir} {mtu}"), mtu, key));
        }
    }
    let max = results
        .runs
        .values()
        .flat_map(|r| ["tcp_g2h_gbit_s", "tcp_h2g_gbit_s"].map(|k| r.metrics.get(k).copied()))
        .flatten()
        .fold(0.0_f64, f64::max);
    let _ = writeln!(
        out,
        r#"<text x="{x0}" y="{}">TCP throughput, Gbit/s (iperf3, receiver)</text>"#,
        y0 - 8.0
    );
    axes(out, (x0, y0, w, h));
    if max <= 0.0 || paths.is_empty() {
        return;
    }
    let top = nice_ceiling(max);
    for i in 0..=4 {
        let v = top * f64::from(i) / 4.0;
        let y = y0 + h - h * v / top;
        grid_row(out, x0, w, y, &figure(v));
    }
    let group_w = w / groups.len() as f64;
    let bar_w = group_w * 0.8 / paths.len() as f64;
    for (g, (label, mtu, key)) in groups.iter().enumerate() {
        let gx = x0 + group_w * g as f64 + group_w * 0.1;
        for (i, &path) in paths.iter().enumerate() {
            let Some(v) = results
                .runs
                .get(&(path, *mtu))
                .and_then(|r| r.metrics.get(*key))
            else {
                continue;
            };
            let bh = h * v / top;
            let _ = writeln!(
                out,
                r#"<rect x="{:.1}" y="{:.1}" width="{:.1}" height="{bh:.1}" fill="{}"><title>{} {label}: {}</title></rect>"#,
                gx + bar_w * i as f64,
                y0 + h - bh,
                bar_w * 0.9,
                color(path),
                path.name(),
                figure(*v)
            );
        }
        let _ = writeln!(
            out,
            r#"<text x="{:.1}" y="{}" text-anchor="middle">{label}</text>"#,
            gx + group_w * 0.4,
            y0 + h + 16.0
        );
    }
}

fn cdf(out: &mut String, results: &Results, (x0, y0, w, h): (f64, f64, f64, f64)) {
    let mtu = results.options.mtus.first().copied().unwrap_or(0);
    let _ = writeln!(
        out,
        r#"<text x="{x0}" y="{}">request/response latency CDF, µs (log), MTU {mtu}: TCP solid, UDP dashed</text>"#,
        y0 - 8.0
    );
    axes(out, (x0, y0, w, h));
    let curves: Vec<(PathKind, &str, &Vec<[f64; 2]>)> = results
        .runs
        .iter()
        .filter(|((_, m), _)| *m == mtu)
        .flat_map(|(&(path, _), run)| run.cdfs.iter().map(move |(k, v)| (path, *k, v)))
        .filter(|(_, _, v)| !v.is_empty())
        .collect();
    let values = curves.iter().flat_map(|(_, _, v)| v.iter().map(|p| p[0]));
    let (lo, hi) = values.fold((f64::MAX, 0.0_f64), |(lo, hi), v| (lo.min(v), hi.max(v)));
    if curves.is_empty() || lo <= 0.0 {
        return;
    }
    let (lo, hi) = (
        10f64.powf(lo.log10().floor()),
        10f64.powf(hi.log10().ceil()),
    );
    let span = (hi.log10() - lo.log10()).max(1.0);
    let x_of = |v: f64| x0 + w * (v.log10() - lo.log10()) / span;
    let mut decade = lo;
    while decade <= hi * 1.001 {
        let x = x_of(decade);
        let _ = writeln!(
            out,
            r##"<line x1="{x:.1}" x2="{x:.1}" y1="{y0}" y2="{}" stroke="#ddd"/><text x="{x:.1}" y="{}" text-anchor="middle">{}</text>"##,
            y0 + h,
            y0 + h + 16.0,
            figure(decade)
        );
        decade *= 10.0;
    }
    for q in [0.5, 0.99] {
        let y = y0 + h - h * q;
        grid_row(out, x0, w, y, &format!("p{}", q * 100.0));
    }
    for (path, scenario, points) in curves {
        let d: Vec<String> = points
            .iter()
            .map(|p| format!("{:.1},{:.1}", x_of(p[0]), y0 + h - h * p[1]))
            .collect();
        let dash = if scenario == "udp_rr" {
            r#" stroke-dasharray="5,3""#
        } else {
            ""
        };
        let _ = writeln!(
            out,
            r#"<polyline fill="none" stroke="{}" stroke-width="1.5"{dash} points="{}"><title>{} {scenario}</title></polyline>"#,
            color(path),
            d.join(" "),
            path.name()
        );
    }
}

fn axes(out: &mut String, (x0, y0, w, h): (f64, f64, f64, f64)) {
    let _ = writeln!(
        out,
        r#"<polyline fill="none" stroke="black" points="{x0},{y0} {x0},{} {},{}"/>"#,
        y0 + h,
        x0 + w,
        y0 + h
    );
}

/// The smallest 1, 2 or 5 × 10^k at or above `v`.
fn nice_ceiling(v: f64) -> f64 {
    let base = 10f64.powf(v.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .map(|m| m * base)
        .find(|c| *c >= v)
        .unwrap_or(10.0 * base)
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// A horizontal grid line across a plot at height `y`, labelled on its left.
fn grid_row(out: &mut String, x0: f64, w: f64, y: f64, label: &str) {
    let _ = writeln!(
        out,
        r##"<line x1="{x0}" x2="{}" y1="{y:.1}" y2="{y:.1}" stroke="#ddd"/><text x="{}" y="{:.1}" text-anchor="end">{label}</text>"##,
        x0 + w,
        x0 - 4.0,
        y + 4.0,
    );
}

#[cfg(test)]
mod test {
    use std::collections::BTreeMap;
    use std::time::Duration;

    use super::*;
    use crate::bench::{Options, Scenario};

    fn results() -> Results {
        let mut runs = BTreeMap::new();
        for (path, g2h, p50) in [
            (PathKind::Tapir, 9.0, 40.0),
            (PathKind::Slirp4netns, 3.0, 80.0),
            (PathKind::Kernel, 18.0, 20.0),
        ] {
            let mut run = PathRun::default();
            run.metrics.insert("tcp_g2h_gbit_s", g2h);
            run.metrics.insert("tcp_rr_p50_us", p50);
            run.cdfs
                .insert("tcp_rr", vec![[p50 / 2.0, 0.5], [p50, 1.0]]);
            runs.insert((path, 1500), run);
        }
        Results {
            options: Options {
                paths: vec![PathKind::Tapir, PathKind::Kernel, PathKind::Slirp4netns],
                scenarios: vec![Scenario::TcpStream, Scenario::TcpRr],
                mtus: vec![1500],
                duration: Duration::from_secs(1),
                hold: 10,
                rounds: 3,
                dir: "/nonexistent".into(),
            },
            machine: "test <machine>".into(),
            tools: BTreeMap::new(),
            runs,
            skipped: vec![(PathKind::Pasta, "pasta is not installed".into())],
        }
    }

    #[test]
    fn ratios_compare_with_both_references_at_the_same_mtu() {
        let r = results();
        assert_eq!(
            ratio(
                &r,
                PathKind::Tapir,
                1500,
                "tcp_g2h_gbit_s",
                PathKind::Slirp4netns
            ),
            Some(3.0)
        );
        assert_eq!(
            ratio(
                &r,
                PathKind::Tapir,
                1500,
                "tcp_g2h_gbit_s",
                PathKind::Kernel
            ),
            Some(0.5)
        );
        assert_eq!(
            ratio(
                &r,
                PathKind::Tapir,
                1500,
                "tcp_rr_p50_us",
                PathKind::Slirp4netns
            ),
            Some(0.5)
        );
        assert_eq!(
            ratio(
                &r,
                PathKind::Slirp4netns,
                1500,
                "tcp_g2h_gbit_s",
                PathKind::Slirp4netns
            ),
            None
        );
        assert_eq!(
            ratio(
                &r,
                PathKind::Tapir,
                65520,
                "tcp_g2h_gbit_s",
                PathKind::Kernel
            ),
            None
        );
    }

    #[test]
    fn the_table_shows_figures_ratios_and_skips() {
        let text = table(&results());
        assert!(
            text.contains("TCP guest→host Gbit/s (higher is better)"),
            "{text}"
        );
        assert!(
            text.contains("tapir              9.00           3.00×      0.50×"),
            "{text}"
        );
        assert!(
            text.contains("skipped pasta: pasta is not installed"),
            "{text}"
        );
        assert!(
            text.contains("1 s per measurement, each figure the median of 3 rounds;"),
            "{text}"
        );
        assert!(
            !text.contains("UDP RR"),
            "unmeasured metrics get no block: {text}"
        );
    }

    #[test]
    fn the_json_carries_metrics_ratios_and_cdfs() {
        let doc = to_json(&results());
        let tapir = doc["runs"]
            .as_array()
            .and_then(|runs| runs.iter().find(|r| r["path"] == "tapir"))
            .cloned()
            .unwrap_or_default();
        assert_eq!(tapir["mtu"], 1500);
        assert_eq!(tapir["metrics"]["tcp_g2h_gbit_s"], 9.0);
        assert_eq!(tapir["ratios"]["vs_slirp4netns"]["tcp_g2h_gbit_s"], 3.0);
        assert_eq!(tapir["ratios"]["vs_kernel"]["tcp_rr_p50_us"], 2.0);
        assert_eq!(tapir["cdf_us"]["tcp_rr"][1][1], 1.0);
        assert_eq!(doc["skipped"][0]["path"], "pasta");
    }

    #[test]
    fn the_svg_has_a_bar_and_a_curve_per_path_and_escapes_text() {
        let svg = svg(&results());
        assert!(svg.starts_with("<svg"));
        assert_eq!(svg.matches("<polyline fill=\"none\" stroke=\"#").count(), 3);
        assert_eq!(svg.matches("<title>").count(), 6);
        assert!(svg.contains("test &lt;machine&gt;"));
        assert!(svg.trim_end().ends_with("</svg>"));
    }

    #[test]
    fn axis_ceilings_are_round() {
        assert_eq!(nice_ceiling(7.3), 10.0);
        assert_eq!(nice_ceiling(13.0), 20.0);
        assert_eq!(nice_ceiling(0.4), 0.5);
    }
}
