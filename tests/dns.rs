//! The DNS forwarder at 10.0.2.3, against the fake upstream on the host's 127.0.0.1:53 that the
//! prelude starts and names in the scenario's /etc/resolv.conf (see `dns_server` in actors.py:
//! tapir.test. is 192.0.2.53; big.tapir.test. is truncated over UDP and 192.0.2.54 over TCP).
//!
//! Every scenario here also runs against Debian's slirp4netns (`slirp4netns_reference_*`).

mod common;

use common::World;

/// A query over UDP, checked byte-level by actors.py (reply id, source 10.0.2.3:53, rcode, A).
const DNS_UDP: &str = r#"
out=$(guest actor dns-query 10.0.2.3 tapir.test)
check_eq "A tapir.test from 10.0.2.3 over UDP" "$out" "NOERROR 192.0.2.53"
out=$(guest actor dns-query 10.0.2.3 nosuch.tapir.test)
check_eq "A nosuch.tapir.test from 10.0.2.3 over UDP" "$out" "NXDOMAIN"
check grep -qx "udp A tapir.test." "$W/log/dns.log"
"#;

#[test]
fn dns_query_over_udp_is_forwarded() {
    World::tapir("dns_udp").run_ok(DNS_UDP);
}

#[test]
fn slirp4netns_reference_dns_udp() {
    World::slirp4netns("slirp_dns_udp").run_ok(DNS_UDP);
}

/// The guest's own resolver (glibc, reading the resolv.conf the guest was given) finds names
/// through 10.0.2.3.
const DNS_GUEST_RESOLVER: &str = r#"
check_match "the guest's /etc/resolv.conf" "$(guest cat /etc/resolv.conf)" '^nameserver 10\.0\.2\.3$'
out=$(guest getent ahostsv4 tapir.test)
check_match "getent ahostsv4 tapir.test in the guest" "$out" '^192\.0\.2\.53 '
"#;

#[test]
fn guest_resolver_uses_forwarder() {
    World::tapir("dns_guest_resolver")
        .needs(&["getent"])
        .run_ok(DNS_GUEST_RESOLVER);
}

#[test]
fn slirp4netns_reference_dns_guest_resolver() {
    World::slirp4netns("slirp_dns_guest_resolver")
        .needs(&["getent"])
        .run_ok(DNS_GUEST_RESOLVER);
}

/// DNS over TCP: asked directly, and as glibc's retry after a truncated UDP answer. The UDP
/// answer for big.tapir.test. may come back truncated (the guest then retries over TCP) or
/// already complete (if the forwarder retried upstream over TCP itself); either way the name
/// must resolve to the address only the TCP path gives, and upstream must have seen TCP.
const DNS_TCP: &str = r#"
out=$(guest actor dns-query 10.0.2.3 tapir.test tcp)
check_eq "A tapir.test from 10.0.2.3 over TCP" "$out" "NOERROR 192.0.2.53"
out=$(guest actor dns-query 10.0.2.3 big.tapir.test)
check_match "A big.tapir.test from 10.0.2.3 over UDP" "$out" '^NOERROR (TC|192\.0\.2\.54)$'
out=$(guest getent ahostsv4 big.tapir.test)
check_match "getent ahostsv4 big.tapir.test (truncated over UDP)" "$out" '^192\.0\.2\.54 '
check grep -qx "tcp A big.tapir.test." "$W/log/dns.log"
"#;

#[test]
fn dns_over_tcp_and_truncation_retry() {
    World::tapir("dns_tcp").needs(&["getent"]).run_ok(DNS_TCP);
}

#[test]
fn slirp4netns_reference_dns_tcp() {
    World::slirp4netns("slirp_dns_tcp")
        .needs(&["getent"])
        .run_ok(DNS_TCP);
}

/// The host's resolv.conf rewritten while one tapir runs, as a VPN client or NetworkManager
/// rewrites it: a query a second later goes to the new nameserver. `tapir run` has its sandbox
/// on, so this also shows the sandbox keeps the file readable. libslirp does the same (it looks
/// at the file at most once a second).
const DNS_FOLLOWS_RESOLV_CONF: &str = r#"
start dns2 actor dns-server 127.0.0.2 53
wait_until 10 "the second DNS server" sh -c '[ -n "$(ss -Hlun "src 127.0.0.2 and sport = :53")" ]'
start guest guest sh -c "
actor dns-query 10.0.2.3 tapir.test >'$W/tmp/before'
touch '$W/tmp/asked'
until [ -e '$W/tmp/changed' ]; do sleep 0.05; done
sleep 1.5
actor dns-query 10.0.2.3 tapir.test >'$W/tmp/after'"
guest_pid=$!
wait_ready "$W/tmp/asked" "$guest_pid"
printf 'nameserver 127.0.0.2\n' >"$W/etc/resolv.conf"
touch "$W/tmp/changed"
wait "$guest_pid" || fail "the guest failed: $(cat "$W/log/guest.log")"
check_eq "A tapir.test before the change" "$(cat "$W/tmp/before")" "NOERROR 192.0.2.53"
check_eq "A tapir.test after the change" "$(cat "$W/tmp/after")" "NOERROR 192.0.2.53"
check_eq "queries the first nameserver saw" "$(grep -cx 'udp A tapir.test.' "$W/log/dns.log")" 1
check_eq "queries the second nameserver saw" "$(grep -cx 'udp A tapir.test.' "$W/log/dns2.log")" 1
"#;

#[test]
fn a_changed_resolv_conf_is_followed() {
    World::tapir("dns_follow").run_ok(DNS_FOLLOWS_RESOLV_CONF);
}

#[test]
fn slirp4netns_reference_a_changed_resolv_conf_is_followed() {
    World::slirp4netns("slirp_dns_follow").run_ok(DNS_FOLLOWS_RESOLV_CONF);
}
