# shellcheck shell=bash
# The prelude of every integration-test scenario (see tests/common/mod.rs, which writes the
# variables W, TAPIR, GUEST_KIND, S4NN_IMPL, REMOTE, EGRESS_WORLD, GUEST_TIMEOUT and BODY_LINE above it and the scenario
# body below it, and runs the result under `unshare --net --mount --pid --fork --mount-proc`).
#
# Theory of operation. The scenario runs as root in a fresh network, mount and PID namespace:
# "the host" is that network namespace, with only `lo` until the prelude adds more. The prelude
#   1. makes the world hermetic: lo up; a private /dev/net/tun node that uid 65534 may open; a
#      resolv.conf naming 127.0.0.1 and an nsswitch.conf using only files+dns, both bind-mounted
#      over /etc in this mount namespace only; a fake DNS server on 127.0.0.1:53 (actors.py);
#      ping sockets allowed for every group in this network namespace;
#   2. optionally (REMOTE=1) adds a "remote host": a further network namespace behind a veth,
#      host 198.51.100.1/24 <-> remote 198.51.100.10/24; run things there with `in_remote`;
#      with EGRESS_WORLD=1 that namespace becomes "the world" of the egress-policy tests (2b.):
#      an internet host, a metadata service, private and IPv6 ULA hosts, all serving;
#   3. defines the guest: `guest CMD...` runs CMD inside a rootless guest network, either under
#      `tapir run` (GUEST_KIND=tapir, a fresh tapir per call, options from the TAPIR_ARGS array)
#      or inside one slirp4netns-served namespace set up here (GUEST_KIND=slirp4netns), the
#      reference the scenarios are checked against. The network helper always runs as uid 65534;
#   4. or, instead of a guest (GUEST_KIND=compat), names the slirp4netns-compatible binary the
#      scenario drives itself, raw or through rootlesskit and podman: $S4NN (Debian's slirp4netns
#      or, with S4NN_IMPL=tapir, a symlink named slirp4netns to $TAPIR) and $S4NN_LOGGED, a
#      wrapper also named slirp4netns that appends its pid, argv and fds to $S4NN_LOG before it
#      execs $S4NN. It gives uid 65534 subordinate ids (private /etc/subuid and /etc/subgid), and
#      a HOME and XDG_RUNTIME_DIR of its own ($W/home, and $W/run bound at /run/user/65534 on a
#      private /run) for `as_rootless`.
# Nothing here touches the machine outside the namespaces: when the body ends, the EXIT trap
# kills what it started, and the PID namespace's end kills anything left.
#
# Verbs for scenario bodies:
#   start NAME CMD...       CMD in the background on the host, output to $W/log/NAME.log
#   in_remote CMD...        CMD in the remote host's network namespace
#   as_user CMD...          CMD as uid/gid 65534 (a script in $W/bin, so `as_user X &` gives X's pid)
#   actor COMMAND ARGS...   one of the programs in actors.py (servers and clients)
#   wait_port [in_remote] tcp|udp PORT     wait_until SECS WHAT CMD...
#   wait_ready FILE PID     wait for a background guest (PID) to create FILE
#   guest CMD...            CMD in the guest (see 3.); tapir_run ARGS...: `tapir run ARGS` as 65534
#   as_rootless CMD...      (compat) CMD as uid 65534 with HOME=$W/home, XDG_RUNTIME_DIR=/run/user/65534
#   s4nn_api SOCKET JSON    (compat) one slirp4netns API request as uid 65534; prints the reply
#   wait_gone SECS PID WHAT waits until process PID has exited (or is a zombie)
#   check CMD...            check_eq WHAT ACTUAL EXPECTED      check_match WHAT ACTUAL ERE
#   fail MESSAGE

set -Eeuo pipefail
: "${W:?}" "${TAPIR?}" "${GUEST_KIND:?}" "${S4NN_IMPL:?}" "${REMOTE:?}" "${EGRESS_WORLD:?}" "${GUEST_TIMEOUT:?}" "${BODY_LINE:?}"
export W TAPIR
export PATH="$W/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
export HOME="$W/tmp" LC_ALL=C
TAPIR_ARGS=()

