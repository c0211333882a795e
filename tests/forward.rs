//! `tapir run -p`: host ports forwarded to servers in the guest, TCP and UDP, with and without
//! a host address.
//!
//! The checks also run against Debian's slirp4netns, whose forwards are added through its API
//! socket instead of `-p`: that proves the guest servers and the host-side checks right.

mod common;

use common::World;

/// The guest's servers: a TCP echo on 8000 and a UDP echo on 8001, until the host is done.
const GUEST_SERVERS: &str = r#"
guest_servers='
actor udp-echo 0.0.0.0 8001 &
socat TCP-LISTEN:8000,reuseaddr,fork EXEC:cat &
until [ -n "$(ss -Hltn "sport = :8000")" ] && [ -n "$(ss -Hlun "sport = :8001")" ]; do sleep 0.05; done
touch "$W/tmp/guest-ready"
until [ -e "$W/tmp/host-done" ]; do sleep 0.05; done
kill $(jobs -p)'
"#;

/// Expects `forwarding_guest` to run `$guest_servers` in a guest with 127.0.0.1:18080 and
/// 0.0.0.0:18082 forwarded to its TCP 8000, and 127.0.0.1:18081 to its UDP 8001.
const FORWARD_CHECKS: &str = r#"
start guest forwarding_guest
guest_pid=$!
wait_ready "$W/tmp/guest-ready" "$guest_pid"
wait_port tcp 18080
wait_port tcp 18082
wait_port udp 18081

head -c 1000000 /dev/urandom > "$W/tmp/payload"
want=$(sha256sum < "$W/tmp/payload")
got=$(timeout 10 socat -t 5 - TCP:127.0.0.1:18080 < "$W/tmp/payload" | sha256sum)
check_eq "sha256 of 1 MB echoed through 127.0.0.1:18080 -> 8000" "$got" "$want"
got=$(timeout 10 socat -t 5 - TCP:127.0.0.1:18082 < "$W/tmp/payload" | sha256sum)
check_eq "sha256 of 1 MB echoed through 18082 -> 8000" "$got" "$want"
out=$(actor udp-ask 127.0.0.1 18081 64)
check_eq "datagram through 127.0.0.1:18081 -> 8001/udp" "$out" "echo from 127.0.0.1:18081 64 bytes ok"

touch "$W/tmp/host-done"
rc=0
wait "$guest_pid" || rc=$?
check_eq "exit status of the forwarding guest once its command ended" "$rc" 0
"#;

/// With tapir, the forwards are `-p` options, and tapir must exit 0 with its guest.
const TAPIR_FORWARDS: &str = r#"
forwarding_guest() {
    tapir_run -p 127.0.0.1:18080:8000 -p 18082:8000/tcp -p 127.0.0.1:18081:8001/udp \
        -- bash -c "$guest_servers"
}
"#;

/// With slirp4netns, the same forwards go through its API socket (slirp4netns-contract.md).
const SLIRP4NETNS_FORWARDS: &str = r#"
forwarding_guest() {
    local proto host port guest_port
    while read -r proto host port guest_port; do
        printf '{"execute":"add_hostfwd","arguments":{"proto":"%s","host_addr":"%s","host_port":%s,"guest_port":%s}}' \
            "$proto" "$host" "$port" "$guest_port" |
            timeout 5 socat -t 2 - "UNIX-CONNECT:$W/tmp/slirp4netns.sock" | grep -q '"return"'
    done <<'EOF'
tcp 127.0.0.1 18080 8000
tcp 0.0.0.0 18082 8000
udp 127.0.0.1 18081 8001
EOF
    guest bash -c "$guest_servers"
}
"#;

#[test]
fn forwards_reach_guest_servers() {
    World::tapir("forwards")
        .needs(&["socat", "sha256sum"])
        .run_ok(&format!("{GUEST_SERVERS}{TAPIR_FORWARDS}{FORWARD_CHECKS}"));
}

#[test]
fn slirp4netns_reference_forwards() {
    World::slirp4netns("slirp_forwards")
        .needs(&["socat", "sha256sum"])
        .run_ok(&format!(
            "{GUEST_SERVERS}{SLIRP4NETNS_FORWARDS}{FORWARD_CHECKS}"
        ));
}

