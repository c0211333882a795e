//! IPv6 (`tapir run -6`: router advertisements, SLAAC, fd00::2 as the host's ::1, fd00::3 as
//! DNS, ICMPv6 echo) and the DHCPv4 server, each checked from inside the guest.

mod common;

use common::World;

/// Waits in the guest until SLAAC gave tap0 a usable fd00::/64 address, then runs the checks.
const IPV6: &str = r#"
mkdir -p "$W/www"
echo 'hello over ipv6' > "$W/www/hello.txt"
start web python3 -m http.server --bind ::1 8080 --directory "$W/www"
start echo6 socat UDP6-RECVFROM:5007,bind=[::1],fork EXEC:cat
wait_port tcp 8080
TAPIR_ARGS=(-6)
out=$(guest sh -c '
    for i in $(seq 100); do
        ip -6 -o addr show dev tap0 scope global | grep -q "inet6 fd00::" &&
            ! ip -6 -o addr show dev tap0 | grep -q tentative && break
        sleep 0.05
    done
    ip -6 -o addr show dev tap0 scope global
    ip -6 route show default
    ping -6 -c 2 -W 2 fd00::2 | grep -c "bytes from fd00::2"
    ping -6 -c 1 -W 2 fd00::3 | grep -c "bytes from fd00::3"
    curl -sS --max-time 10 "http://[fd00::2]:8080/hello.txt"
    echo udp-over-v6 | socat -t 2 - UDP6:[fd00::2]:5007
    python3 -c "
import socket, struct
q = struct.pack(\"!HHHHHH\", 0x4242, 0x0100, 1, 0, 0, 0) + b\"\x05tapir\x04test\x00\" + struct.pack(\"!HH\", 1, 1)
s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM); s.settimeout(5)
s.sendto(q, (\"fd00::3\", 53)); r, peer = s.recvfrom(512)
print(\"dns6 from\", peer[0], peer[1], \"id\", hex(struct.unpack(\"!H\", r[:2])[0]), \"answer\", socket.inet_ntoa(r[-4:]))
"
')
check_match "SLAAC address from the router advertisement" "$out" 'inet6 fd00::[0-9a-f:]+/64 scope global'
check_match "default route from the router advertisement" "$out" '^default via fe80::2 dev tap0 proto ra'
check_match "ping fd00::2 answered twice" "$out" '^2$'
check_match "ping fd00::3 answered" "$(printf '%s\n' "$out" | sed -n 4p)" '^1$'
check_match "HTTP to the host's ::1 via [fd00::2]" "$out" '^hello over ipv6$'
check_match "UDP echo from the host's ::1 via [fd00::2]" "$out" '^udp-over-v6$'
check_match "DNS over IPv6 through fd00::3" "$out" '^dns6 from fd00::3 53 id 0x4242 answer 192\.0\.2\.53$'
"#;

#[test]
fn ipv6_slaac_gateway_dns_and_ping() {
    World::tapir("ipv6")
        .needs(&["ping", "curl", "socat", "python3"])
        .run_ok(IPV6);
}

/// Without -6 the guest gets no router advertisement and IPv6 to fd00::2 goes nowhere.
#[test]
fn ipv6_is_off_by_default() {
    World::tapir("ipv6_off").needs(&["ping"]).run_ok(
        r#"
out=$(guest sh -c 'sleep 1; ip -6 -o addr show dev tap0 scope global; ip -6 route show default; ping -6 -c 1 -W 1 fd00::2 >/dev/null 2>&1 && echo answered || echo unanswered')
check_eq "what the guest has of IPv6 without -6" "$out" "unanswered"
"#,
    );
}

/// A DHCP client in the guest gets the address `tapir run` configured, the gateway, the DNS
/// forwarder and the MTU, from tapir's DHCPv4 server; after the guest changes its MAC it gets
/// the same address again, and its traffic passes.
#[test]
fn dhcp_offers_the_plan() {
    World::tapir("dhcp").needs(&["busybox", "ping"]).run_ok(
        r#"
cat > "$W/tmp/udhcpc.sh" <<'SCRIPT'
#!/bin/sh
[ "$1" = bound ] && echo "lease ip=$ip mask=$mask router=$router dns=$dns mtu=$mtu"
exit 0
SCRIPT
chmod 0755 "$W/tmp/udhcpc.sh"
TAPIR_ARGS=(--mtu 1500)
out=$(guest sh -c '
    lease() { busybox udhcpc -i tap0 -n -q -f -t 3 -T 1 -O mtu -s "$1"; }
    lease "$1"
    ip link set tap0 address 52:54:00:12:34:56 && lease "$1"
    ping -c 1 -W 2 10.0.2.2 >/dev/null && echo answered || echo unanswered
' sh "$W/tmp/udhcpc.sh")
lease='lease ip=10.0.2.100 mask=24 router=10.0.2.2 dns=10.0.2.3 mtu=1500'
check_eq "the DHCP leases before and after a new MAC, and a ping" "$out" \
    "$lease"$'\n'"$lease"$'\n'answered
"#,
    );
}
