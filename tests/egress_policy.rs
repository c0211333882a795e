//! The egress policy (issue #8): `--deny`, `--allow`, `--deny-private` and `--policy FILE` under
//! `tapir run`, the same options in slirp4netns mode, and `list_policy` / `set_policy` on its
//! API socket.
//!
//! Every scenario runs in the egress world (`World::with_egress_world`, prelude.sh section 2b):
//! behind the test's host namespace, over veths with host-side addresses and routes, stand an
//! internet host (198.51.100.10, 2001:db8:100::10), a metadata service (169.254.169.254), a
//! private LAN (10.1.2.3, 10.1.2.4) and IPv6 ULA hosts (fd42::3, fd42::4), each serving TCP (22,
//! 80, 443), a TCP echo (7), UDP echo (7, 22) and ping; the host serves TCP on its own port 8088.
//!
//! A guest tries destinations with `actor probe`, one line each (`tcp 10.1.2.3:80 ok after 0.002
//! s: peer 10.1.2.1`). What a denial must look like, per the issue: the guest learns at once, by
//! ICMP "communication administratively prohibited" (type 3 code 13; ICMPv6 type 1 code 1), never
//! by a time-out. The kernel turns ICMP 3/13 into EHOSTUNREACH for a TCP connect or a connected
//! UDP socket, and ICMPv6 1/1 into EACCES (icmpv6_err_convert); the probe's raw ICMP socket sees
//! the message itself. So `expect_denied` asks for EHOSTUNREACH (IPv4) / EACCES (IPv6) or
//! `prohibited` (ping), within a second, and checks that no world server saw the flow.
//!
//! The first scenario, with no policy, proves the world: everything the other scenarios deny is
//! reachable without a policy (also under Debian's slirp4netns, IPv4), so a denial they see is
//! the policy's doing.

mod common;

use common::{Impl, World};

/// Verbs of these scenarios, before each body.
///
/// `probe SPEC...` runs `actor probe SPEC...` in a fresh guest (`guest` under `TAPIR_ARGS`, or
/// `$PROBE_VIA`), prints its lines and keeps them in `$PROBES`; with `-6` it first waits for the
/// guest's SLAAC address. `expect_ok SPEC...` and `expect_denied SPEC...` judge those lines;
/// `peer_of SPEC` is what a `tcp` server answered (`peer 10.1.2.1`).
const LIB: &str = r#"
cat > "$W/bin/after-slaac" <<'EOF'
#!/bin/sh
# In a `tapir run -6` guest: waits (up to 5 s) for a usable fd00:: address on tap0, then runs "$@".
i=0
while [ "$i" -lt 100 ]; do
    if ip -6 -o addr show dev tap0 scope global | grep -q 'inet6 fd00::' &&
        ! ip -6 -o addr show dev tap0 | grep -q tentative &&
        ip -6 route show default | grep -q .; then
        break
    fi
    sleep 0.05
    i=$((i + 1))
done
exec "$@"
EOF
chmod 0755 "$W/bin/after-slaac"

PROBE_VIA=(guest)
PROBES=
probe() {
    local -
    set +x
    WORLD_MARK=$(wc -l < "$W/log/world.log")
    HOST_MARK=$(wc -l < "$W/log/host.log")
    local wrap=() rc=0
    if [[ " ${TAPIR_ARGS[*]} " == *" -6 "* ]]; then wrap=(after-slaac); fi
    PROBES=$("${PROBE_VIA[@]}" "${wrap[@]}" actor probe "$@") || rc=$?
    printf 'probes (line %s) via %s, TAPIR_ARGS=(%s):\n%s\n' "$(body_line)" "${PROBE_VIA[*]}" \
        "${TAPIR_ARGS[*]}" "$PROBES"
    if [ "$rc" != 0 ]; then
        fail "the guest (${PROBE_VIA[*]} with TAPIR_ARGS=(${TAPIR_ARGS[*]})) failed with status $rc; its stderr is in the report"
    fi
}

probe_line() {
    local proto=${1%%:*} dest=${1#*:}
    awk -v p="$proto" -v d="$dest" '$1 == p && $2 == d' <<<"$PROBES" | head -1
}

expect_ok() {
    local -
    set +x
    local spec line
    for spec in "$@"; do
        line=$(probe_line "$spec")
        [ -n "$line" ] || fail "no probe line for $spec"
        [ "$(cut -d' ' -f3 <<<"$line")" = ok ] ||
            fail "$spec should be allowed (ok), got: '$line'"
    done
}

# What the guest sees of a denial: the errno ICMP administratively prohibited becomes (see the
# file's comment), or `prohibited` for ping, in under a second.
denial_of() {
    case $1 in
        icmp:*) echo prohibited ;;
        *:\[*) echo EACCES ;;
        *) echo EHOSTUNREACH ;;
    esac
}

