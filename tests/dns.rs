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
