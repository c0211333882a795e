#!/usr/bin/env bash
# Memory of tapir holding many idle guest TCP connections (issue 5: 10 000 held connections
# with tapir's RSS <= 64 MiB), and whether the memory comes back when they close.
#
# Usage: sudo benches/held.sh [path/to/tapir]      (default: target/release/tapir)
# Environment: HELD_FLOWS (connections, default 10000).
#
# Hermetic like rootless.sh: it re-executes itself under `unshare --net --mount --pid`; the
# host-side server holds every accepted connection on 127.0.0.1 in that namespace, and the
# guest (`tapir run` as uid 65534) opens HELD_FLOWS connections to 10.0.2.2. Once all are
# established it prints tapir's VmRSS and open fds, then the guest closes them all and the
# figures are read again after the flows are gone.
set -euo pipefail

FLOWS=${HELD_FLOWS:-10000}
PORT=7000

if [ "$(id -u)" != 0 ]; then
    echo "held.sh: run as root (sudo $0 [path/to/tapir]); tapir still runs as uid 65534" >&2
    exit 1
fi

if [ -z "${TAPIR_HELD_INSIDE:-}" ]; then
    here=$(cd "$(dirname "$0")" && pwd)
    tapir=$(readlink -f "${1:-$here/../target/release/tapir}")
    [ -x "$tapir" ] || { echo "held.sh: no tapir binary at $tapir" >&2; exit 1; }
    export TAPIR_HELD_INSIDE=1 TAPIR_HELD_TAPIR=$tapir
    exec unshare --net --mount --pid --fork --mount-proc --propagation private --kill-child \
        -- bash "$here/$(basename "$0")"
fi

export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin LC_ALL=C
W=$(mktemp -d /tmp/tapir-held.XXXXXX)
chmod 0755 "$W"
mkdir -m 0755 "$W/bin" "$W/dev"
mkdir -m 0777 "$W/ctl"
teardown() {
    # shellcheck disable=SC2046
    kill $(jobs -p) 2>/dev/null
    umount "$W/dev" 2>/dev/null
    rm -rf "$W"
}
trap teardown EXIT

ip link set lo up
mount -t tmpfs -o mode=0755,size=64k tapir-held-dev "$W/dev"
mknod -m 0666 "$W/dev/tun" c 10 200
mount --bind "$W/dev/tun" /dev/net/tun
printf 'nameserver 127.0.0.1\n' >"$W/resolv.conf"
chmod 0644 "$W/resolv.conf"
mount --bind "$W/resolv.conf" /etc/resolv.conf
cp "$TAPIR_HELD_TAPIR" "$W/bin/tapir"
chmod 0755 "$W/bin/tapir"
# Room for FLOWS sockets in each process (the host server, the guest and tapir).
want=$((FLOWS + 1000))
[ "$(ulimit -Hn)" = unlimited ] || [ "$(ulimit -Hn)" -ge "$want" ] ||
    { echo "held.sh: the open-file hard limit $(ulimit -Hn) is below $want" >&2; exit 1; }
ulimit -n "$want"

# The host side: accepts and holds every connection, and closes it when the guest does.
python3 - "$PORT" <<'PY' &
import selectors, socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", int(sys.argv[1])))
s.listen(4096)
sel = selectors.DefaultSelector()
sel.register(s, selectors.EVENT_READ)
while True:
    for key, _ in sel.select():
        if key.fileobj is s:
            c, _ = s.accept()
            sel.register(c, selectors.EVENT_READ)
        elif not key.fileobj.recv(4096):
            sel.unregister(key.fileobj)
            key.fileobj.close()
PY
until [ -n "$(ss -Hltn "src 127.0.0.1:$PORT")" ]; do sleep 0.05; done

# The guest: opens FLOWS connections, says so, waits for "close", closes them all, says so,
# then waits for "exit".
cat >"$W/bin/guest.py" <<'PY'
import os, socket, sys, time
n, ctl = int(sys.argv[1]), sys.argv[2]
def wait_for(name):
    while not os.path.exists(os.path.join(ctl, name)):
        time.sleep(0.05)
def say(name):
    open(os.path.join(ctl, name), "w").close()
socks = []
for i in range(n):
    s = socket.socket()
    s.connect(("10.0.2.2", int(sys.argv[3])))
    socks.append(s)
say("held")
wait_for("close")
for s in socks:
    s.close()
say("closed")
wait_for("exit")
PY

setpriv --reuid=65534 --regid=65534 --clear-groups -- \
    "$W/bin/tapir" run -- python3 "$W/bin/guest.py" "$FLOWS" "$W/ctl" "$PORT" &
TAPIR_PID=$!
report() { # report LABEL
    local rss fds
    rss=$(awk '/^VmRSS/ { printf "%.1f", $2 / 1024 }' "/proc/$TAPIR_PID/status")
    fds=$(find "/proc/$TAPIR_PID/fd" -mindepth 1 | wc -l)
    echo "$1: tapir VmRSS $rss MiB, $fds open fds"
}
start=$SECONDS
until [ -e "$W/ctl/held" ]; do
    [ $((SECONDS - start)) -lt 120 ] || { echo "held.sh: the guest did not get $FLOWS connections in 120 s" >&2; exit 1; }
    kill -0 "$TAPIR_PID" || { echo "held.sh: tapir exited early" >&2; exit 1; }
    sleep 0.2
done
echo "$FLOWS connections established in $((SECONDS - start)) s"
sleep 1
report "holding $FLOWS connections"
touch "$W/ctl/close"
until [ -e "$W/ctl/closed" ]; do sleep 0.1; done
sleep 3
report "after the guest closed them (3 s later)"
touch "$W/ctl/exit"
wait "$TAPIR_PID"