expect_denied() {
    local -
    set +x
    local spec line want dest seen
    for spec in "$@"; do
        line=$(probe_line "$spec")
        [ -n "$line" ] || fail "no probe line for $spec"
        want=$(denial_of "$spec")
        awk -v w="$want" '$3 == w && $4 == "after" && $5 < 1.0 { found = 1 } END { exit !found }' <<<"$line" ||
            fail "$spec should be denied at once ($want in under 1 s, from ICMP administratively prohibited), got: '$line'"
        # Nothing reached a server (of the same protocol): the flow never left tapir.
        dest=${spec#*:}
        case $spec in
            tcp:*|udp:*)
                seen=$( { tail -n +"$((WORLD_MARK + 1))" "$W/log/world.log"
                          tail -n +"$((HOST_MARK + 1))" "$W/log/host.log"; } |
                        awk -v d="$dest" -v udp="${spec%%:*}" \
                            '$2 == d && $3 == "from" && (($1 == "udp") == (udp == "udp"))' | head -1)
                [ -z "$seen" ] || fail "$spec was denied in the guest, yet a server saw it: '$seen'"
                ;;
        esac
    done
}

peer_of() {
    probe_line "$1" | sed -n 's/.*: peer /peer /p'
}
"#;

fn tapir_world(name: &str) -> World {
    World::tapir(name).with_egress_world()
}

fn run(world: World, body: &str) {
    world.run_ok(&format!("{LIB}\n{body}"));
}

/// Without a policy, every host of the world answers TCP, UDP and ping, over IPv4 and IPv6, and
/// leaves as the host's address on its link; the host's own port 8088 answers through 10.0.2.2,
/// fd00::2 and the host's own addresses.
const REACHABLE_V4: &str = r#"
probe tcp:198.51.100.10:80 udp:198.51.100.10:7 icmp:198.51.100.10 \
    tcp:169.254.169.254:80 udp:169.254.169.254:7 icmp:169.254.169.254 \
    tcp:10.1.2.3:22 tcp:10.1.2.3:80 udp:10.1.2.3:22 icmp:10.1.2.3 tcp:10.1.2.4:80 udp:10.1.2.4:7 \
    tcp:198.51.100.1:8088 tcp:10.0.2.2:8088 dns:10.0.2.3
expect_ok tcp:198.51.100.10:80 udp:198.51.100.10:7 icmp:198.51.100.10 \
    tcp:169.254.169.254:80 udp:169.254.169.254:7 icmp:169.254.169.254 \
    tcp:10.1.2.3:22 tcp:10.1.2.3:80 udp:10.1.2.3:22 icmp:10.1.2.3 tcp:10.1.2.4:80 udp:10.1.2.4:7 \
    tcp:198.51.100.1:8088 tcp:10.0.2.2:8088 dns:10.0.2.3
check_eq "the internet host saw" "$(peer_of tcp:198.51.100.10:80)" "peer 198.51.100.1"
check_eq "the metadata service saw" "$(peer_of tcp:169.254.169.254:80)" "peer 169.254.169.1"
check_eq "the private host saw" "$(peer_of tcp:10.1.2.3:80)" "peer 10.1.2.1"
check_eq "the host's port 8088 through 10.0.2.2 saw" "$(peer_of tcp:10.0.2.2:8088)" "peer 127.0.0.1"
check_match "A tapir.test through 10.0.2.3" "$(probe_line dns:10.0.2.3)" ': NOERROR 192\.0\.2\.53$'
"#;

#[test]
fn without_a_policy_the_whole_world_is_reachable() {
    run(
        tapir_world("egress_baseline"),
        &format!(
            "{REACHABLE_V4}{}",
            r#"
TAPIR_ARGS=(-6)
probe tcp:[2001:db8:100::10]:80 udp:[2001:db8:100::10]:7 icmp:2001:db8:100::10 \
    tcp:[fd42::3]:80 udp:[fd42::3]:7 icmp:fd42::3 tcp:[fd42::4]:80 \
    tcp:[2001:db8:100::1]:8088 tcp:[fd00::2]:8088 dns:fd00::3
expect_ok tcp:[2001:db8:100::10]:80 udp:[2001:db8:100::10]:7 icmp:2001:db8:100::10 \
    tcp:[fd42::3]:80 udp:[fd42::3]:7 icmp:fd42::3 tcp:[fd42::4]:80 \
    tcp:[2001:db8:100::1]:8088 tcp:[fd00::2]:8088 dns:fd00::3
check_eq "the IPv6 internet host saw" "$(peer_of 'tcp:[2001:db8:100::10]:80')" "peer 2001:db8:100::1"
check_eq "the ULA host saw" "$(peer_of 'tcp:[fd42::3]:80')" "peer fd42::1"
check_eq "the host's port 8088 through fd00::2 saw" "$(peer_of 'tcp:[fd00::2]:8088')" "peer ::1"
"#
        ),
    );
}

