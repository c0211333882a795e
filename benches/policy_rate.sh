#!/usr/bin/env bash
# Connection rate through tapir with no egress policy and with a 1,000-rule policy, in one run
# (issue 8: the matcher must not show in the data path). Root, hermetic: everything happens in
# a private network namespace; tapir runs as uid 65534; the guest connects to a server on the
# namespace's own veth address (not loopback, which the policy never sees), N times per round.
#
# Usage: sudo benches/policy_rate.sh [path/to/tapir] [connections per round]
set -euo pipefail
if [ "${1:-}" != --inside ]; then
    tapir=$(realpath "${1:-target/release/tapir}")
    dir=$(mktemp -d)
    chmod 0755 "$dir"
    cp "$tapir" "$dir/tapir"
    chmod 0755 "$dir/tapir"
    exec unshare --net --mount --propagation private -- "$0" --inside "$dir" "${2:-3000}"
fi
dir=$2
n=$3
ip link set lo up
ip link add bench0 type veth peer name bench1
ip link set bench1 up
ip addr add 192.0.2.1/24 dev bench0
ip link set bench0 up
mknod -m 0666 "$dir/tun" c 10 200
mount --bind "$dir/tun" /dev/net/tun
python3 - <<'PY' &
import socket
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("192.0.2.1", 9000)); s.listen(1024)
while True:
    c, _ = s.accept(); c.close()
PY
server=$!
trap 'kill $server' EXIT
sleep 0.5
# 1,000 rules that never match 192.0.2.1, spread over the address space, then a default allow.
rules=()
for i in $(seq 0 999); do
    rules+=(--deny "10.$((i / 250)).$((i % 250)).0/24:$((1000 + i))/tcp")
done
client='
import socket, time, sys
n = int(sys.argv[1])
t = time.monotonic()
for _ in range(n):
    s = socket.create_connection(("192.0.2.1", 9000)); s.close()
print("%.0f" % (n / (time.monotonic() - t)))
'
rate() {
    setpriv --reuid=65534 --regid=65534 --clear-groups "$dir/tapir" run "$@" -- python3 -c "$client" "$n"
}
printf '%-22s %s\n' "policy" "connections/s (3 rounds, alternating)"
for round in 1 2 3; do
    none=$(rate)
    many=$(rate "${rules[@]}")
    printf '%-22s %s\n' "none (round $round)" "$none" "1000 rules (round $round)" "$many"
done
