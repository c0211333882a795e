#!/usr/bin/env bash
# Compares tapir's rootless path with slirp4netns (and a kernel veth baseline): TCP throughput
# guest->host and host->guest (iperf3) and TCP request/response latency (sockperf ping-pong,
# 64-byte messages, full round trip), at MTU 65520 and 1500.
#
# Usage: sudo benches/rootless.sh [path/to/tapir]      (default: target/release/tapir, if built)
# Environment: BENCH_SECS (seconds per measurement, default 5), BENCH_MTUS (default "65520 1500"),
# BENCH_PATHS (default "veth slirp4netns tapir"; A/B runs of tapir alone: "tapir").
#
# Hermetic: the script re-executes itself under `unshare --net --mount --pid`, so "the host" is
# a network namespace of its own with only loopback; the host-side servers listen on 127.0.0.1
# there (and on the veth's 10.0.2.2 for the baseline). tapir and slirp4netns run as uid 65534,
# with a private /dev/net/tun node; their DNS forwarders see a resolv.conf naming a do-nothing
# DNS server on 127.0.0.1 that this script starts. Nothing outside the namespaces is touched,
# except installing iperf3/sockperf with apt when they are missing.
#
# Paths:
#   veth         kernel baseline: a root netns behind a veth (10.0.2.100 -> 10.0.2.2), no NAT
#   slirp4netns  `slirp4netns --configure --mtu=M PID tap0` on an `unshare -Urn` sleeper, clients
#                run there with nsenter
#   tapir        `tapir run --mtu M -- CLIENT`, one tapir per measurement
# A path that fails prints "failed" in its cells; the run goes on.
set -euo pipefail

SECS=${BENCH_SECS:-5}
MTUS=${BENCH_MTUS:-65520 1500}
read -r -a PATHS <<<"${BENCH_PATHS:-veth slirp4netns tapir}"
IPERF_PORT=5201
SOCKPERF_PORT=11111
# A measurement that takes this much longer than SECS has hung.
LIMIT=$((SECS + 25))

if [ "$(id -u)" != 0 ]; then
    echo "rootless.sh: run as root (sudo $0 [path/to/tapir]); tapir and slirp4netns still run as uid 65534" >&2
    exit 1
fi

if [ -z "${TAPIR_BENCH_INSIDE:-}" ]; then
    here=$(cd "$(dirname "$0")" && pwd)
    tapir=${1:-$here/../target/release/tapir}
    [ -x "$tapir" ] && tapir=$(readlink -f "$tapir") || tapir=""
    missing=()
    command -v iperf3 >/dev/null || missing+=(iperf3)
    command -v sockperf >/dev/null || missing+=(sockperf)
    if [ "${#missing[@]}" -gt 0 ]; then
        echo "rootless.sh: installing ${missing[*]}" >&2
        echo 'iperf3 iperf3/start_daemon boolean false' | debconf-set-selections
        DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}" >&2
    fi
    export TAPIR_BENCH_INSIDE=1 TAPIR_BENCH_TAPIR=$tapir
    exec unshare --net --mount --pid --fork --mount-proc --propagation private --kill-child \
        -- bash "$here/$(basename "$0")"
fi

# --- inside the benchmark's own namespaces ------------------------------------------------------
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin LC_ALL=C
W=$(mktemp -d /tmp/tapir-bench.XXXXXX)
chmod 0755 "$W"
mkdir -m 0755 "$W/bin" "$W/dev"
teardown() {
    # shellcheck disable=SC2046
    kill $(jobs -p) 2>/dev/null
    umount "$W/dev" 2>/dev/null
    rm -rf "$W"
}
trap teardown EXIT

# A command prefix, not a function: `"${AS_USER[@]}" X &` must give X's own pid in $!.
AS_USER=(setpriv --reuid=65534 --regid=65534 --clear-groups --)
wait_until() { # wait_until SECONDS CMD...
    local deadline=$((SECONDS + $1))
    shift
    until "$@" >/dev/null 2>&1; do
        [ "$SECONDS" -lt "$deadline" ] || return 1
        sleep 0.05
    done
}
listening() { # listening ADDR PORT (TCP)
    [ -n "$(ss -Hltn "src $1:$2")" ]
}

