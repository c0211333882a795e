//! What `tapir run -- CMD` gives the command: its exit status passed through, the guest
//! interface as options describe it, and a --pcap capture of the guest's frames.

mod common;

use common::World;

#[test]
fn exit_status_of_command_is_tapirs() {
    World::tapir("exit_status").run_ok(
        r#"
rc=0
guest sh -c 'exit 7' || rc=$?
check_eq "exit status of tapir run -- sh -c 'exit 7'" "$rc" 7
rc=0
guest sh -c 'echo ran > "$W/tmp/ran"' || rc=$?
check_eq "exit status of tapir run -- a command that succeeds" "$rc" 0
check_eq "what the command wrote" "$(cat "$W/tmp/ran" 2>/dev/null)" ran
"#,
    );
}

/// The default guest: tap0 up with 10.0.2.100/24 and MTU 65520, default route via 10.0.2.2,
/// resolv.conf naming 10.0.2.3.
const DEFAULT_INTERFACE: &str = r#"
out=$(guest sh -c 'ip -o link show dev tap0; ip -4 -o addr show dev tap0; ip -4 route show default; cat /etc/resolv.conf')
check_match "tap0 is up" "$out" 'tap0: <[A-Z_,]*[<,]?UP[,>]'
check_match "tap0's MTU" "$out" ' mtu 65520 '
check_match "tap0's address" "$out" 'inet 10\.0\.2\.100/24 '
check_match "the default route" "$out" '^default via 10\.0\.2\.2 dev tap0'
check_match "the guest's resolv.conf" "$out" '^nameserver 10\.0\.2\.3$'
"#;

#[test]
fn guest_interface_defaults() {
    World::tapir("interface_defaults").run_ok(DEFAULT_INTERFACE);
}

#[test]
fn slirp4netns_reference_interface_defaults() {
    World::slirp4netns("slirp_interface_defaults").run_ok(DEFAULT_INTERFACE);
}

