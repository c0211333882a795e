#!/usr/bin/env bash
# Runs the fuzz targets: the short run in .ci/run, and long campaigns.
#
#   fuzz/run.sh [SECONDS_PER_TARGET [TARGET...] [-- LIBFUZZER_FLAGS...]]
#
# Builds every target (cargo-fuzz, AddressSanitizer with LeakSanitizer, debug assertions on,
# so an arithmetic overflow is a crash too), then runs each for SECONDS_PER_TARGET (default 15)
# from its committed seeds (fuzz/seeds/TARGET, read only) and its working corpus
# (fuzz/corpus/TARGET, where new inputs go). A crash, a timeout (-timeout), a leak or memory
# beyond -rss_limit_mb stops the script with libFuzzer's report and the input saved under
# fuzz/artifacts/TARGET/.
#
# Hygiene: every target runs under `unshare --net`, in a network namespace of its own with only
# a down `lo` (frame_ingest brings it up there): the host sockets the guest's flows open
# reach nothing outside this process. That needs root, or run the whole script under
# `unshare -r`.
#
# cargo-fuzz needs nightly-only compiler flags (-Zsanitizer); RUSTC_BOOTSTRAP=1 lets the stable
# toolchain accept them.
#
# Speed: libFuzzer itself (C++, built by libfuzzer-sys through the cc crate) must not be built
# with AddressSanitizer. cc passes -fsanitize=address to C and C++ whenever rustc's is on
# (CARGO_CFG_SANITIZE), which puts ASan's checks and fake stack frames into the fuzzing
# engine's per-input feature loop: that tripled the cost of an input for frame_ingest.
# -fno-sanitize=address in CXXFLAGS turns it off for C++ only (libFuzzer is the only C++ here);
# tapir and every Rust dependency keep ASan. -reload=0: a campaign is one process that alone
# writes its corpus directory, so rereading that directory every second finds nothing new.
set -euo pipefail
cd "$(dirname "$0")"

secs=${1:-15}
[ $# -gt 0 ] && shift
targets=()
while [ $# -gt 0 ] && [ "$1" != -- ]; do
    targets+=("$1")
    shift
done
[ "${1:-}" = -- ] && shift
export RUSTC_BOOTSTRAP=1
export CXXFLAGS="${CXXFLAGS:+$CXXFLAGS }-fno-sanitize=address"
if [ ${#targets[@]} -eq 0 ]; then
    mapfile -t targets < <(cargo fuzz list)
fi

cargo fuzz build --debug-assertions
bin=target/x86_64-unknown-linux-gnu/release

for t in "${targets[@]}"; do
    mkdir -p "corpus/$t" "artifacts/$t" "seeds/$t"
    # One log per run, so that a short run beside a long campaign of the same target does
    # not overwrite the campaign's log.
    log="artifacts/$t/run-$(date -u +%Y%m%dT%H%M%SZ)-$$.log"
    echo "== $t: ${secs}s (log: fuzz/$log)" >&2
    rc=0
    unshare --net -- "$bin/$t" "corpus/$t" "seeds/$t" \
        -artifact_prefix="artifacts/$t/" -max_total_time="$secs" -timeout=10 \
        -rss_limit_mb=2048 -malloc_limit_mb=512 -reload=0 -print_final_stats=1 "$@" >"$log" 2>&1 || rc=$?
    grep -E '^(#[0-9]+[[:space:]]+DONE|stat::number_of_executed_units|stat::peak_rss_mb|INFO: seed corpus)' "$log" >&2 || true
    if [ "$rc" != 0 ]; then
        tail -n 60 "$log" >&2
        echo "fuzz/run.sh: $t failed (exit status $rc); the input is in fuzz/artifacts/$t/" >&2
        exit 1
    fi
done
