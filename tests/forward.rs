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
/// as the source the guest sees (loopback clients appear as 10.0.2.2, as with slirp4netns).
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
check_eq "what the guest saw of a client on the host's ::1" "$out" "peer 10.0.2.2"
out=$(in_remote timeout 10 socat -t 5 - TCP:198.51.100.1:18091 </dev/null)
check_eq "what the guest saw of a client on the remote host" "$out" "peer 198.51.100.10"
touch "$W/tmp/host-done"
wait "$guest_pid"
"#,
        );
}
