//! The privileged kernel path: `tapir run --network bridge|host|none` and `tapir network prune`,
//! as root, each scenario inside its own network namespace (the World harness's "host"), with a
//! "remote host" namespace behind a veth (198.51.100.10, reached from the host's
//! 198.51.100.1). Nothing here touches the machine's own bridge, routes or firewall: tapir's
//! bridge, veths and `inet tapir` table are all made inside the scenario's namespaces, and the
//! lease file is in the world's directory (TAPIR_STATE_DIR).
//!
//! Containers run `actor tcp-whoami` servers, which answer `peer ADDRESS`: the source address a
//! connection arrived with, so the checks see masquerade and DNAT at work. Every scenario ends
//! by comparing `ip -j link`, `nft -j list ruleset`, ip_forward and the leases with what they
//! were before tapir ran: a teardown must leave zero links, rules and leases.

mod common;

use common::World;

/// Shared verbs: the snapshot of what tapir may change, and a container that serves whoami on
/// 5000, writes its address, runs CHECKS (a shell snippet) and waits for `$W/tmp/NAME.done`.
const KERNEL_VERBS: &str = r#"
export TAPIR_STATE_DIR="$W/state"
# tapir names the state directory that manages a network namespace in /run/tapir: a private one.
mkdir -p /run/tapir
mount -t tmpfs -o mode=0755 tapir-test-run /run/tapir
snapshot() {
    ip -j link
    nft -j list ruleset
    cat /proc/sys/net/ipv4/ip_forward
}
leases() {
    python3 -c 'import json,sys; print(len(json.load(open(sys.argv[1]))["leases"]))' "$TAPIR_STATE_DIR/leases.json"
}
# container NAME CHECKS TAPIR_RUN_ARGS...: a bridge container in the background ($!).
container() {
    local name=$1 checks=$2
    shift 2
    start "$name" "$TAPIR" run --network bridge "$@" -- bash -c '
        actor tcp-whoami 0.0.0.0 5000 &
        until [ -n "$(ss -Hltn "sport = :5000")" ]; do sleep 0.05; done
        ip -4 -br addr show dev eth0 | awk "{print \$3}" > "$W/tmp/'"$name"'.addr"
        '"$checks"'
        touch "$W/tmp/'"$name"'.ready"
        until [ -e "$W/tmp/'"$name"'.done" ]; do sleep 0.05; done
        kill $(jobs -p)'
}
# killed_run NAME TAPIR_RUN_ARGS...: a bridge run killed with SIGKILL once its command runs, so
# that nothing is torn down (its lease, veth and rules stay); its pid is left in $killed.
killed_run() {
    local name=$1
    shift
    start "$name" "$TAPIR" run --network bridge "$@" -- \
        bash -c 'touch "$W/tmp/'"$name"'.ready"; exec sleep 1000'
    killed=$!
    wait_ready "$W/tmp/$name.ready" "$killed"
    kill -9 "$killed"
    wait_gone 5 "$killed" "the killed tapir"
}
# finish NAME PID: lets the container end; its tapir must exit 0.
finish() {
    touch "$W/tmp/$1.done"
    local rc=0
    wait "$2" || rc=$?
    check_eq "exit status of tapir run for $1" "$rc" 0
}
before=$(snapshot)
check_eq "ip_forward before" "$(cat /proc/sys/net/ipv4/ip_forward)" 0
no_leftovers() {
    check_eq "links, nftables ruleset and ip_forward after teardown" "$(snapshot)" "$before"
    check_eq "leases after teardown" "$(leases)" 0
}
"#;

fn world(name: &str) -> World {
    World::tapir(name)
        .with_remote()
        .needs(&["nft", "ping", "awk", "python3"])
        .time_limits(90, 60)
}

fn run(world: World, body: &str) {
    world.run_ok(&format!("{KERNEL_VERBS}\n{body}"));
}