#[test]
fn slirp4netns_reference_the_whole_world_is_reachable() {
    run(
        World::slirp4netns("slirp_egress_baseline").with_egress_world(),
        REACHABLE_V4,
    );
}

/// Case 1: `--deny-private`: the internet stays reachable over TCP, UDP and ping, IPv4 and IPv6; the
/// metadata service, the private hosts, the ULA hosts and the host's own (non-loopback) addresses
/// are denied for each; DNS through 10.0.2.3 / fd00::3 and the host's loopback through 10.0.2.2 /
/// fd00::2 keep working.
#[test]
fn deny_private_keeps_the_internet_and_denies_the_rest() {
    run(
        tapir_world("egress_deny_private"),
        r#"
TAPIR_ARGS=(-6 --deny-private)
probe tcp:198.51.100.10:80 udp:198.51.100.10:7 icmp:198.51.100.10 \
    tcp:[2001:db8:100::10]:443 udp:[2001:db8:100::10]:7 icmp:2001:db8:100::10 \
    tcp:169.254.169.254:80 udp:169.254.169.254:7 icmp:169.254.169.254 \
    tcp:10.1.2.3:80 udp:10.1.2.3:7 icmp:10.1.2.3 tcp:10.1.2.4:22 \
    tcp:[fd42::3]:80 udp:[fd42::3]:7 icmp:fd42::3 \
    tcp:198.51.100.1:8088 tcp:[2001:db8:100::1]:8088 \
    tcp:10.0.2.2:8088 tcp:[fd00::2]:8088 dns:10.0.2.3 dnstcp:10.0.2.3 dns:fd00::3
expect_ok tcp:198.51.100.10:80 udp:198.51.100.10:7 icmp:198.51.100.10 \
    tcp:[2001:db8:100::10]:443 udp:[2001:db8:100::10]:7 icmp:2001:db8:100::10
expect_denied tcp:169.254.169.254:80 udp:169.254.169.254:7 icmp:169.254.169.254 \
    tcp:10.1.2.3:80 udp:10.1.2.3:7 icmp:10.1.2.3 tcp:10.1.2.4:22 \
    tcp:[fd42::3]:80 udp:[fd42::3]:7 icmp:fd42::3
# The host's own addresses are in the preset; its loopback is not (--disable-host-loopback's).
expect_denied tcp:198.51.100.1:8088 tcp:[2001:db8:100::1]:8088
expect_ok tcp:10.0.2.2:8088 tcp:[fd00::2]:8088
check_eq "the host's port 8088 through 10.0.2.2 saw" "$(peer_of tcp:10.0.2.2:8088)" "peer 127.0.0.1"
# tapir's own DNS forwarder is no destination of the guest's.
expect_ok dns:10.0.2.3 dnstcp:10.0.2.3 dns:fd00::3
check_match "A tapir.test through 10.0.2.3" "$(probe_line dns:10.0.2.3)" ': NOERROR 192\.0\.2\.53$'
check_match "A big.tapir.test over TCP through 10.0.2.3" "$(probe_line dnstcp:10.0.2.3)" ': NOERROR 192\.0\.2\.54$'
"#,
    );
}

/// Case 1b: The forwarder at 10.0.2.3 is exempt even when the host's resolver is itself a private
/// address (here 10.1.2.3, over UDP and over TCP), while the guest asking 10.1.2.3 directly is
/// denied like any other private destination.
#[test]
fn deny_private_keeps_dns_through_a_private_resolver() {
    run(
        tapir_world("egress_private_resolver"),
        r#"
start resolver in_remote actor dns-server 10.1.2.3 53
wait_port in_remote udp 53
wait_port in_remote tcp 53
printf 'nameserver 10.1.2.3\n' > "$W/etc/resolv.conf"
TAPIR_ARGS=(--deny-private)
probe dns:10.0.2.3 dnstcp:10.0.2.3 dns:10.1.2.3 tcp:10.1.2.3:80
check_match "A tapir.test through 10.0.2.3" "$(probe_line dns:10.0.2.3)" ' ok after .*: NOERROR 192\.0\.2\.53$'
check_match "A big.tapir.test over TCP through 10.0.2.3" "$(probe_line dnstcp:10.0.2.3)" ' ok after .*: NOERROR 192\.0\.2\.54$'
expect_denied dns:10.1.2.3 tcp:10.1.2.3:80
check grep -q '^udp A tapir\.test\.$' "$W/log/resolver.log"
check grep -q '^tcp A big\.tapir\.test\.$' "$W/log/resolver.log"
"#,
    );
}