ip link set lo up
mount -t tmpfs -o mode=0755,size=64k tapir-bench-dev "$W/dev"
mknod -m 0666 "$W/dev/tun" c 10 200
mount --bind "$W/dev/tun" /dev/net/tun
printf 'nameserver 127.0.0.1\n' >"$W/resolv.conf"
chmod 0644 "$W/resolv.conf"
mount --bind "$W/resolv.conf" /etc/resolv.conf
sysctl -qw net.ipv4.ping_group_range="0 2147483647"
# The do-nothing DNS server the forwarders would reach: answers every query with REFUSED.
python3 -c '
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("127.0.0.1", 53))
while True:
    q, peer = s.recvfrom(512)
    if len(q) >= 12:
        s.sendto(q[:2] + bytes([0x80 | (q[2] & 1), 0x05]) + q[4:], peer)
' &

TAPIR=""
if [ -n "$TAPIR_BENCH_TAPIR" ]; then
    cp "$TAPIR_BENCH_TAPIR" "$W/bin/tapir"
    chmod 0755 "$W/bin/tapir"
    TAPIR=$W/bin/tapir
fi

# Host-side servers on 127.0.0.1 (10.0.2.2 in the rootless guests).
SERVER_PIDS=""
start_servers() { # start_servers ADDR: their pids in SERVER_PIDS
    iperf3 -s -B "$1" -p "$IPERF_PORT" >/dev/null 2>&1 &
    SERVER_PIDS=$!
    sockperf server --tcp -i "$1" -p "$SOCKPERF_PORT" >/dev/null 2>&1 &
    SERVER_PIDS="$SERVER_PIDS $!"
    wait_until 10 listening "$1" "$IPERF_PORT"
    wait_until 10 listening "$1" "$SOCKPERF_PORT"
}
start_servers 127.0.0.1

# --- paths: each has setup_P MTU, in_guest_P CMD..., teardown_P --------------------------------
GUEST_PID=""
HELPER_PID=""
stop_guest() {
    # shellcheck disable=SC2086
    kill $HELPER_PID $GUEST_PID 2>/dev/null || true
    # shellcheck disable=SC2086
    wait $HELPER_PID $GUEST_PID 2>/dev/null || true
    GUEST_PID="" HELPER_PID=""
}

setup_veth() {
    unshare --net sleep infinity &
    GUEST_PID=$!
    wait_until 5 grep -qx sleep "/proc/$GUEST_PID/comm" || { echo "veth: no guest namespace"; return 1; }
    ip link add bench0 mtu "$1" type veth peer name eth0 mtu "$1" netns "$GUEST_PID"
    ip addr add 10.0.2.2/24 dev bench0
    ip link set bench0 up
    nsenter -t "$GUEST_PID" -n sh -c \
        'ip link set lo up && ip addr add 10.0.2.100/24 dev eth0 && ip link set eth0 up'
    # The baseline has no address translation: its servers listen on the veth's own address.
    start_servers 10.0.2.2
    HELPER_PID=$SERVER_PIDS
}
in_guest_veth() {
    timeout "$LIMIT" nsenter -t "$GUEST_PID" -n -- "$@"
}
teardown_veth() {
    stop_guest
    ip link del bench0 2>/dev/null || true
}

setup_slirp4netns() {
    command -v slirp4netns >/dev/null || { echo "slirp4netns: not installed"; return 1; }
    "${AS_USER[@]}" unshare --user --map-root-user --net sleep infinity &
    GUEST_PID=$!
    wait_until 5 grep -qx sleep "/proc/$GUEST_PID/comm" || { echo "slirp4netns: no guest namespace"; return 1; }
    "${AS_USER[@]}" slirp4netns --configure --mtu="$1" "$GUEST_PID" tap0 >>"$W/slirp4netns.log" 2>&1 &
    HELPER_PID=$!
    wait_until 10 sh -c "nsenter -t $GUEST_PID -n ip -4 addr show tap0 | grep -q 10.0.2.100" ||
        { echo "slirp4netns: tap0 was not configured"; return 1; }
}
in_guest_slirp4netns() {
    timeout "$LIMIT" "${AS_USER[@]}" nsenter --preserve-credentials --user --net --target "$GUEST_PID" -- "$@"
}
teardown_slirp4netns() {
    stop_guest
}