/// One container: its gateway, a remote host through MASQUERADE, its published TCP and UDP
/// ports from the remote host (DNAT, source kept) and from the host itself (own address, and 127.0.0.1
/// through route_localnet and the masquerade mark); then nothing left.
#[test]
fn bridge_gateway_masquerade_and_published_ports() {
    run(
        world("bridge_gateway_masquerade_and_published_ports"),
        r#"
start remote-whoami in_remote actor tcp-whoami 0.0.0.0 9000
wait_port in_remote tcp 9000
container ct1 '
    actor udp-echo 0.0.0.0 7 > "$W/log/ct1-udp.log" 2>&1 &
    until [ -n "$(ss -Hlun "sport = :7")" ]; do sleep 0.05; done
    ping -c 1 -W 2 172.30.0.1 > /dev/null && echo reached > "$W/tmp/gateway"
    actor tcp-ask 198.51.100.10 9000 > "$W/tmp/egress"
' -p 5005:5000 -p 5007:7/udp
ct1=$!
wait_ready "$W/tmp/ct1.ready" "$ct1"
check_eq "container address (first of 172.30.0.0/16 after the gateway)" "$(cat "$W/tmp/ct1.addr")" 172.30.0.2/16
check_eq "container -> bridge gateway (ping)" "$(cat "$W/tmp/gateway")" reached
check_eq "container -> remote: the remote sees the host's address" "$(cat "$W/tmp/egress")" "peer 198.51.100.1"
check_eq "remote -> host:5005 -> container: source kept" \
    "$(in_remote actor tcp-ask 198.51.100.1 5005)" "peer 198.51.100.10"
check_eq "remote -> host:5007/udp -> container" \
    "$(in_remote actor udp-ask 198.51.100.1 5007 32)" "echo from 198.51.100.1:5007 32 bytes ok"
check_match "the UDP echo saw the remote's own address" "$(cat "$W/log/ct1-udp.log")" "from 198\.51\.100\.10:"
check_eq "host -> its own 198.51.100.1:5005" "$(actor tcp-ask 198.51.100.1 5005)" "peer 198.51.100.1"
check_eq "host -> 127.0.0.1:5005 (masqueraded to the gateway)" \
    "$(actor tcp-ask 127.0.0.1 5005)" "peer 172.30.0.1"
check_match "the bridge is up with the gateway" "$(ip -4 -br addr show dev tapir0)" "UP +172\.30\.0\.1/16"
check_match "the DNAT rule is in tapir's table" "$(nft list table inet tapir)" "dnat ip to 172\.30\.0\.2:5000"
check_eq "ip_forward while a container runs" "$(cat /proc/sys/net/ipv4/ip_forward)" 1
check_eq "leases while a container runs" "$(leases)" 1
finish ct1 "$ct1"
no_leftovers
"#,
    );
}

/// Two containers at once on one bridge: distinct addresses, each reaches the other by address,
/// the second reaches the first's published port through the host (hairpin), the first its
/// own; the bridge and the table go with the last of them.
#[test]
fn two_concurrent_containers_share_the_bridge() {
    run(
        world("two_concurrent_containers_share_the_bridge"),
        r#"
container ct1 '' -p 5005:5000
ct1=$!
container ct2 '' -p 5006:5000
ct2=$!
wait_ready "$W/tmp/ct1.ready" "$ct1"
wait_ready "$W/tmp/ct2.ready" "$ct2"
a1=$(cut -d/ -f1 "$W/tmp/ct1.addr")
a2=$(cut -d/ -f1 "$W/tmp/ct2.addr")
check_eq "two addresses, distinct, the first two of the subnet" "$(printf '%s\n' "$a1" "$a2" | sort | tr '\n' ' ')" "172.30.0.2 172.30.0.3 "
check_eq "leases" "$(leases)" 2
ct_pid() { pgrep -P "$1" -x bash; }
p1=$(ct_pid "$ct1")
p2=$(ct_pid "$ct2")
check_eq "ct2 -> ct1 by address" "$(nsenter --target "$p2" --net -- actor tcp-ask "$a1" 5000)" "peer $a2"
check_eq "ct1 -> ct2 by address" "$(nsenter --target "$p1" --net -- actor tcp-ask "$a2" 5000)" "peer $a1"
check_eq "ct2 -> host:5005 -> ct1 (hairpin, masqueraded)" \
    "$(nsenter --target "$p2" --net -- actor tcp-ask 198.51.100.1 5005)" "peer 172.30.0.1"
check_eq "ct1 -> host:5005 -> ct1 itself (hairpin)" \
    "$(nsenter --target "$p1" --net -- actor tcp-ask 198.51.100.1 5005)" "peer 172.30.0.1"
check_eq "remote -> host:5006 -> ct2" "$(in_remote actor tcp-ask 198.51.100.1 5006)" "peer 198.51.100.10"
finish ct1 "$ct1"
check_match "the bridge stays while ct2 runs" "$(ip -br link show dev tapir0)" "tapir0"
check_eq "remote -> host:5006 -> ct2 after ct1 left" "$(in_remote actor tcp-ask 198.51.100.1 5006)" "peer 198.51.100.10"
check_eq "ct1's port is gone with it" "$(in_remote actor tcp-connect 198.51.100.1 5005 2 | cut -d' ' -f1)" refused
check_eq "leases" "$(leases)" 1
finish ct2 "$ct2"
no_leftovers
"#,
    );
}

