//! Guest → host TCP through `tapir run`: the gateway to the host's loopback, the remote host,
//! half-close, refused connects, bulk transfers both ways, and --disable-host-loopback.
//!
//! Each scenario that does not depend on a tapir-only option also runs against Debian's
//! slirp4netns (`slirp4netns_reference_*`), which proves the scenario and the harness right.

mod common;

use common::World;

/// A file served by python's http.server on the host's 127.0.0.1:8080, fetched via 10.0.2.2.
const HTTP_VIA_GATEWAY: &str = r#"
mkdir -p "$W/www"
echo 'hello from the host' > "$W/www/hello.txt"
head -c 3000000 /dev/urandom > "$W/www/blob"
start web python3 -m http.server --bind 127.0.0.1 8080 --directory "$W/www"
wait_port tcp 8080
out=$(guest curl -sS --max-time 10 http://10.0.2.2:8080/hello.txt)
check_eq "body of http://10.0.2.2:8080/hello.txt" "$out" "hello from the host"
sum=$(guest sh -c 'curl -sS --max-time 10 http://10.0.2.2:8080/blob | sha256sum')
check_eq "sha256 of a 3 MB file fetched via 10.0.2.2" "$sum" "$(sha256sum < "$W/www/blob")"
"#;

#[test]
fn http_via_gateway_reaches_host_loopback() {
    World::tapir("http_via_gateway")
        .needs(&["curl", "sha256sum"])
        .run_ok(HTTP_VIA_GATEWAY);
}

#[test]
fn slirp4netns_reference_http_via_gateway() {
    World::slirp4netns("slirp_http_via_gateway")
        .needs(&["curl", "sha256sum"])
        .run_ok(HTTP_VIA_GATEWAY);
}

/// A flow to any other address leaves through the host's own sockets, so the remote host sees
/// the host's address (198.51.100.1) as its source, not the guest's.
const TCP_TO_REMOTE: &str = r#"
start whoami in_remote actor tcp-whoami 0.0.0.0 7000
wait_port in_remote tcp 7000
out=$(guest actor tcp-ask 198.51.100.10 7000)
check_eq "source address the remote host saw" "$out" "peer 198.51.100.1"
"#;

#[test]
fn tcp_to_remote_host_leaves_from_host_address() {
    World::tapir("tcp_to_remote")
        .with_remote()
        .run_ok(TCP_TO_REMOTE);
}

#[test]
fn slirp4netns_reference_tcp_to_remote() {
    World::slirp4netns("slirp_tcp_to_remote")
        .with_remote()
        .run_ok(TCP_TO_REMOTE);
}

/// The guest sends 1 MB and shuts down its write side; the host reads to EOF, waits half a
/// second with the connection half-closed, then echoes everything back. The guest must still
/// receive all of it: a half-close must not be turned into a full close.
const HALF_CLOSE: &str = r#"
start echo actor tcp-echo-after-eof 127.0.0.1 5003
wait_port tcp 5003
out=$(guest actor tcp-half-close 10.0.2.2 5003 1000000)
check_eq "echo after the guest's half-close" "$out" \
    "sent 1000000, received 1000000 after half-close, sha256 equal"
check grep -q "read 1000000 bytes until EOF" "$W/log/echo.log"
"#;

#[test]
fn half_close_keeps_the_other_direction_open() {
    World::tapir("half_close").run_ok(HALF_CLOSE);
}

#[test]
fn slirp4netns_reference_half_close() {
    World::slirp4netns("slirp_half_close").run_ok(HALF_CLOSE);
}

/// A connect to a closed port, on the host's loopback or on the remote host, is refused at once
/// (the host's RST becomes the guest's RST), not left to time out.
const REFUSED: &str = r#"
out=$(guest actor tcp-connect 10.0.2.2 9 10)
check_match "connect to closed 10.0.2.2:9" "$out" '^refused after [01]\.[0-9]+ s$'
out=$(guest actor tcp-connect 198.51.100.10 9 10)
check_match "connect to closed 198.51.100.10:9" "$out" '^refused after [01]\.[0-9]+ s$'
"#;

#[test]
fn connect_to_closed_port_is_refused_quickly() {
    World::tapir("refused").with_remote().run_ok(REFUSED);
}

#[test]
fn slirp4netns_reference_refused() {
    World::slirp4netns("slirp_refused")
        .with_remote()
        .run_ok(REFUSED);
}

/// 100 MB of random bytes from the guest to a sink on the host's loopback, which answers with
/// the length and sha256 of what arrived. The guest waits for that answer: under `tapir run` the
/// guest's network ends with its command, so a sender that exits right after its last write can
/// lose what is still in flight (as it would in any container whose network namespace dies).
const BULK_GUEST_TO_HOST: &str = r#"
head -c 100M /dev/urandom > "$W/tmp/blob"
start sink actor tcp-sha256 127.0.0.1 5001
wait_port tcp 5001
out=$(guest actor tcp-send "$W/tmp/blob" 10.0.2.2 5001)
check_eq "what the host received of 100 MB from the guest" "$out" \
    "104857600 bytes sha256 $(sha256sum < "$W/tmp/blob" | cut -d' ' -f1)"
"#;

/// 100 MB from a source on the host's loopback to the guest, checked in the guest.
const BULK_HOST_TO_GUEST: &str = r#"
head -c 100M /dev/urandom > "$W/tmp/blob"
start source socat -u "OPEN:$W/tmp/blob" TCP-LISTEN:5002,bind=127.0.0.1,reuseaddr
wait_port tcp 5002
got=$(guest sh -c 'socat -u TCP:10.0.2.2:5002 - | sha256sum')
check_eq "sha256 of 100 MB received by the guest" "$got" "$(sha256sum < "$W/tmp/blob")"
"#;

#[test]
fn bulk_100mb_guest_to_host() {
    World::tapir("bulk_guest_to_host")
        .needs(&["sha256sum"])
        .time_limits(150, 120)
        .run_ok(BULK_GUEST_TO_HOST);
}

#[test]
fn bulk_100mb_host_to_guest() {
    World::tapir("bulk_host_to_guest")
        .needs(&["socat", "sha256sum"])
        .time_limits(150, 120)
        .run_ok(BULK_HOST_TO_GUEST);
}

#[test]
fn slirp4netns_reference_bulk_guest_to_host() {
    World::slirp4netns("slirp_bulk_guest_to_host")
        .needs(&["sha256sum"])
        .time_limits(150, 120)
        .run_ok(BULK_GUEST_TO_HOST);
}

#[test]
fn slirp4netns_reference_bulk_host_to_guest() {
    World::slirp4netns("slirp_bulk_host_to_guest")
        .needs(&["socat", "sha256sum"])
        .time_limits(150, 120)
        .run_ok(BULK_HOST_TO_GUEST);
}

/// With --disable-host-loopback, 10.0.2.2 no longer reaches the host's 127.0.0.1: the connect
/// fails at once and the host's server never sees a connection. Everything else still works.
#[test]
fn disable_host_loopback_refuses_gateway_only() {
    World::tapir("disable_host_loopback")
        .with_remote()
        .needs(&["ping"])
        .run_ok(
            r#"
start loopback actor tcp-whoami 127.0.0.1 8080
wait_port tcp 8080
start whoami in_remote actor tcp-whoami 0.0.0.0 7000
wait_port in_remote tcp 7000
TAPIR_ARGS=(--disable-host-loopback)
out=$(guest actor tcp-connect 10.0.2.2 8080 10)
check_match "connect to 10.0.2.2:8080 with --disable-host-loopback" "$out" \
    '^(refused|E[A-Z]+) after [01]\.[0-9]+ s$'
check_eq "connections the host's 127.0.0.1:8080 saw" "$(grep -c 'connection from' "$W/log/loopback.log" || true)" 0
out=$(guest actor tcp-ask 198.51.100.10 7000)
check_eq "remote host reached with --disable-host-loopback" "$out" "peer 198.51.100.1"
out=$(guest ping -c 2 -W 2 198.51.100.10)
check_match "ping to the remote host with --disable-host-loopback" "$out" ' 2 received'
"#,
        );
}

/// A sender that exits right after its last write: tapir already acknowledged those bytes to
/// the guest, so it must go on until the host has them all (a guest→host "fire and forget").
#[test]
fn bytes_acknowledged_before_the_guest_exits_still_reach_the_host() {
    World::tapir("drain_on_exit")
        .needs(&["socat", "sha256sum"])
        .time_limits(90, 60)
        .run_ok(
            r#"
head -c 50M /dev/urandom > "$W/tmp/blob"
start sink actor tcp-sha256 127.0.0.1 5011
wait_port tcp 5011
guest socat -t0 -u "OPEN:$W/tmp/blob" TCP:10.0.2.2:5011
want="52428800 bytes sha256 $(sha256sum < "$W/tmp/blob" | cut -d' ' -f1)"
wait_until 10 "the sink's verdict" grep -q "bytes sha256" "$W/log/sink.log"
check_match "what the host received after the guest exited" "$(cat "$W/log/sink.log")" "$want"
"#,
        );
}