/// Beyond slirp4netns: a forward listening on an IPv6 host address (the connection reaches the
/// guest's IPv4 address), and a client that is not on the host's loopback keeps its own address
/// as the source the guest sees. A client on the host's loopback is spliced to the guest's
/// own loopback (it appears as 127.0.0.1, as with pasta).
#[test]
fn ipv6_host_address_and_real_client_source() {
    World::tapir("forward_v6_source")
        .with_remote()
        .needs(&["socat", "python3"])
        .run_ok(
            r#"
guest_servers='
actor tcp-whoami 0.0.0.0 8000 >"$W/tmp/whoami.log" 2>&1 &
until [ -n "$(ss -Hltn "sport = :8000")" ]; do sleep 0.05; done
touch "$W/tmp/guest-ready"
until [ -e "$W/tmp/host-done" ]; do sleep 0.05; done
kill $(jobs -p)'
start guest tapir_run -p '[::1]:18090:8000' -p 18091:8000 -- bash -c "$guest_servers"
guest_pid=$!
wait_ready "$W/tmp/guest-ready" "$guest_pid"
wait_port tcp 18091
out=$(timeout 10 socat -t 5 - 'TCP6:[::1]:18090' </dev/null)
check_eq "what the guest saw of a client on the host's ::1" "$out" "peer 127.0.0.1"
out=$(in_remote timeout 10 socat -t 5 - TCP:198.51.100.1:18091 </dev/null)
check_eq "what the guest saw of a client on the remote host" "$out" "peer 198.51.100.10"
touch "$W/tmp/host-done"
wait "$guest_pid"
"#,
        );
}

/// Loopback clients and the splice: spliced to the guest's 127.0.0.1 by default; through the
/// TAP (appearing as 10.0.2.2) when the guest's server does not listen on its loopback, and
/// with `--no-splice`. A shell's `wait` in the guest does not wait for tapir's socket factory,
/// and the factory is gone once tapir is.
#[test]
fn loopback_clients_are_spliced_unless_refused_or_turned_off() {
    World::tapir("forward_splice")
        .needs(&["socat", "python3"])
        .run_ok(
            r#"
guest_servers='
actor tcp-whoami 0.0.0.0 8000 >"$W/tmp/whoami.log" 2>&1 &
actor tcp-whoami 10.0.2.100 8002 >"$W/tmp/whoami2.log" 2>&1 &
until [ -n "$(ss -Hltn "sport = :8000")" ] && [ -n "$(ss -Hltn "sport = :8002")" ]; do sleep 0.05; done
touch "$W/tmp/guest-ready"
until [ -e "$W/tmp/host-done" ]; do sleep 0.05; done
kill $(jobs -p)'
for mode in splice no-splice; do
    rm -f "$W/tmp/guest-ready" "$W/tmp/host-done"
    flags=()
    [ $mode = no-splice ] && flags=(--no-splice)
    start guest tapir_run "${flags[@]}" -p 127.0.0.1:18090:8000 -p 127.0.0.1:18092:8002 \
        -- bash -c "$guest_servers"
    guest_pid=$!
    wait_ready "$W/tmp/guest-ready" "$guest_pid"
    wait_port tcp 18090
    want="peer 127.0.0.1"
    [ $mode = no-splice ] && want="peer 10.0.2.2"
    for i in 1 2 3; do
        out=$(timeout 10 socat -t 5 - TCP:127.0.0.1:18090 </dev/null)
        check_eq "$mode: what the guest's 0.0.0.0 server saw of a host loopback client" "$out" "$want"
    done
    out=$(timeout 10 socat -t 5 - TCP:127.0.0.1:18092 </dev/null)
    check_eq "$mode: what a server on 10.0.2.100 only saw of a host loopback client" "$out" "peer 10.0.2.2"
    if [ $mode = splice ]; then
        # The guest can kill the factory (it runs as the guest's root): forwards go on,
        # through the TAP. The factory is the session leader among these runs' processes.
        factory=$(ps -u 65534 -o pid=,sid=,args= | awk '$1 == $2 && /18090:8000/ { print $1 }')
        [ -n "$factory" ] || fail "no socket factory among: $(ps -u 65534 -o pid=,sid=,args=)"
        kill -9 $factory
        out=$(timeout 10 socat -t 5 - TCP:127.0.0.1:18090 </dev/null)
        check_eq "what the guest saw of a loopback client once the factory was killed" "$out" "peer 10.0.2.2"
    fi
    touch "$W/tmp/host-done"
    wait "$guest_pid"
done

# With a TCP forward the factory exists; the command's own `wait` must not wait for it.
start waiter tapir_run -p 127.0.0.1:18094:8000 -- bash -c 'sleep 0.2 & wait; echo waited'
waiter_pid=$!
rc=0
timeout 10 tail --pid="$waiter_pid" -f /dev/null || rc=$?
check_eq "the guest shell's wait returned (timeout's status)" "$rc" 0
sleep 0.5
left=$(pgrep -u 65534 -f "127.0.0.1:1809[04]:8000" || true)
check_eq "processes of these tapir runs left after them" "$left" ""
"#,
        );
}