/// --network host shares the host's namespace; --network none has loopback only; neither
/// changes anything; without root, one sentence and a non-zero exit.
#[test]
fn host_and_none_modes_and_refusals() {
    run(
        world("host_and_none_modes_and_refusals"),
        r#"
host_ns=$(readlink /proc/self/ns/net)
check_eq "--network host: the host's namespace" "$("$TAPIR" run --network host -- readlink /proc/self/ns/net)" "$host_ns"
check_eq "--network host: the host's links" "$("$TAPIR" run --network host -- ip -br link | awk '{print $1}' | tr '\n' ' ')" \
    "$(ip -br link | awk '{print $1}' | tr '\n' ' ')"
none_ns=$("$TAPIR" run --network none -- readlink /proc/self/ns/net)
[ "$none_ns" != "$host_ns" ] || fail "--network none ran in the host's namespace"
check_match "--network none: loopback only, up" "$("$TAPIR" run --network none -- ip -br link)" "^lo +UNKNOWN"
check_eq "--network none: one link" "$("$TAPIR" run --network none -- ip -br link | wc -l)" 1
check_eq "--network none: exit status passes through" "$("$TAPIR" run --network none -- sh -c 'exit 7' || echo $?)" 7
rc=0
err=$(as_user "$TAPIR" run --network bridge -- true 2>&1) || rc=$?
check_eq "non-root bridge: exit status" "$rc" 125
check_eq "non-root bridge: one sentence" "$err" "tapir: --network bridge needs root; the default rootless path (without --network) doesn't"
rc=0
err=$("$TAPIR" run --network bridge --subnet 172.30.0.1/16 -- true 2>&1) || rc=$?
check_eq "bad subnet: exit status" "$rc" 125
check_match "bad subnet: names it" "$err" '172\.30\.0\.1/16'
rc=0
err=$("$TAPIR" run --network none -p 8080:80 -- true 2>&1) || rc=$?
check_eq "-p with none: refused" "$rc:$err" "125:tapir: -p does not apply to --network none"
rc=0
err=$("$TAPIR" run --network host --mtu 9000 -- true 2>&1) || rc=$?
check_eq "--mtu with host: refused" "$rc:$err" "125:tapir: --mtu does not apply to --network host"
check_match "--mtu with bridge: the container's interface" \
    "$("$TAPIR" run --network bridge --mtu 9000 -- ip -o link show dev eth0)" " mtu 9000 "
rc=0
err=$("$TAPIR" run --network bridge --mtu 70000 -- true 2>&1) || rc=$?
check_eq "--mtu out of range with bridge: exit status" "$rc" 125
check_match "--mtu out of range with bridge: names it" "$err" '70000'
no_leftovers_modes() {
    check_eq "links, nftables ruleset and ip_forward" "$(snapshot)" "$before"
}
no_leftovers_modes
"#,
    );
}

/// A killed run (SIGKILL: no teardown) leaves a lease, its bridge and its rules; the next run
/// reclaims the lease (and gets the same address), and `tapir network prune` removes the
/// leftovers of another killed run, down to nothing.
#[test]
fn killed_runs_are_reclaimed_and_pruned() {
    run(
        world("killed_runs_are_reclaimed_and_pruned"),
        r#"
killed_run killed1 -p 5005:5000
check_eq "the killed run's lease is left" "$(leases)" 1
check_match "its rules are left" "$(nft list table inet tapir)" "dnat ip to 172\.30\.0\.2:5000"

out=$("$TAPIR" run --network bridge -p 5005:5000 -- ip -4 -br addr show dev eth0 | awk '{print $3}')
check_eq "the next run reclaims the stale address" "$out" 172.30.0.2/16
no_leftovers

killed_run killed2 -p 5006:5000
check_match "the bridge is left" "$(ip -br link)" "tapir0"
out=$("$TAPIR" network prune)
check_eq "prune names what it removed" "$out" "removed the stale lease of run-$killed"
no_leftovers
check_eq "a second prune has nothing to do" "$("$TAPIR" network prune)" ""
"#,
    );
}