# Trace (set -x, turned on just before the body) goes to $W/trace, with body line numbers.
exec 9>>"$W/trace"
BASH_XTRACEFD=9
PS4='+ ${FUNCNAME[0]:-line} $((LINENO > BODY_LINE ? LINENO - BODY_LINE : LINENO)): '

# The scenario-body line that led here: where the outermost verb was called from the body.
body_line() {
    local depth=${#BASH_LINENO[@]}
    echo $((BASH_LINENO[depth - 2] - BODY_LINE))
}

fail() {
    local -
    set +x
    echo "FAILED (scenario line $(body_line)): $*" >&2
    exit 1
}

# Reports a failed command with its body line. Not from $(...) subshells: their failure shows up
# again as the failure of the body command that ran them, in the main shell.
on_error() {
    local -
    set +x
    [ "$BASHPID" = "$$" ] || return 0
    if [ "${#FUNCNAME[@]}" = 2 ]; then
        echo "FAILED (scenario line $(body_line)): exit status $1 from: $2" >&2
    else
        echo "FAILED (scenario line $(body_line)): exit status $1 in ${FUNCNAME[1]}: $2" >&2
    fi
}
trap 'on_error $? "$BASH_COMMAND"' ERR

teardown() {
    local rc=$?
    set +ex
    trap - ERR
    # shellcheck disable=SC2046
    kill $(jobs -p) 2>/dev/null
    exit "$rc"
}
trap teardown EXIT

check() {
    local -
    set +x
    "$@" || fail "check failed: $*"
}

check_eq() {
    local -
    set +x
    [ "$2" = "$3" ] || fail "$1: expected '$3', got '$2'"
}

check_match() {
    local -
    set +x
    grep -Eq -- "$3" <<<"$2" || fail "$1: '$2' does not match /$3/"
}

# wait_until SECONDS WHAT CMD...: polls CMD until it succeeds.
wait_until() {
    local -
    set +x
    local seconds=$1 what=$2
    shift 2
    local deadline=$((SECONDS + seconds))
    until "$@" >/dev/null 2>&1; do
        [ "$SECONDS" -lt "$deadline" ] || fail "gave up after ${seconds}s waiting for $what"
        sleep 0.05
    done
}

listening() {
    local -
    set +x
    local flag=t
    [ "$1" = udp ] && flag=u
    [ -n "$(ss -Hln$flag "sport = :$2")" ]
}

wait_port() {
    local -
    set +x
    if [ "$1" = in_remote ]; then
        wait_until 10 "remote $2 port $3 to listen" in_remote "$W/bin/listening" "$2" "$3"
    else
        wait_until 10 "$1 port $2 to listen" listening "$1" "$2"
    fi
}

# wait_ready FILE PID: waits for FILE, which the background guest PID creates once its servers
# listen; fails at once if that guest has already exited.
wait_ready() {
    local -
    set +x
    local deadline=$((SECONDS + 30)) rc=0
    until [ -e "$1" ]; do
        if ! kill -0 "$2" 2>/dev/null; then
            wait "$2" || rc=$?
            fail "the guest exited with status $rc before it was ready (no $1)"
        fi
        [ "$SECONDS" -lt "$deadline" ] || fail "gave up after 30s waiting for the guest to create $1"
        sleep 0.05
    done
}

# gone PID: PID has exited (a zombie counts: its parent has not reaped it yet).
gone() {
    [ ! -e "/proc/$1/stat" ] || [ "$(sed 's/.*) //' "/proc/$1/stat" 2>/dev/null | cut -c1)" = Z ]
}

wait_gone() {
    local -
    set +x
    wait_until "$1" "$3 (pid $2) to exit" gone "$2"
}

start() {
    local -
    set +x
    local name=$1
    shift
    "$@" >"$W/log/$name.log" 2>&1 &
}

# bounded CMD...: CMD with GUEST_TIMEOUT, saying so when it was cut off.
bounded() {
    local -
    set +x
    local rc=0
    timeout --kill-after=3 "$GUEST_TIMEOUT" "$@" || rc=$?
    if [ "$rc" = 124 ] || [ "$rc" = 137 ]; then
        echo "timed out after ${GUEST_TIMEOUT}s: $*" >&2
    fi
    return "$rc"
}

# --- 1. the hermetic host ------------------------------------------------------------------------
mkdir -p "$W/bin" "$W/log" "$W/etc" "$W/dev"
cat >"$W/bin/as_user" <<'EOF'
#!/bin/sh
exec setpriv --reuid=65534 --regid=65534 --clear-groups -- "$@"
EOF
cat >"$W/bin/actor" <<EOF
#!/bin/sh
exec /usr/bin/python3 -u '$W/actors.py' "\$@"
EOF
# `listening` as a program too, so in_remote (nsenter) can run it.
cat >"$W/bin/listening" <<EOF
#!/bin/bash
$(declare -f listening)
listening "\$@"
EOF
chmod 0755 "$W/bin/as_user" "$W/bin/actor" "$W/bin/listening"

ip link set lo up
# /dev/net/tun is 0600 on some machines; a node of our own, bound over it in this mount
# namespace only, lets uid 65534 open it without changing the machine.
mount -t tmpfs -o mode=0755,size=64k tapir-test-dev "$W/dev"
mknod -m 0666 "$W/dev/tun" c 10 200
mount --bind "$W/dev/tun" /dev/net/tun
printf 'nameserver 127.0.0.1\n' >"$W/etc/resolv.conf"
sed '/^hosts:/d' /etc/nsswitch.conf >"$W/etc/nsswitch.conf"
printf 'hosts: files dns\n' >>"$W/etc/nsswitch.conf"
chmod 0644 "$W/etc/resolv.conf" "$W/etc/nsswitch.conf"
mount --bind "$W/etc/resolv.conf" /etc/resolv.conf
mount --bind "$W/etc/nsswitch.conf" /etc/nsswitch.conf
sysctl -qw net.ipv4.ping_group_range="0 2147483647"
start dns actor dns-server 127.0.0.1 53
wait_port udp 53
wait_port tcp 53

# --- 2. the remote host --------------------------------------------------------------------------
REMOTE_ADDR=198.51.100.10
HOST_ADDR=198.51.100.1
in_remote() {
    nsenter --target "$REMOTE_PID" --net -- "$@"
}
if [ "$REMOTE" = 1 ]; then
    unshare --net sleep infinity &
    REMOTE_PID=$!
    # Once it is `sleep`, unshare has made its namespace.
    wait_until 5 "the remote network namespace" grep -qx sleep "/proc/$REMOTE_PID/comm"
    ip link add to-remote type veth peer name to-host netns "$REMOTE_PID"
    ip addr add "$HOST_ADDR/24" dev to-remote
    ip link set to-remote up
    in_remote ip link set lo up
    in_remote ip addr add "$REMOTE_ADDR/24" dev to-host
    in_remote ip link set to-host up
    wait_until 5 "the veth to the remote host" ping -c 1 -W 1 "$REMOTE_ADDR"
fi

# --- 2b. the egress world ------------------------------------------------------------------------
# With EGRESS_WORLD=1 (which comes with REMOTE=1) the remote host's namespace plays every
# destination an egress policy tells apart, each on a link of its own from the host, whose side
# holds an address on it and so routes to it (all inside this scenario's namespaces):
#   to-host      the internet      host 198.51.100.1/24, 2001:db8:100::1/64
#                                  world 198.51.100.10 ($INTERNET), 2001:db8:100::10 ($INTERNET6)
#   to-private   a private LAN     host 10.1.2.1/24, fd42::1/64
#                                  world 10.1.2.3 ($PRIVATE), 10.1.2.4 ($PRIVATE2),
#                                        fd42::3 ($ULA), fd42::4 ($ULA2)
#   to-metadata  link-local        host 169.254.169.1/16; world 169.254.169.254 ($METADATA)
# One `actor serve` there (log/world.log, a line per connection or datagram naming the address
# and port it reached) serves on each world address: tcp-whoami-like `tcp` on 22, 80 and 443, a
# TCP `echo` on 7, UDP echo on 7 and 22; the kernel answers ping. On the host itself, `serve`
# (log/host.log) answers `tcp` on 0.0.0.0:8088 and [::]:8088: what the guest reaches through
# 10.0.2.2 / fd00::2 (loopback) and through the host's own addresses.
INTERNET=198.51.100.10 INTERNET6=2001:db8:100::10
PRIVATE=10.1.2.3 PRIVATE2=10.1.2.4 ULA=fd42::3 ULA2=fd42::4 METADATA=169.254.169.254
if [ "$EGRESS_WORLD" = 1 ]; then
    [ "$REMOTE" = 1 ] || fail "EGRESS_WORLD=1 needs REMOTE=1"
    # nodad: the addresses are usable at once, not tentative for a second or two.
    ip -6 addr add 2001:db8:100::1/64 dev to-remote nodad
    in_remote ip -6 addr add "$INTERNET6/64" dev to-host nodad
    ip link add to-private type veth peer name private netns "$REMOTE_PID"
    ip link add to-metadata type veth peer name metadata netns "$REMOTE_PID"
    ip addr add 10.1.2.1/24 dev to-private
    ip -6 addr add fd42::1/64 dev to-private nodad
    ip addr add 169.254.169.1/16 dev to-metadata
    ip link set to-private up
    ip link set to-metadata up
    for addr in "$PRIVATE/24" "$PRIVATE2/24"; do
        in_remote ip addr add "$addr" dev private
    done
    for addr in "$ULA/64" "$ULA2/64"; do
        in_remote ip -6 addr add "$addr" dev private nodad
    done
    in_remote ip addr add "$METADATA/16" dev metadata
    in_remote ip link set private up
    in_remote ip link set metadata up
    world_specs=()
    for addr in "$INTERNET" "$PRIVATE" "$PRIVATE2" "$METADATA" "[$INTERNET6]" "[$ULA]" "[$ULA2]"; do
        world_specs+=("tcp:$addr:22" "tcp:$addr:80" "tcp:$addr:443" "echo:$addr:7" "udp:$addr:7" "udp:$addr:22")
    done
    start world in_remote actor serve "$W/tmp/world.ready" "${world_specs[@]}"
    start host actor serve "$W/tmp/host.ready" tcp:0.0.0.0:8088 "tcp:[::]:8088"
    wait_until 10 "the world's servers" test -e "$W/tmp/world.ready"
    wait_until 10 "the host's servers" test -e "$W/tmp/host.ready"
    for addr in "$INTERNET" "$PRIVATE" "$PRIVATE2" "$METADATA" "$INTERNET6" "$ULA" "$ULA2"; do
        wait_until 5 "$addr to answer ping from the host" ping -c 1 -W 1 "$addr"
    done
fi

# --- 3. the guest --------------------------------------------------------------------------------
tapir_run() {
    bounded as_user "$TAPIR" run "$@"
}

if [ "$GUEST_KIND" = compat ]; then
    : # No guest: see 4.
elif [ "$GUEST_KIND" = tapir ]; then
    guest() {
        tapir_run "${TAPIR_ARGS[@]}" -- "$@"
    }
else
    # The slirp4netns reference guest: a user+net+mount namespace held by a sleeper, with the
    # same resolv.conf a `tapir run` guest gets, served by one slirp4netns for the whole scenario.
    printf 'nameserver 10.0.2.3\n' >"$W/etc/guest-resolv.conf"
    chmod 0644 "$W/etc/guest-resolv.conf"
    # shellcheck disable=SC2016
    as_user unshare --user --map-root-user --net --mount \
        sh -c 'mount --bind "$1" /etc/resolv.conf && exec sleep infinity' sh "$W/etc/guest-resolv.conf" &
    GUEST_PID=$!
    wait_until 5 "the guest namespaces" grep -qx sleep "/proc/$GUEST_PID/comm"
    start slirp4netns as_user slirp4netns --configure --mtu=65520 --api-socket "$W/tmp/slirp4netns.sock" \
        "$GUEST_PID" tap0
    wait_until 10 "slirp4netns to configure tap0" \
        sh -c "nsenter --target $GUEST_PID --net ip -4 addr show tap0 | grep -q 10.0.2.100"
    guest() {
        bounded as_user nsenter --preserve-credentials --user --net --mount --target "$GUEST_PID" -- "$@"
    }
fi

# --- 4. the slirp4netns-compatible binary --------------------------------------------------------
if [ "$GUEST_KIND" = compat ]; then
    mkdir -p "$W/bin/s4nn" "$W/bin/logged"
    if [ "$S4NN_IMPL" = tapir ]; then
        # How tapir is installed as a drop-in: it knows it is slirp4netns by the name it ran as.
        ln -s "$TAPIR" "$W/bin/s4nn/slirp4netns"
        S4NN="$W/bin/s4nn/slirp4netns"
    else
        S4NN=/usr/bin/slirp4netns
    fi
    # The wrapper runs as uid 65534 inside the clients' user namespaces, where root's files are
    # nobody's: the log is writable by all.
    S4NN_LOG="$W/log/slirp4netns-argv.log"
    : >"$S4NN_LOG"
    chmod 0666 "$S4NN_LOG"
    cat >"$W/bin/logged/slirp4netns" <<EOF
#!/bin/bash
# Logs one line per run: its pid (which exec keeps), argv, and the fds it was given (listed by a
# child, so that the listing opens none in this process); then becomes '$S4NN'.
bash -c '
    line="pid \$1 argv"
    for arg in "\${@:2}"; do line+=" \$(printf %q "\$arg")"; done
    line+=" fds"
    for fd in /proc/\$1/fd/*; do
        n=\${fd##*/}
        [ "\$n" != 255 ] && target=\$(readlink "\$fd") && line+=" \$n=\$target"
    done
    printf "%s\\n" "\$line"