/// `-T`: the guest's clients of its own 127.0.0.1 reach the host's, spliced. The first
/// connect comes as soon as the command starts, so the listener must already be there; the
/// host sees tapir's connection from its loopback; a host port nobody listens on resets the
/// guest's client, and nothing arrives; connections past the flow limit are reset too.
#[test]
fn guest_loopback_ports_reach_the_host_loopback() {
    World::tapir("to_host").needs(&["socat", "python3"]).run_ok(
        r#"
start echo socat TCP-LISTEN:18110,bind=127.0.0.1,reuseaddr,fork EXEC:cat
start whoami actor tcp-whoami 127.0.0.1 18112
wait_port tcp 18110
wait_port tcp 18112
head -c 1000000 /dev/urandom > "$W/tmp/payload"
want=$(sha256sum < "$W/tmp/payload")
tapir_run -T 18111:18110 -T 18112 -T 18113:18114 -- bash -c '
    cd "$1"
    timeout 10 socat -t 5 - TCP:127.0.0.1:18111 < payload | sha256sum > echoed
    timeout 10 socat -t 5 - TCP:127.0.0.1:18112 < /dev/null > whoami
    rc=0
    actor tcp-ask 127.0.0.1 18113 > refused 2>&1 || rc=$?
    echo $rc > refused-rc' sh "$W/tmp"
check_eq "sha256 of 1 MB echoed from the guest's 127.0.0.1:18111 to the host's 18110" \
    "$(cat "$W/tmp/echoed")" "$want"
check_eq "what the host's server saw of the guest's client" "$(cat "$W/tmp/whoami")" \
    "peer 127.0.0.1"
check_match "the guest's client of a closed host port" "$(cat "$W/tmp/refused")" \
    "^tcp-ask failed: \[Errno 104\] Connection reset by peer$"
check [ "$(cat "$W/tmp/refused-rc")" != 0 ]

# A guest opening more -T connections than the flow limit: the ones past it are reset, and
# those held go on. The splices count against the limit for connections through the TAP too:
# the guest's SYN to the gateway goes unanswered.
tapir_run --limit tcp-flows=2 -T 18111:18110 -- bash -c '
    cd "$1"
    mkdir h1 h2
    actor tcp-hold 127.0.0.1 18111 h1 & actor tcp-hold 127.0.0.1 18111 h2 &
    until [ -e h1/1 ] && [ -e h2/1 ]; do sleep 0.05; done
    actor tcp-ask 127.0.0.1 18111 > third 2>&1
    actor tcp-connect 10.0.2.2 18110 1 > fourth 2>&1
    touch h1/go h2/go
    wait' sh "$W/tmp"
for h in h1 h2; do
    check_eq "$h: held connection, first exchange" "$(cat "$W/tmp/$h/1")" "one ok"
    check_eq "$h: held connection, after the third was refused" "$(cat "$W/tmp/$h/2")" "two ok"
done
check_match "a -T connection past the flow limit" "$(cat "$W/tmp/third")" \
    "^tcp-ask failed: \[Errno 104\] Connection reset by peer$"
check_match "a TAP connection past the flow limit" "$(cat "$W/tmp/fourth")" "^timed out after"
"#,
    );
}