/// Refused runs change nothing: a host port another container publishes, a second state
/// directory while the first holds leases (it would rebuild the first's table), a --bridge that
/// names an interface which is not a bridge. A bridge that existed before tapir is used and kept. A
/// refused run still reclaims what a killed run left (its lease, veth and rules), as a run that
/// succeeds does: nothing of the dead run waits for the next success or a prune.
#[test]
fn refusals_leave_nothing_and_foreign_bridges_stay() {
    run(
        world("refusals_leave_nothing_and_foreign_bridges_stay"),
        r#"
container ct1 '' -p 5005:5000
ct1=$!
wait_ready "$W/tmp/ct1.ready" "$ct1"
killed_run killed -p 5007:5000
check_eq "leases, the killed run's included" "$(leases)" 2
check_match "the killed run's rule" "$(nft list table inet tapir)" "dport 5007"
rc=0
err=$("$TAPIR" run --network bridge -p 5005:80 -- touch "$W/tmp/ran" 2>&1) || rc=$?
check_eq "port taken: refused" "$rc:$err" "125:tapir: host port 5005/tcp is already published by \"run-$ct1\""
[ ! -e "$W/tmp/ran" ] || fail "port taken: the command ran"
check_eq "port taken: ct1's lease only (the killed run's reclaimed)" "$(leases)" 1
if nft list table inet tapir | grep -q "dport 5007"; then
    fail "the killed run's rule outlived the refusal: $(nft list table inet tapir)"
fi
check_eq "port taken: ct1 still served" "$(in_remote actor tcp-ask 198.51.100.1 5005)" "peer 198.51.100.10"
rc=0
err=$(TAPIR_STATE_DIR="$W/other" "$TAPIR" run --network bridge --bridge other0 --subnet 10.89.0.0/24 \
    -- touch "$W/tmp/ran" 2>&1) || rc=$?
check_eq "another state directory: refused" "$rc" 125
check_match "another state directory: names the one in charge" "$err" \
    "are managed from the state directory [^ ]*/state, which holds 1 lease\(s\)"
[ ! -e "$W/tmp/ran" ] || fail "another state directory: the command ran"
check_eq "another state directory: ct1 still served" "$(in_remote actor tcp-ask 198.51.100.1 5005)" "peer 198.51.100.10"
finish ct1 "$ct1"
no_leftovers
check_eq "another state directory, once the first has no lease" \
    "$(TAPIR_STATE_DIR="$W/other" "$TAPIR" run --network bridge -- ip -4 -br addr show dev eth0 | awk '{print $3}')" \
    172.30.0.2/16
no_leftovers

rc=0
err=$("$TAPIR" run --network bridge --bridge to-remote --subnet 10.88.0.0/24 -- touch "$W/tmp/ran" 2>&1) || rc=$?
check_eq "--bridge naming a veth: refused" "$rc:$err" \
    "125:tapir: --bridge \"to-remote\" is not usable: an interface of that name exists and is not a bridge"
[ ! -e "$W/tmp/ran" ] || fail "--bridge naming a veth: the command ran"
no_leftovers

ip link add br-own type bridge
before=$(snapshot)
out=$("$TAPIR" run --network bridge --bridge br-own --subnet 10.88.0.0/24 -- ip -4 -br addr show dev eth0 | awk '{print $3}')
check_eq "on a bridge of our own: an address" "$out" 10.88.0.2/24
check_match "the foreign bridge stays" "$(ip -br link show dev br-own)" "^br-own "
check_eq "the foreign bridge keeps the gateway address" "$(ip -4 -br addr show dev br-own | awk '{print $3}')" 10.88.0.1/24
check_eq "the foreign bridge keeps route_localnet" "$(cat /proc/sys/net/ipv4/conf/br-own/route_localnet)" 1
check_eq "leases after" "$(leases)" 0
check_eq "nftables ruleset after" "$(nft -j list ruleset)" "$(sed -n 2p <<<"$before")"
"#,
    );
}