/// Case 2: Explicit denials: a whole network (`--deny 169.254.0.0/16`: TCP, UDP and ping), and
/// port/protocol qualifiers, IPv4 and IPv6 (`10.1.2.0/24:22/tcp` stops TCP to port 22 only: port
/// 80, UDP to port 22 and ping pass; `[fd42::/64]:80/tcp` likewise).
#[test]
fn explicit_deny_with_port_and_protocol() {
    run(
        tapir_world("egress_explicit_deny"),
        r#"
TAPIR_ARGS=(-6 --deny 169.254.0.0/16 --deny 10.1.2.0/24:22/tcp --deny '[fd42::/64]:80/tcp')
probe tcp:169.254.169.254:80 tcp:169.254.169.254:443 udp:169.254.169.254:7 icmp:169.254.169.254 \
    tcp:10.1.2.3:22 tcp:10.1.2.4:22 tcp:10.1.2.3:80 tcp:10.1.2.3:443 udp:10.1.2.3:22 icmp:10.1.2.3 \
    tcp:[fd42::3]:80 tcp:[fd42::4]:80 tcp:[fd42::3]:22 udp:[fd42::3]:7 icmp:fd42::3 \
    tcp:198.51.100.10:22 tcp:198.51.100.10:80 icmp:198.51.100.10 tcp:[2001:db8:100::10]:80
expect_denied tcp:169.254.169.254:80 tcp:169.254.169.254:443 udp:169.254.169.254:7 icmp:169.254.169.254
expect_denied tcp:10.1.2.3:22 tcp:10.1.2.4:22
expect_ok tcp:10.1.2.3:80 tcp:10.1.2.3:443 udp:10.1.2.3:22 icmp:10.1.2.3
expect_denied tcp:[fd42::3]:80 tcp:[fd42::4]:80
expect_ok tcp:[fd42::3]:22 udp:[fd42::3]:7 icmp:fd42::3
expect_ok tcp:198.51.100.10:22 tcp:198.51.100.10:80 icmp:198.51.100.10 tcp:[2001:db8:100::10]:80
"#,
    );
}

/// Case 3: An allow-list ending in `deny all`: only the two allowed services pass, IPv6 included in
/// `all`; the DNS forwarder and the host's loopback through 10.0.2.2 are not the policy's to deny.
#[test]
fn allow_list_then_deny_all() {
    run(
        tapir_world("egress_allow_list"),
        r#"
TAPIR_ARGS=(-6 --allow 198.51.100.0/24:443/tcp --allow 198.51.100.10:7/udp --deny all)
probe tcp:198.51.100.10:443 udp:198.51.100.10:7 \
    tcp:198.51.100.10:80 tcp:198.51.100.10:22 udp:198.51.100.10:22 icmp:198.51.100.10 \
    tcp:10.1.2.3:443 udp:10.1.2.3:7 icmp:10.1.2.3 tcp:169.254.169.254:443 \
    tcp:[2001:db8:100::10]:443 udp:[2001:db8:100::10]:7 icmp:2001:db8:100::10 tcp:[fd42::3]:443 \
    dns:10.0.2.3 dnstcp:10.0.2.3 tcp:10.0.2.2:8088 tcp:[fd00::2]:8088
expect_ok tcp:198.51.100.10:443 udp:198.51.100.10:7
expect_denied tcp:198.51.100.10:80 tcp:198.51.100.10:22 udp:198.51.100.10:22 icmp:198.51.100.10 \
    tcp:10.1.2.3:443 udp:10.1.2.3:7 icmp:10.1.2.3 tcp:169.254.169.254:443 \
    tcp:[2001:db8:100::10]:443 udp:[2001:db8:100::10]:7 icmp:2001:db8:100::10 tcp:[fd42::3]:443
expect_ok dns:10.0.2.3 dnstcp:10.0.2.3 tcp:10.0.2.2:8088 tcp:[fd00::2]:8088
"#,
    );
}

/// Case 4: The first matching rule decides, in command-line order with --allow and --deny
/// interleaved; --deny-private comes after the explicit rules wherever it is written.
#[test]
fn first_match_in_command_line_order() {
    run(
        tapir_world("egress_first_match"),
        r#"
specs=(tcp:10.1.2.3:80 udp:10.1.2.3:7 icmp:10.1.2.3 tcp:10.1.2.4:80 udp:10.1.2.4:7 icmp:10.1.2.4)

TAPIR_ARGS=(--allow 10.1.2.3 --deny 10.1.2.0/24)
probe "${specs[@]}"
expect_ok tcp:10.1.2.3:80 udp:10.1.2.3:7 icmp:10.1.2.3
expect_denied tcp:10.1.2.4:80 udp:10.1.2.4:7 icmp:10.1.2.4

TAPIR_ARGS=(--deny 10.1.2.0/24 --allow 10.1.2.3)
probe "${specs[@]}"
expect_denied "${specs[@]}"

# Interleaved: deny, allow, deny. Grouping the denials first would deny 10.1.2.3.
TAPIR_ARGS=(--deny 10.1.2.4:80/tcp --allow 10.1.2.0/24 --deny 10.1.2.3)
probe tcp:10.1.2.4:80 tcp:10.1.2.4:22 tcp:10.1.2.3:80 udp:10.1.2.3:7
expect_denied tcp:10.1.2.4:80
expect_ok tcp:10.1.2.4:22 tcp:10.1.2.3:80 udp:10.1.2.3:7

# The preset goes last: an --allow written after --deny-private is still an exception to it.
for args in "--deny-private --allow 10.1.2.3:80/tcp" "--allow 10.1.2.3:80/tcp --deny-private"; do
    read -ra TAPIR_ARGS <<<"$args"
    probe tcp:10.1.2.3:80 tcp:10.1.2.3:22 udp:10.1.2.3:7 tcp:10.1.2.4:80 tcp:198.51.100.10:80
    expect_ok tcp:10.1.2.3:80 tcp:198.51.100.10:80
    expect_denied tcp:10.1.2.3:22 udp:10.1.2.3:7 tcp:10.1.2.4:80
done
"#,
    );
}

