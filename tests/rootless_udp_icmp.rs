//! Guest UDP and ICMP echo through `tapir run`: to the host's loopback via 10.0.2.2 and to the
//! remote host, with replies coming back from the address the guest sent to.
//!
//! Every scenario here also runs against Debian's slirp4netns (`slirp4netns_reference_*`).

mod common;

use common::World;

/// Datagrams of 32 and 30000 bytes (one frame at the default MTU of 65520) to an echo server on
/// the host's 127.0.0.1:5007; the guest's unconnected socket must get each echo, whole, from
/// 10.0.2.2:5007, and the host must see them come from its loopback.
const UDP_VIA_GATEWAY: &str = r#"
start echo actor udp-echo 127.0.0.1 5007
wait_port udp 5007
out=$(guest actor udp-ask 10.0.2.2 5007 32)
check_eq "32-byte datagram to 10.0.2.2:5007" "$out" "echo from 10.0.2.2:5007 32 bytes ok"
out=$(guest actor udp-ask 10.0.2.2 5007 30000)
check_eq "30000-byte datagram to 10.0.2.2:5007" "$out" "echo from 10.0.2.2:5007 30000 bytes ok"
check grep -q "^from 127\.0\.0\.1:[0-9]* 30000 bytes" "$W/log/echo.log"
"#;

#[test]
fn udp_echo_via_gateway() {
    World::tapir("udp_via_gateway").run_ok(UDP_VIA_GATEWAY);
}

#[test]
fn slirp4netns_reference_udp_via_gateway() {
    World::slirp4netns("slirp_udp_via_gateway").run_ok(UDP_VIA_GATEWAY);
}

/// A datagram to the remote host leaves through a host socket: the remote sees 198.51.100.1.
const UDP_TO_REMOTE: &str = r#"
start echo in_remote actor udp-echo 0.0.0.0 5007
wait_port in_remote udp 5007
out=$(guest actor udp-ask 198.51.100.10 5007 100)
check_eq "datagram to 198.51.100.10:5007" "$out" "echo from 198.51.100.10:5007 100 bytes ok"
check grep -q "^from 198\.51\.100\.1:[0-9]* 100 bytes" "$W/log/echo.log"
"#;

#[test]
fn udp_echo_to_remote_host() {
    World::tapir("udp_to_remote")
        .with_remote()
        .run_ok(UDP_TO_REMOTE);
}

#[test]
fn slirp4netns_reference_udp_to_remote() {
    World::slirp4netns("slirp_udp_to_remote")
        .with_remote()
        .run_ok(UDP_TO_REMOTE);
}

/// ping from the guest (root in its user namespace, so a raw socket there) to the gateway and to
/// the remote host; the helper answers through ping sockets, which the prelude allows for
/// uid 65534 with net.ipv4.ping_group_range in the scenario's own network namespace.
const PING: &str = r#"
out=$(guest ping -c 3 -i 0.2 -W 2 10.0.2.2)
check_match "ping 10.0.2.2" "$out" ' 3 received'
out=$(guest ping -c 3 -i 0.2 -W 2 -s 1000 198.51.100.10)
check_match "ping -s 1000 198.51.100.10" "$out" ' 3 received'
"#;

#[test]
fn ping_gateway_and_remote_host() {
    World::tapir("ping")
        .with_remote()
        .needs(&["ping"])
        .run_ok(PING);
}

#[test]
fn slirp4netns_reference_ping() {
    World::slirp4netns("slirp_ping")
        .with_remote()
        .needs(&["ping"])
        .run_ok(PING);
}