' logger "\$\$" "\$0" "\$@" >>'$S4NN_LOG'
exec '$S4NN' "\$@"
EOF
    chmod 0755 "$W/bin/logged/slirp4netns"
    S4NN_LOGGED="$W/bin/logged/slirp4netns"

    # Subordinate ids for uid 65534, seen only in this mount namespace (newuidmap and newgidmap
    # read these files as root). A machine without the files at all gets empty ones, the only
    # change made outside the namespace: a bind mount needs something to cover.
    user_name=$(getent passwd 65534 | cut -d: -f1)
    for ids in subuid subgid; do
        [ -e "/etc/$ids" ] || : >>"/etc/$ids"
        printf '%s:100000:65536\n' "$user_name" >"$W/etc/$ids"
        chmod 0644 "$W/etc/$ids"
        mount --bind "$W/etc/$ids" "/etc/$ids"
    done
    mkdir -p -m 0700 "$W/home" "$W/run"
    chown 65534:65534 "$W/home" "$W/run"
    # The runtime directory where a login would put it: podman names its API sockets
    # $XDG_RUNTIME_DIR/libpod/tmp/<64 hex>.net, too long for a UNIX socket under $W. A fresh /run
    # in this mount namespace holds it (bound from $W/run, so that a kept world keeps it).
    mount -t tmpfs -o mode=0755,size=1m tapir-test-run /run
    mkdir -p /run/user/65534
    mount --bind "$W/run" /run/user/65534
    # A program, not a function, so that `bounded as_rootless` and `start NAME as_rootless` work.
    cat >"$W/bin/as_rootless" <<EOF
#!/bin/sh
exec setpriv --reuid=65534 --regid=65534 --clear-groups -- env HOME='$W/home' XDG_RUNTIME_DIR=/run/user/65534 "\$@"
EOF
    chmod 0755 "$W/bin/as_rootless"
    s4nn_api() {
        as_user actor s4nn-api "$1" "$2"
    }
fi