/// Case 5: A denied connect fails at once, as real clients see it: EHOSTUNREACH ("No route to host")
/// for connect(2) and curl within a second, and ping reports the ICMP ("Packet filtered", for
/// IPv6 "Administratively prohibited") instead of waiting out its -W.
#[test]
fn denied_connect_fails_at_once() {
    run(
        tapir_world("egress_fast_failure").needs(&["curl"]),
        r#"
TAPIR_ARGS=(-6 --deny 169.254.169.254 --deny fd42::3)
out=$(guest actor tcp-connect 169.254.169.254 80 10)
check_match "a denied connect(2) to 169.254.169.254:80" "$out" '^EHOSTUNREACH after 0\.[0-9]+ s$'
# curl 7.88 says "Couldn't connect to server"; with -v it also names the errno.
out=$(guest sh -c 'curl -v -sS --max-time 10 http://169.254.169.254/ 2>&1; echo "curl exit $?"')
check_match "curl -v http://169.254.169.254/" "$out" 'No route to host'
check_match "curl's time to fail" "$out" 'Failed to connect to 169\.254\.169\.254 port 80 after [0-9]{1,3} ms'
check_match "curl's exit status (7: could not connect, not 28: timed out)" "$out" '^curl exit 7$'
out=$(guest sh -c 'start=$(date +%s%N); ping -c 1 -W 5 169.254.169.254 2>&1; echo "ping exit $? after $(( ($(date +%s%N) - start) / 1000000 )) ms"')
check_match "ping 169.254.169.254" "$out" 'Packet filtered'
check_match "ping's exit status and time" "$out" '^ping exit 1 after [0-9]{1,3} ms$'
out=$(guest after-slaac sh -c 'start=$(date +%s%N); ping -6 -c 1 -W 5 fd42::3 2>&1; echo "ping exit $? after $(( ($(date +%s%N) - start) / 1000000 )) ms"')
check_match "ping -6 fd42::3" "$out" 'Administratively prohibited'
check_match "ping -6's exit status and time" "$out" '^ping exit 1 after [0-9]{1,3} ms$'
probe --timeout=10 tcp:169.254.169.254:443 udp:169.254.169.254:7 tcp:[fd42::3]:80 udp:[fd42::3]:7
expect_denied tcp:169.254.169.254:443 udp:169.254.169.254:7 tcp:[fd42::3]:80 udp:[fd42::3]:7
check_eq "connections the metadata service saw" "$(grep -c '169\.254\.169\.254' "$W/log/world.log" || true)" 0
"#,
    );
}

/// Case 6: `--policy FILE`: the allow-list of the issue as a TOML file, then a file with
/// `deny-private = true`, whose rules come before the preset (an exception) and which allows
/// comments.
#[test]
fn policy_file() {
    run(
        tapir_world("egress_policy_file"),
        r#"
cat > "$W/tmp/allow-list.toml" <<'EOF'
rules = ["allow 198.51.100.0/24:443/tcp", "deny all"]
EOF
TAPIR_ARGS=(--policy "$W/tmp/allow-list.toml")
probe tcp:198.51.100.10:443 tcp:198.51.100.10:80 udp:198.51.100.10:7 icmp:198.51.100.10 \
    tcp:10.1.2.3:443 dns:10.0.2.3 tcp:10.0.2.2:8088
expect_ok tcp:198.51.100.10:443 dns:10.0.2.3 tcp:10.0.2.2:8088
expect_denied tcp:198.51.100.10:80 udp:198.51.100.10:7 icmp:198.51.100.10 tcp:10.1.2.3:443

cat > "$W/tmp/exceptions.toml" <<'EOF'
# The CI job may reach one private service, and no one's ssh.
deny-private = true
rules = [
    "allow 10.1.2.3:80/tcp",   # the package cache
    "deny 198.51.100.10:22/tcp",
]
EOF
TAPIR_ARGS=(-6 --policy "$W/tmp/exceptions.toml")
probe tcp:10.1.2.3:80 tcp:198.51.100.10:80 udp:198.51.100.10:22 tcp:[2001:db8:100::10]:22 \
    tcp:10.1.2.3:22 tcp:10.1.2.4:80 tcp:169.254.169.254:80 tcp:[fd42::3]:80 tcp:198.51.100.10:22
expect_ok tcp:10.1.2.3:80 tcp:198.51.100.10:80 udp:198.51.100.10:22 tcp:[2001:db8:100::10]:22
expect_denied tcp:10.1.2.3:22 tcp:10.1.2.4:80 tcp:169.254.169.254:80 tcp:[fd42::3]:80 \
    tcp:198.51.100.10:22
"#,
    );
}