/// --cidr and --mtu move the whole plan: guest .100, gateway .2 (still the host's loopback),
/// DNS .3, and the MTU.
#[test]
fn cidr_and_mtu_options_shape_the_guest() {
    World::tapir("cidr_and_mtu").needs(&["curl"]).run_ok(
        r#"
echo 'hello from the host' > "$W/tmp/hello.txt"
start web python3 -m http.server --bind 127.0.0.1 8080 --directory "$W/tmp"
wait_port tcp 8080
TAPIR_ARGS=(--cidr 10.0.3.0/24 --mtu 1500)
out=$(guest sh -c 'ip -o link show dev tap0; ip -4 -o addr show dev tap0; ip -4 route show default; cat /etc/resolv.conf')
check_match "tap0's MTU with --mtu 1500" "$out" ' mtu 1500 '
check_match "tap0's address with --cidr 10.0.3.0/24" "$out" 'inet 10\.0\.3\.100/24 '
check_match "the default route with --cidr 10.0.3.0/24" "$out" '^default via 10\.0\.3\.2 dev tap0'
check_match "the guest's resolv.conf with --cidr 10.0.3.0/24" "$out" '^nameserver 10\.0\.3\.3$'
out=$(guest curl -sS --max-time 10 http://10.0.3.2:8080/hello.txt)
check_eq "body fetched via 10.0.3.2" "$out" "hello from the host"
out=$(guest actor dns-query 10.0.3.3 tapir.test)
check_eq "A tapir.test from 10.0.3.3" "$out" "NOERROR 192.0.2.53"
"#,
    );
}

/// --pcap FILE records the guest's frames in a file tshark reads: the guest's SYN to
/// 10.0.2.2:8080 and the host's data coming back.
#[test]
fn pcap_records_guest_frames() {
    World::tapir("pcap")
        .needs(&["curl", "tshark"])
        .run_ok(
            r#"
echo 'hello from the host' > "$W/tmp/hello.txt"
start web python3 -m http.server --bind 127.0.0.1 8080 --directory "$W/tmp"
wait_port tcp 8080
TAPIR_ARGS=(--pcap "$W/tmp/guest.pcap")
out=$(guest curl -sS --max-time 10 http://10.0.2.2:8080/hello.txt)
check_eq "body fetched while capturing" "$out" "hello from the host"
check test -s "$W/tmp/guest.pcap"
frames() {
    tshark -r "$W/tmp/guest.pcap" -Y "$1" -T fields -e frame.number 2>>"$W/log/tshark.log" | wc -l
}
syn='tcp.flags.syn == 1 && tcp.flags.ack == 0 && ip.src == 10.0.2.100 && ip.dst == 10.0.2.2 && tcp.dstport == 8080'
check_match "guest SYNs to 10.0.2.2:8080 in the capture" "$(frames "$syn")" '^[1-9]'
data='ip.src == 10.0.2.2 && tcp.srcport == 8080 && tcp.len > 0'
check_match "data segments from 10.0.2.2:8080 in the capture" "$(frames "$data")" '^[1-9]'
"#,
        );
}

/// The environment failures a user meets first: each is one sentence naming the cause, exit
/// status 125, the command never runs, and no process or TAP is left behind.
#[test]
fn environment_failures_are_one_sentence() {
    World::tapir("environment_failures").run_ok(
        r#"
# No access to /dev/net/tun (the machine's own node is not touched: this is the world's).
chmod 0600 "$W/dev/tun"
rc=0
err=$(tapir_run -- sh -c 'echo ran > "$W/tmp/ran1"' 2>&1 >/dev/null) || rc=$?
chmod 0666 "$W/dev/tun"
check_eq "exit status without /dev/net/tun access" "$rc" 125
check_match "the sentence for /dev/net/tun" "$err" '^tapir: cannot open /dev/net/tun: permission denied'
check_eq "lines on stderr" "$(printf '%s\n' "$err" | wc -l)" 1
check_eq "the command ran" "$(cat "$W/tmp/ran1" 2>/dev/null || echo no)" no

# User namespaces disabled: a user namespace of the world's own, with no room for more.
rc=0
err=$(as_user unshare --user --map-root-user sh -c '
    echo 0 > /proc/sys/user/max_user_namespaces && exec "$0" run -- true' "$TAPIR" 2>&1) || rc=$?
check_eq "exit status without user namespaces" "$rc" 125
check_match "the sentence for user namespaces" "$err" '^tapir: cannot create a user namespace: '
check_eq "lines on stderr" "$(printf '%s\n' "$err" | wc -l)" 1

# A command that does not exist.
rc=0
err=$(tapir_run -- /nonexistent/command 2>&1) || rc=$?
check_eq "exit status for a missing command" "$rc" 125
check_match "the sentence for a missing command" "$err" '^tapir: cannot run /nonexistent/command: no such file or directory'

# Nothing left: no tapir process, no TAP in this namespace.
check_eq "tapir processes left" "$(pgrep -c -x tapir || true)" 0
"#,
    );
}

/// `tapir run` confines its network process once the command runs: no_new_privs, a seccomp
/// filter, and a root directory with nothing in it, in mount and user namespaces of its own
/// (tapir runs as uid 65534 here, so the mount namespace needs the user namespace). The
/// network still carries a fetch from the host's loopback made after the checks, the
/// command's exit status still comes back, and SIGTERM still reaches the command. `--no-sandbox` leaves tapir as it started. When
/// the network cannot start once the command runs, the command does not run on without it.
#[test]
fn run_confines_its_network_process() {
    World::tapir("run_sandbox").needs(&["curl", "pgrep"]).run_ok(
        r#"
echo 'served to a confined tapir' > "$W/tmp/hello.txt"
start web python3 -m http.server --bind 127.0.0.1 8080 --directory "$W/tmp"
wait_port tcp 8080
# guest_after_checks: the command waits until the checks are done, then fetches and exits 3.
guest_after_checks() {
    rm -f "$W/tmp/checked"
    guest sh -c 'until [ -e "$W/tmp/checked" ]; do sleep 0.1; done
        curl -sS --max-time 10 http://10.0.2.2:8080/hello.txt; exit 3' >"$W/tmp/fetched" 2>&1 &
    GP=$!
    wait_until 10 "tapir to start" pgrep -u 65534 -x tapir
    # The oldest: the guest's own process execs sh at once.
    TP=$(pgrep -o -u 65534 -x tapir)
}
# Lets that guest go on: it fetches, then exits 3. $1 says how tapir ran.
guest_finishes() {
    touch "$W/tmp/checked"
    rc=0
    wait "$GP" || rc=$?
    check_eq "the command's exit status $1" "$rc" 3
    check_eq "fetched $1" "$(cat "$W/tmp/fetched")" "served to a confined tapir"
}
guest_after_checks
wait_until 10 "tapir to install its filter" grep -q $'^Seccomp:\t2' "/proc/$TP/status"
status=$(cat "/proc/$TP/status")
check_match "tapir's no_new_privs" "$status" $'NoNewPrivs:\t1'
# Nothing but the directory of the host's resolv.conf (here a file bound over /etc/resolv.conf),
# read-only, so that tapir notices a change to it.
check_eq "what tapir's root directory holds" "$(ls -A "/proc/$TP/root/" 2>&1)" "etc"
check_match "how tapir sees /etc" "$(awk '$5 == "/etc" { print $6 }' "/proc/$TP/mountinfo")" '^ro,'
check_eq "tapir's view of resolv.conf" "$(cat "/proc/$TP/root/etc/resolv.conf")" "nameserver 127.0.0.1"
check test "$(readlink "/proc/$TP/ns/mnt")" != "$(readlink /proc/self/ns/mnt)"
check test "$(readlink "/proc/$TP/ns/user")" != "$(readlink /proc/self/ns/user)"
# Its network namespace is still the caller's: that is where its host sockets live.
check_eq "tapir's network namespace" "$(readlink "/proc/$TP/ns/net")" "$(readlink /proc/self/ns/net)"
guest_finishes "through a confined tapir"

# A termination signal to the confined tapir is passed on to the command (kill), whose end
# tapir still sees and reaps (wait4): tapir exits as the command did, 128 + SIGTERM.
guest_after_checks
wait_until 10 "tapir to install its filter" grep -q $'^Seccomp:\t2' "/proc/$TP/status"
kill -TERM "$TP"
rc=0
wait "$GP" || rc=$?
check_eq "the status of a confined tapir sent SIGTERM" "$rc" 143
check_eq "the fetch of a command that was terminated" "$(cat "$W/tmp/fetched")" ""

TAPIR_ARGS=(--no-sandbox)
guest_after_checks
sleep 1
status=$(cat "/proc/$TP/status")
check_match "--no-sandbox: no filter" "$status" $'Seccomp:\t0'
check_match "--no-sandbox: no_new_privs unset" "$status" $'NoNewPrivs:\t0'
check_eq "--no-sandbox: tapir's root" "$(readlink "/proc/$TP/root")" /
check_eq "--no-sandbox: tapir's mount namespace" "$(readlink "/proc/$TP/ns/mnt")" "$(readlink /proc/self/ns/mnt)"
guest_finishes "with --no-sandbox"

# The network fails to start after the command is running (here: the -p port is taken). tapir
# says so in one sentence, and the command is killed rather than left without a network.
start taken python3 -c 'import socket, time
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", 18085)); s.listen(); time.sleep(60)'
wait_port tcp 18085
rc=0
err=$(tapir_run -p 127.0.0.1:18085:80 -- sh -c 'sleep 2; echo ran > "$W/tmp/ran"' 2>&1) || rc=$?
check_eq "exit status when the network cannot start" "$rc" 125
check_match "the sentence for a taken port" "$err" '^tapir: cannot listen on 127\.0\.0\.1:18085 for -p 127\.0\.0\.1:18085:80'
check_eq "lines on stderr" "$(printf '%s\n' "$err" | wc -l)" 1
sleep 3
check_eq "the command ran on without its network" "$(cat "$W/tmp/ran" 2>/dev/null || echo no)" no
"#,
    );
}
