#!/usr/bin/env bash
# The rootless comparison is `tapir bench` now (see README "Benchmark"); this wrapper keeps the
# old entry point and its environment knobs.
#
# Usage: sudo benches/rootless.sh [path/to/tapir]      (default: target/release/tapir)
# Environment: BENCH_SECS (seconds per measurement, default 5), BENCH_MTUS (default "65520 1500"),
# BENCH_PATHS (default: every path; "tapir" for quick A/B runs of tapir alone).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
tapir=${1:-$here/../target/release/tapir}
mtus=${BENCH_MTUS:-65520 1500}
paths=${BENCH_PATHS:-}
exec "$tapir" bench --duration "${BENCH_SECS:-5}" --mtu "${mtus// /,}" ${paths:+--paths "${paths// /,}"}