/// Case 7: Bad input: one line on stderr naming the offending text (and the file and line, for a
/// policy file), exit status 125, and the command never runs.
#[test]
fn bad_rules_are_refused_with_one_sentence() {
    World::tapir("egress_bad_rules").run_ok(
        r#"
problems=()
refused() {
    local want=$1 rc=0 err lines
    shift
    rm -f "$W/tmp/ran"
    err=$(tapir_run "$@" -- touch "$W/tmp/ran" 2>&1 >/dev/null) || rc=$?
    lines=$(printf '%s' "$err" | grep -c '' || true)
    local case="tapir run $*"
    echo "$case: status $rc, stderr: $err"
    [ "$rc" = 125 ] || problems+=("$case: exit status $rc, not 125")
    [ ! -e "$W/tmp/ran" ] || problems+=("$case: ran the command")
    [ "$lines" = 1 ] || problems+=("$case: $lines lines on stderr, not one: ${err:-(empty)}")
    grep -Eq -- "$want" <<<"$err" || problems+=("$case: stderr '$err' does not match /$want/")
}
refused '^tapir: --deny 10\.0\.0\.0/33: prefix length must be at most 32$' --deny 10.0.0.0/33
refused '^tapir: --allow 10\.0\.0\.0/8:70000: port 70000 is not between 1 and 65535$' \
    --allow 10.0.0.0/8:70000
refused '^tapir: --deny 10\.0\.0\.0/8:90-80: port range 90-80 is empty$' --deny 10.0.0.0/8:90-80
refused '^tapir: --deny 10\.0\.0\.0/8/sctp: protocol "sctp" is not tcp, udp or icmp$' \
    --deny 10.0.0.0/8/sctp
# A good rule before a bad one: the bad one is named.
refused '^tapir: --deny 10\.0\.0\.0/33: ' --allow 198.51.100.0/24 --deny-private --deny 10.0.0.0/33

cat > "$W/tmp/bad.toml" <<'EOF'
deny-private = true
rules = [
    "allow 198.51.100.0/24:443/tcp",
    "deny 10.0.0.0/33",
]
EOF
refused '^tapir: \S*bad\.toml:4: deny 10\.0\.0\.0/33: prefix length must be at most 32$' \
    --policy "$W/tmp/bad.toml"
# A misspelt key must not leave the policy quietly empty.
printf 'deny_private = true\n' > "$W/tmp/typo.toml"
refused '^tapir: \S*typo\.toml:1: .*deny_private' --policy "$W/tmp/typo.toml"
refused '^tapir: .*missing\.toml' --policy "$W/tmp/missing.toml"

if [ "${#problems[@]}" -gt 0 ]; then
    fail "$(printf '\n  %s' "${problems[@]}")"
fi

# The control: the same options, well-formed, run the command.
rm -f "$W/tmp/ran"
tapir_run --deny 10.0.0.0/8:80-90/tcp --allow '[fd00::/8]:443/tcp' --deny-private \
    -- touch "$W/tmp/ran"
check test -e "$W/tmp/ran"
"#,
    );
}