TAPIR_MTU=""
setup_tapir() {
    [ -n "$TAPIR" ] || { echo "tapir: no binary given, and target/release/tapir is not built"; return 1; }
    TAPIR_MTU=$1
}
in_guest_tapir() {
    timeout "$LIMIT" "${AS_USER[@]}" "$TAPIR" run --mtu "$TAPIR_MTU" -- "$@"
}
teardown_tapir() {
    :
}

# --- measurements: each prints a number or nothing ---------------------------------------------
gbits() { # reads iperf3 -J, prints the receiver's Gbit/s
    python3 -c '
import json, sys
try:
    print("%.2f" % (json.load(sys.stdin)["end"]["sum_received"]["bits_per_second"] / 1e9))
except Exception:
    pass'
}
percentile() { # percentile P: reads sockperf output, prints that percentile in µs
    awk -v p="$1" '$0 ~ "percentile " p " =" { printf "%.1f\n", $NF }'
}

declare -A RESULT
measure() { # measure PATH MTU
    local path=$1 mtu=$2 out
    if ! "setup_$path" "$mtu" >>"$W/errors" 2>&1; then
        "teardown_$path"
        return
    fi
    RESULT[$path/$mtu/g2h]=$("in_guest_$path" iperf3 -c 10.0.2.2 -p "$IPERF_PORT" -t "$SECS" -J 2>>"$W/errors" | gbits || true)
    RESULT[$path/$mtu/h2g]=$("in_guest_$path" iperf3 -c 10.0.2.2 -p "$IPERF_PORT" -t "$SECS" -R -J 2>>"$W/errors" | gbits || true)
    out=$("in_guest_$path" sockperf ping-pong --tcp -i 10.0.2.2 -p "$SOCKPERF_PORT" -m 64 -t "$SECS" --full-rtt 2>&1 || true)
    RESULT[$path/$mtu/p50]=$(percentile 50.000 <<<"$out")
    RESULT[$path/$mtu/p99]=$(percentile 99.000 <<<"$out")
    "teardown_$path"
    for metric in g2h h2g p50 p99; do
        [ -n "${RESULT[$path/$mtu/$metric]}" ] || echo "$path at MTU $mtu: no $metric result" >>"$W/errors"
    done
}

# cell PATH MTU METRIC: "value (ratio×)" against slirp4netns at the same MTU, or "failed".
cell() {
    local v=${RESULT[$1/$2/$3]:-} ref=${RESULT[slirp4netns/$2/$3]:-}
    if [ -z "$v" ]; then
        echo failed
    elif [ -n "$ref" ]; then
        awk -v v="$v" -v r="$ref" 'BEGIN { if (r > 0) printf "%s (%.2fx)\n", v, v / r; else print v }'
    else
        echo "$v"
    fi
}

for mtu in $MTUS; do
    for path in "${PATHS[@]}"; do
        echo "measuring $path at MTU $mtu ..." >&2
        measure "$path" "$mtu"
    done
done

echo
echo "machine: $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//'), kernel $(uname -r)"
echo "tools: $(iperf3 --version | head -n1 | cut -d' ' -f1-2), sockperf $(sockperf --version 2>&1 | grep -om1 '[0-9][0-9.]*'), slirp4netns $(slirp4netns --version 2>/dev/null | head -n1 | awk '{print $3}')"
echo "each cell: iperf3 -t $SECS (receiver's rate) / sockperf ping-pong --tcp -m 64 -t $SECS --full-rtt; (n.nnx) = this path / slirp4netns at the same MTU"
echo
fmt="%-12s %6s  %-18s %-18s %-17s %-17s\n"
# shellcheck disable=SC2059
printf "$fmt" path MTU "g->h Gbit/s" "h->g Gbit/s" "RR p50 us" "RR p99 us"
for mtu in $MTUS; do
    for path in "${PATHS[@]}"; do
        # shellcheck disable=SC2059
        printf "$fmt" "$path" "$mtu" "$(cell "$path" "$mtu" g2h)" "$(cell "$path" "$mtu" h2g)" \
            "$(cell "$path" "$mtu" p50)" "$(cell "$path" "$mtu" p99)"
    done
done
if [ -s "$W/errors" ]; then
    echo
    echo "errors (last 10 lines):"
    tail -n 10 "$W/errors"
fi