/// For the slirp4netns-mode scenarios: `start_s4nn NAME ARGS...` starts a user+net namespace
/// (`$ns_pid`) and `$S4NN --configure --mtu=65520 --api-socket $sock ARGS... $ns_pid tap0` as
/// uid 65534 (`$s4nn_pid`, log/NAME.log), waits until tap0 is up and the socket is there, and
/// sends `probe` into that namespace; `policy` prints `list_policy` as one line,
/// `ACTION RULE hits=N; ...; default hits=N`.
const S4NN_LIB: &str = r#"
in_ns() {
    as_user nsenter --preserve-credentials --user --net --target "$ns_pid" -- "$@"
}
PROBE_VIA=(in_ns)
sock="$W/tmp/s4nn.sock"
start_s4nn() {
    local -
    set +x
    local name=$1 rc=0 deadline=$((SECONDS + 10))
    shift
    as_user unshare -Urn --fork sleep infinity &
    ns_pid=$!
    wait_until 5 "the sleeper in its own namespaces" pgrep -P "$ns_pid" -x sleep
    rm -f "$sock"
    start "$name" as_user "$S4NN" --configure --mtu=65520 --api-socket "$sock" "$@" "$ns_pid" tap0
    s4nn_pid=$!
    until [ -S "$sock" ] && in_ns ip -4 -o addr show dev tap0 2>/dev/null | grep -q 'inet 10\.0\.2\.100/'; do
        if gone "$s4nn_pid"; then
            wait "$s4nn_pid" || rc=$?
            fail "$S4NN $* exited with status $rc before tap0 was up; it said: $(cat "$W/log/$name.log")"
        fi
        [ "$SECONDS" -lt "$deadline" ] || fail "tap0 not up 10 s after starting $S4NN $*"
        sleep 0.05
    done
}
stop_s4nn() {
    kill "$s4nn_pid" "$ns_pid"
    wait_gone 5 "$s4nn_pid" "the slirp4netns-mode binary"
}
api() {
    s4nn_api "$sock" "$1"
}
policy() {
    api '{"execute":"list_policy"}' | python3 -c '
import json, sys
text = sys.stdin.read()
try:
    reply = json.loads(text)["return"]
    parts = ["%s %s hits=%s" % (r["action"], r["rule"], r["hits"]) for r in reply["rules"]]
    print("; ".join(parts + ["default hits=%s" % reply["default_hits"]]))
except Exception as e:
    print("unexpected list_policy reply (%s): %s" % (e, text.strip()))
'
}
"#;

fn s4nn_world(name: &str) -> World {
    World::slirp4netns_compat(name, Impl::Tapir)
        .with_egress_world()
        .needs(&["python3"])
}

fn run_s4nn(world: World, body: &str) {
    world.run_ok(&format!("{LIB}\n{S4NN_LIB}\n{body}"));
}

/// slirp4netns mode takes `--deny-private`, `--allow` and `--policy` like `tapir run`.
#[test]
fn slirp4netns_mode_takes_the_policy_options() {
    run_s4nn(
        s4nn_world("egress_s4nn_options"),
        r#"
start_s4nn s4nn-preset --deny-private --allow 10.1.2.3:80/tcp
probe tcp:198.51.100.10:80 icmp:198.51.100.10 tcp:10.1.2.3:80 tcp:10.1.2.3:22 \
    udp:169.254.169.254:7 icmp:10.1.2.4 dns:10.0.2.3 tcp:10.0.2.2:8088
expect_ok tcp:198.51.100.10:80 icmp:198.51.100.10 tcp:10.1.2.3:80 dns:10.0.2.3 tcp:10.0.2.2:8088
expect_denied tcp:10.1.2.3:22 udp:169.254.169.254:7 icmp:10.1.2.4
stop_s4nn

printf 'rules = ["deny 198.51.100.10:80/tcp"]\n' > "$W/tmp/policy.toml"
start_s4nn s4nn-file --policy "$W/tmp/policy.toml"
probe tcp:198.51.100.10:80 tcp:198.51.100.10:443 tcp:10.1.2.3:80
expect_ok tcp:198.51.100.10:443 tcp:10.1.2.3:80
expect_denied tcp:198.51.100.10:80
stop_s4nn

# A bad rule: one sentence naming it, a failing exit, and no socket, no tap0.
as_user unshare -Urn --fork sleep infinity &
ns_pid=$!
wait_until 5 "the sleeper in its own namespaces" pgrep -P "$ns_pid" -x sleep
rm -f "$sock"
rc=0
err=$(bounded as_user "$S4NN" --configure --api-socket "$sock" --deny 10.0.0.0/33 "$ns_pid" tap0 2>&1 >/dev/null) || rc=$?
echo "status $rc, stderr: $err"
check test "$rc" != 0
check_eq "stderr lines" "$(printf '%s' "$err" | grep -c '' || true)" 1
check_match "stderr" "$err" '--deny 10\.0\.0\.0/33: prefix length must be at most 32$'
check test ! -e "$sock"
check_eq "links in the namespace" "$(in_ns ip -o link show | grep -c tap0 || true)" 0
"#,
    );
}

/// Case 8: The API in slirp4netns mode: `list_policy` counts each new flow against the rule that
/// decided it (or the default); `set_policy` replaces the rules at once and restarts the
/// counters, while a TCP connection opened before keeps working (the policy is asked only when
/// a flow opens) and a new one to the same host is denied; a bad `set_policy` is refused with
/// the offending rule named and leaves the old policy in place, whole.
#[test]
fn api_lists_counters_and_replaces_the_policy() {
    run_s4nn(
        s4nn_world("egress_api"),
        r#"
start_s4nn s4nn --deny 169.254.0.0/16 --deny 10.1.2.4
check_eq "list_policy at start" "$(policy)" \
    "deny 169.254.0.0/16 hits=0; deny 10.1.2.4 hits=0; default hits=0"

probe tcp:169.254.169.254:80 udp:169.254.169.254:7 icmp:169.254.169.254 tcp:10.1.2.4:80 \
    tcp:10.1.2.3:80 udp:10.1.2.3:7
expect_denied tcp:169.254.169.254:80 udp:169.254.169.254:7 icmp:169.254.169.254 tcp:10.1.2.4:80
expect_ok tcp:10.1.2.3:80 udp:10.1.2.3:7
check_eq "list_policy after 4 denied and 2 allowed flows" "$(policy)" \
    "deny 169.254.0.0/16 hits=3; deny 10.1.2.4 hits=1; default hits=2"

# A connection to the internet host's echo service, open across the replacement.
mkdir -p "$W/tmp/hold"
chown 65534:65534 "$W/tmp/hold"
start hold in_ns actor tcp-hold 198.51.100.10 7 "$W/tmp/hold"
wait_until 10 "the held connection's first exchange" test -e "$W/tmp/hold/1"
check_eq "the held connection's first exchange" "$(cat "$W/tmp/hold/1")" "one ok"
check_eq "list_policy with the held connection open" "$(policy)" \
    "deny 169.254.0.0/16 hits=3; deny 10.1.2.4 hits=1; default hits=3"

out=$(api '{"execute":"set_policy","arguments":{"rules":["deny 198.51.100.10","allow all"],"deny_private":false}}')
check_eq "set_policy: deny 198.51.100.10, allow all" "$out" '{"return":{}}'
check_eq "list_policy after set_policy" "$(policy)" \
    "deny 198.51.100.10 hits=0; allow all hits=0; default hits=0"
probe tcp:198.51.100.10:7 tcp:198.51.100.10:80 icmp:198.51.100.10 tcp:169.254.169.254:80 tcp:10.1.2.4:80
expect_denied tcp:198.51.100.10:7 tcp:198.51.100.10:80 icmp:198.51.100.10
expect_ok tcp:169.254.169.254:80 tcp:10.1.2.4:80
check_eq "list_policy after 3 denied and 2 allowed flows" "$(policy)" \
    "deny 198.51.100.10 hits=3; allow all hits=2; default hits=0"
touch "$W/tmp/hold/go"
wait_until 10 "the held connection's second exchange" test -e "$W/tmp/hold/2"
check_eq "the connection opened before the replacement, after it" "$(cat "$W/tmp/hold/2")" "two ok"
check_eq "connections the echo service saw" "$(grep -c '^echo 198\.51\.100\.10:7 from' "$W/log/world.log" || true)" 1

# Bad replacements: refused, naming the rule; the old policy stays, whole (the valid first rule
# of a bad list is not applied either).
out=$(api '{"execute":"set_policy","arguments":{"rules":["deny all","allow 10.0.0.0/33"],"deny_private":false}}')
check_match "set_policy with a bad rule" "$out" \
    '^\{"error":\{"desc":"bad request: set_policy: [^"]*10\.0\.0\.0/33[^"]*"\}\}$'
out=$(api '{"execute":"set_policy","arguments":{"rules":["deny all","allow 10.0.0.0/8:90-80"],"deny_private":false}}')
check_match "set_policy with a bad port range" "$out" \
    '^\{"error":\{"desc":"bad request: set_policy: [^"]*10\.0\.0\.0/8:90-80[^"]*"\}\}$'
out=$(api '{"execute":"set_policy","arguments":{"rules":"deny all"}}')
check_match "set_policy with rules not a list" "$out" '^\{"error":\{"desc":"bad request: set_policy: [^"]*"\}\}$'
check_eq "list_policy after the bad set_policy requests" "$(policy)" \
    "deny 198.51.100.10 hits=3; allow all hits=2; default hits=0"
probe tcp:10.1.2.3:80 tcp:198.51.100.10:443
expect_ok tcp:10.1.2.3:80
expect_denied tcp:198.51.100.10:443
check_eq "list_policy after two more flows" "$(policy)" \
    "deny 198.51.100.10 hits=4; allow all hits=3; default hits=0"

# deny_private through the API: the preset after the rules given, so the allow is an exception.
out=$(api '{"execute":"set_policy","arguments":{"rules":["allow 10.1.2.3:80/tcp"],"deny_private":true}}')
check_eq "set_policy with deny_private" "$out" '{"return":{}}'
probe tcp:10.1.2.3:80 tcp:10.1.2.3:22 tcp:10.1.2.4:80 tcp:169.254.169.254:80 \
    tcp:198.51.100.1:8088 tcp:198.51.100.10:80 tcp:10.0.2.2:8088
expect_ok tcp:10.1.2.3:80 tcp:198.51.100.10:80 tcp:10.0.2.2:8088
expect_denied tcp:10.1.2.3:22 tcp:10.1.2.4:80 tcp:169.254.169.254:80 tcp:198.51.100.1:8088
check_match "list_policy with deny_private" "$(policy)" '^allow 10\.1\.2\.3:80/tcp hits=1; deny '
"#,
    );
}
