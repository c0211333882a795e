//! tapir as a drop-in slirp4netns, driven by the real clients: the raw workflow from
//! slirp4netns's man page, rootlesskit, and rootless podman.
//!
//! Every scenario runs against the binary its world names as `$S4NN` (see
//! `World::slirp4netns_compat`): `Impl::Debian` is Debian's slirp4netns, which proves the
//! scenario; `Impl::Tapir` is tapir behind a symlink named `slirp4netns`, checked the same way.
//! The clients find the binary the way they do in the field: rootlesskit through
//! `--slirp4netns-binary`, podman through `network_cmd_path` in containers.conf. Both are given
//! `$S4NN_LOGGED`, a wrapper named slirp4netns that logs every argv to `log/slirp4netns-argv.log`
//! before it execs `$S4NN`, so each scenario proves which binary ran and how it was called.
//!
//! Everything runs as uid 65534, with subordinate ids only in the scenario's mount namespace; no
//! image is pulled (podman runs `--rootfs` on a busybox tree the scenario builds).

mod common;

use common::{Impl, World};

/// The workflow of slirp4netns(1), by hand: a user+net namespace from `unshare -Urn`, the binary
/// attached to it with `--configure`, ready and exit pipes, and the API socket.
const RAW_WORKFLOW: &str = r#"
in_ns() {
    as_user nsenter --preserve-credentials --user --net --target "$ns_pid" -- "$@"
}
json() {
    python3 -c 'import json, sys; print(json.dumps(json.loads(sys.stdin.read()), sort_keys=True, separators=(",", ":")))'
}
api() {
    s4nn_api "$sock" "$1" | json
}
seconds_since() {
    python3 -c 'import sys; print("%.3f" % (float(sys.argv[1]) - float(sys.argv[2])))' "$EPOCHREALTIME" "$1"
}

as_user unshare -Urn --fork sleep infinity &
ns_pid=$!
wait_until 5 "the sleeper in its own namespaces" pgrep -P "$ns_pid" -x sleep

# The ready pipe is read here; the exit pipe's only writer is a sleeper that is killed to hang up.
sock="$W/tmp/s4nn.sock"
mkfifo -m 0600 "$W/tmp/ready" "$W/tmp/exit"
exec 7<>"$W/tmp/ready"
as_user sleep infinity 3>"$W/tmp/exit" &
exit_writer=$!
start s4nn as_user "$S4NN_LOGGED" --configure --mtu=65520 --api-socket "$sock" -r 3 -e 4 \
    "$ns_pid" tap0 3>"$W/tmp/ready" 4<"$W/tmp/exit" 7<&-
s4nn_pid=$!
started=$EPOCHREALTIME
ready=
until read -r -t 0.1 -n 1 -u 7 ready; do
    if gone "$s4nn_pid"; then
        rc=0
        wait "$s4nn_pid" || rc=$?
        fail "the binary exited with status $rc before it wrote to its ready fd"
    fi
    [ "${EPOCHREALTIME%.*}" -lt "$((${started%.*} + 10))" ] || fail "nothing on the ready fd within 10 s"
done
exec 7<&-
echo "ready after $(seconds_since "$started") s"
check_eq "what the binary wrote on its ready fd" "$ready" 1
check test -S "$sock"
log=$(cat "$S4NN_LOG")
check_match "the logged argv" "$log" \
    "^pid $s4nn_pid argv \S+/slirp4netns --configure --mtu=65520 --api-socket $sock -r 3 -e 4 $ns_pid tap0 fds "
check_match "the binary's fds 3 and 4" "$log" " 3=$W/tmp/ready 4=$W/tmp/exit( |\$)"

out=$(in_ns sh -c 'ip -o link show dev tap0; ip -4 -o addr show dev tap0; ip -4 route show default')
check_match "tap0 is up" "$out" 'tap0: <[A-Z_,]*[<,]?UP[,>]'
check_match "tap0's MTU" "$out" ' mtu 65520 '
check_match "tap0's address" "$out" 'inet 10\.0\.2\.100/24 '
check_match "the default route" "$out" '^default via 10\.0\.2\.2 dev tap0'

# Out: the host's loopback through the gateway (host loopback is not disabled here).
start host-whoami actor tcp-whoami 127.0.0.1 8080
wait_port tcp 8080
check_eq "a host server asked through 10.0.2.2" "$(in_ns actor tcp-ask 10.0.2.2 8080)" "peer 127.0.0.1"

# In: a forward added through the API reaches a server in the namespace.
start ns-whoami in_ns actor tcp-whoami 0.0.0.0 8000
wait_until 10 "the namespace's server to listen" in_ns listening tcp 8000
out=$(api '{"execute":"add_hostfwd","arguments":{"proto":"tcp","host_addr":"127.0.0.1","host_port":18080,"guest_port":8000}}')
check_eq "add_hostfwd 127.0.0.1:18080 -> 8000" "$out" '{"return":{"id":1}}'
wait_port tcp 18080
check_eq "the namespace's server asked through 127.0.0.1:18080" "$(actor tcp-ask 127.0.0.1 18080)" "peer 10.0.2.2"
out=$(api '{"execute":"list_hostfwd"}')
check_match "list_hostfwd with one forward" "$out" \
    '"entries":\[\{"guest_addr":"10\.0\.2\.100","guest_port":8000,"host_addr":"127\.0\.0\.1","host_port":18080,"id":1,"proto":"tcp"\}\]'

out=$(api '{"execute":"remove_hostfwd","arguments":{"id":1}}')
check_eq "remove_hostfwd 1" "$out" '{"return":{}}'
check_match "a connect to 127.0.0.1:18080 once removed" "$(actor tcp-connect 127.0.0.1 18080 3)" '^refused '
check_match "list_hostfwd once removed" "$(api '{"execute":"list_hostfwd"}')" '"entries":\[\]'
out=$(api '{"execute":"add_hostfwd","arguments":{"proto":"udp","host_port":18081,"guest_addr":"","guest_port":8001}}')
check_eq "the next add_hostfwd's id (ids are never reused)" "$out" '{"return":{"id":2}}'
check_match "list_hostfwd: host_addr and guest_addr defaults" "$(api '{"execute":"list_hostfwd"}')" \
    '"entries":\[\{"guest_addr":"10\.0\.2\.100","guest_port":8001,"host_addr":"0\.0\.0\.0","host_port":18081,"id":2,"proto":"udp"\}\]'

# Bad requests: an error with slirp4netns's exact description, and the server carries on.
while IFS='|' read -r request desc; do
    check_eq "the reply to $request" "$(api "$request")" "{\"error\":{\"desc\":\"$desc\"}}"
done <<'EOF'
{"execute":|bad request: cannot parse JSON
{"execute":"frobnicate"}|bad request: unknown execute
{"arguments":{}}|bad request: no execute found
{"execute":"add_hostfwd","arguments":{"proto":"sctp","host_port":18082,"guest_port":8000}}|bad request: add_hostfwd: bad arguments.proto
{"execute":"add_hostfwd","arguments":{"proto":"tcp","host_port":0,"guest_port":8000}}|bad request: add_hostfwd: bad arguments.host_port
{"execute":"add_hostfwd","arguments":{"proto":"tcp","host_port":18082}}|bad request: add_hostfwd: bad arguments.guest_port
{"execute":"add_hostfwd","arguments":{"proto":"udp","host_port":18081,"guest_port":8001}}|bad request: add_hostfwd: slirp_add_hostfwd failed
{"execute":"remove_hostfwd","arguments":{"id":99}}|bad request: remove_hostfwd: bad arguments.id
{"execute":"remove_hostfwd","arguments":{"id":1}}|bad request: remove_hostfwd: bad arguments.id
{"execute":"remove_hostfwd","arguments":{}}|bad request: remove_hostfwd: bad arguments.id
EOF
check_match "list_hostfwd after the bad requests" "$(api '{"execute":"list_hostfwd"}')" '"id":2,"proto":"udp"'

# The exit pipe's hang-up ends the binary at once, with status 0, and its socket file goes.
hung_up=$EPOCHREALTIME
kill "$exit_writer"
wait_gone 3 "$s4nn_pid" "the binary, once its exit pipe hung up"
echo "gone within $(seconds_since "$hung_up") s of the hang-up"
rc=0
wait "$s4nn_pid" || rc=$?
check_eq "the binary's exit status after the hang-up" "$rc" 0
check test ! -e "$sock"
"#;

#[test]
fn raw_workflow_debian() {
    World::slirp4netns_compat("s4nn_raw_debian", Impl::Debian)
        .needs(&["mkfifo", "python3"])
        .run_ok(RAW_WORKFLOW);
}

#[test]
fn raw_workflow_tapir() {
    World::slirp4netns_compat("s4nn_raw_tapir", Impl::Tapir)
        .needs(&["mkfifo", "python3"])
        .run_ok(RAW_WORKFLOW);
}

/// An exit fd that is not open: slirp4netns still sets the namespace up and writes "1" on its
/// ready fd, then its first poll sees POLLNVAL and it exits 0 ("exitfd event"), as after a
/// hang-up. A caller waiting on the ready fd sees success, not EOF.
const CLOSED_EXIT_FD: &str = r#"
as_user unshare -Urn --fork sleep infinity &
ns_pid=$!
wait_until 5 "the sleeper in its own namespaces" pgrep -P "$ns_pid" -x sleep
rc=0
out=$(timeout 10 as_user "$S4NN" --configure -r 3 -e 9 "$ns_pid" tap0 3>"$W/tmp/ready" 9<&- 2>&1) || rc=$?
check_eq "the exit status with a closed exit fd" "$rc" 0
check_eq "what it wrote on its ready fd" "$(cat "$W/tmp/ready")" 1
check_match "what it printed" "$out" "exitfd event"
"#;

#[test]
fn closed_exit_fd_debian() {
    World::slirp4netns_compat("s4nn_closed_exit_debian", Impl::Debian).run_ok(CLOSED_EXIT_FD);
}

#[test]
fn closed_exit_fd_tapir() {
    World::slirp4netns_compat("s4nn_closed_exit_tapir", Impl::Tapir).run_ok(CLOSED_EXIT_FD);
}

/// rootlesskit with `--net=slirp4netns --port-driver=slirp4netns`: its child serves HTTP on :80,
/// forwarded from the host's 127.0.0.1:18080 through the API; it reaches the remote host and the
/// DNS at 10.0.2.3, but not the host's loopback. The options are dockerd-rootless.sh's: host
/// loopback disabled, sandbox and seccomp `auto` (on when the binary's --help lists them).
const ROOTLESSKIT: &str = r#"
start remote-whoami in_remote actor tcp-whoami 198.51.100.10 8080
wait_port in_remote tcp 8080
start host-whoami actor tcp-whoami 127.0.0.1 8081
wait_port tcp 8081
mkdir -p "$W/www" "$W/tmp/child"
echo "hello from the rootlesskit child" >"$W/www/index.html"
chown 65534:65534 "$W/tmp/child"
cat >"$W/bin/rootlesskit-child" <<'EOF'
#!/bin/bash
# Runs as root in rootlesskit's user namespace (uid 65534 outside); reports through files.
set -eu
out="$W/tmp/child"
ip -4 -o addr show dev tap0 >"$out/addr"
cat /etc/resolv.conf >"$out/resolv.conf"
actor tcp-ask 198.51.100.10 8080 >"$out/remote" 2>&1
actor tcp-connect 10.0.2.2 8081 3 >"$out/host-loopback" 2>&1
actor dns-query 10.0.2.3 tapir.test >"$out/dns" 2>&1
getent ahostsv4 tapir.test >"$out/getent" 2>&1 || true
busybox httpd -f -p 80 -h "$W/www" &
until listening tcp 80; do sleep 0.05; done
touch "$out/ready"
until [ -e "$W/tmp/host-done" ]; do sleep 0.05; done
kill $!
EOF
chmod 0755 "$W/bin/rootlesskit-child"

start rootlesskit as_rootless rootlesskit --debug --state-dir="$W/tmp/rk" --net=slirp4netns \
    --slirp4netns-binary="$S4NN_LOGGED" --disable-host-loopback --slirp4netns-sandbox=auto \
    --slirp4netns-seccomp=auto --port-driver=slirp4netns -p 127.0.0.1:18080:80/tcp \
    --copy-up=/etc rootlesskit-child
rk_pid=$!
wait_ready "$W/tmp/child/ready" "$rk_pid"
check_match "the child's tap0" "$(cat "$W/tmp/child/addr")" 'inet 10\.0\.2\.100/24 '
check_match "the child's resolv.conf" "$(cat "$W/tmp/child/resolv.conf")" '^nameserver 10\.0\.2\.3$'
check_eq "the remote host asked from the child" "$(cat "$W/tmp/child/remote")" "peer 198.51.100.1"
check_match "a connect to the host's loopback from the child" "$(cat "$W/tmp/child/host-loopback")" '^ENETUNREACH after 0\.'
check_eq "A tapir.test from 10.0.2.3 in the child" "$(cat "$W/tmp/child/dns")" "NOERROR 192.0.2.53"
check_match "getent ahostsv4 tapir.test in the child" "$(cat "$W/tmp/child/getent")" '^192\.0\.2\.53 '

wait_port tcp 18080
out=$(curl -sS --max-time 10 http://127.0.0.1:18080/)
check_eq "the child's httpd through 127.0.0.1:18080" "$out" "hello from the rootlesskit child"

# The binary that served it is the one the world names, called as rootlesskit 1.1.0 calls it.
log=$(cat "$S4NN_LOG")
check_match "rootlesskit's feature probe" "$log" '^pid [0-9]+ argv \S+/slirp4netns --help '
check_match "rootlesskit's argv" "$log" \
    "^pid [0-9]+ argv \S+/slirp4netns --mtu 65520 -r 3 --disable-host-loopback --api-socket $W/tmp/rk/\.s4nn\.sock --enable-sandbox --enable-seccomp [0-9]+ tap0 fds "
s4nn_pid=$(grep -- ' tap0 fds ' "$S4NN_LOG" | cut -d' ' -f2)

touch "$W/tmp/host-done"
rc=0
wait "$rk_pid" || rc=$?
check_eq "rootlesskit's exit status once its child is done" "$rc" 0
wait_gone 5 "$s4nn_pid" "the binary, once rootlesskit is done"
"#;

#[test]
fn rootlesskit_debian() {
    World::slirp4netns_compat("s4nn_rootlesskit_debian", Impl::Debian)
        .with_remote()
        .needs(&["rootlesskit", "newuidmap", "newgidmap", "busybox", "curl"])
        .run_ok(ROOTLESSKIT);
}

#[test]
fn rootlesskit_tapir() {
    World::slirp4netns_compat("s4nn_rootlesskit_tapir", Impl::Tapir)
        .with_remote()
        .needs(&["rootlesskit", "newuidmap", "newgidmap", "busybox", "curl"])
        .run_ok(ROOTLESSKIT);
}

/// Rootless podman with `network_cmd_path` naming the world's binary (through the logging
/// wrapper), runc and cgroupfs, and `--rootfs` on a busybox tree instead of an image. One
/// container serves HTTP through `-p` with `port_handler=slirp4netns` (the forward goes through
/// the API socket); another reaches the remote host and the DNS at 10.0.2.3. `podman rm -f`
/// (and `--rm`) must end the binary: conmon holds the writer of its exit pipe (-e).
const PODMAN: &str = r#"
pod() {
    bounded as_rootless podman "$@"
}

# podman's locks live in /dev/shm: a private one keeps them apart from the machine's and other
# worlds'. A shared / silences podman's warning; it stays inside this mount namespace.
mount -t tmpfs -o mode=1777,size=16m tapir-test-shm /dev/shm
mount --make-rshared /

rootfs="$W/rootfs"
mkdir -p "$rootfs/bin" "$rootfs/etc" "$rootfs/www" "$rootfs/proc" "$rootfs/sys" "$rootfs/dev" \
    "$rootfs/tmp" "$rootfs/run"
cp "$(command -v busybox)" "$rootfs/bin/busybox"
for applet in $("$rootfs/bin/busybox" --list); do
    [ -e "$rootfs/bin/$applet" ] || ln -s busybox "$rootfs/bin/$applet"
done
printf 'root:x:0:0:root:/:/bin/sh\n' >"$rootfs/etc/passwd"
printf 'root:x:0:\n' >"$rootfs/etc/group"
echo "hello from the podman container" >"$rootfs/www/index.html"
chown -R 65534:65534 "$rootfs"

mkdir -p "$W/podman"
cat >"$W/podman/containers.conf" <<EOF
[engine]
network_cmd_path = "$S4NN_LOGGED"
cgroup_manager = "cgroupfs"
events_logger = "file"
runtime = "runc"
[network]
default_rootless_network_cmd = "slirp4netns"
EOF
cat >"$W/podman/storage.conf" <<EOF
[storage]
driver = "vfs"
runroot = "$W/podman/runroot"
graphroot = "$W/podman/graphroot"
EOF
chown -R 65534:65534 "$W/podman"
export CONTAINERS_CONF="$W/podman/containers.conf" CONTAINERS_STORAGE_CONF="$W/podman/storage.conf"

mkdir -p "$W/www-remote"
echo "hello from the remote host" >"$W/www-remote/index.html"
start remote-httpd in_remote busybox httpd -f -p 198.51.100.10:8080 -h "$W/www-remote"
wait_port in_remote tcp 8080

# In: the container's httpd through a forward podman adds over the API.
pod run -d --name web --network slirp4netns:port_handler=slirp4netns -p 127.0.0.1:18090:80 \
    --rootfs "$rootfs" httpd -f -p 80 -h /www
wait_port tcp 18090
out=$(curl -sS --max-time 10 http://127.0.0.1:18090/)
check_eq "the container's httpd through 127.0.0.1:18090" "$out" "hello from the podman container"

# Out: the remote host and the DNS, from a second container (the default port handler).
out=$(pod run --rm --name out --network slirp4netns --rootfs "$rootfs" sh -c '
    cat /etc/resolv.conf
    wget -qO- http://198.51.100.10:8080/
    nslookup tapir.test 10.0.2.3')
check_match "the container's resolv.conf" "$out" '^nameserver 10\.0\.2\.3$'
check_match "the remote host's page, fetched in the container" "$out" '^hello from the remote host$'
check_match "tapir.test looked up at 10.0.2.3 in the container" "$out" '^Address: 192\.0\.2\.53$'

# The binary that served both is the world's, called as podman 4.3.1 calls it.
log=$(cat "$S4NN_LOG")
check_match "podman's feature probe" "$log" '^pid [0-9]+ argv \S+/slirp4netns --help '
runs=$(grep -c -- ' tap0 fds ' "$S4NN_LOG")
check_eq "runs of the binary (one per container)" "$runs" 2
web=$(grep -- ' tap0 fds ' "$S4NN_LOG" | head -1)
check_match "podman's argv with port_handler=slirp4netns" "$web" \
    "^pid [0-9]+ argv \S+/slirp4netns --disable-host-loopback --mtu=65520 --enable-sandbox --enable-seccomp --enable-ipv6 -c -e 3 -r 4 --api-socket /run/user/65534/libpod/tmp/[0-9a-f]{64}\.net --netns-type=path /run/user/65534/netns/netns-\S+ tap0 fds "
out_run=$(grep -- ' tap0 fds ' "$S4NN_LOG" | tail -1)
wait_gone 5 "$(cut -d' ' -f2 <<<"$out_run")" "the second container's binary, once the container is gone"

# podman rm -f: conmon goes, the exit pipe hangs up, the binary exits.
pod rm -f web
wait_gone 5 "$(cut -d' ' -f2 <<<"$web")" "the web container's binary, once podman rm -f is done"
check_eq "containers left" "$(pod ps -aq)" ""
kill "$(cat "$W/run/libpod/tmp/pause.pid")"
"#;

#[test]
fn podman_debian() {
    World::slirp4netns_compat("s4nn_podman_debian", Impl::Debian)
        .with_remote()
        .needs(&[
            "podman",
            "runc",
            "conmon",
            "newuidmap",
            "newgidmap",
            "busybox",
            "curl",
        ])
        .time_limits(120, 60)
        .run_ok(PODMAN);
}

#[test]
fn podman_tapir() {
    World::slirp4netns_compat("s4nn_podman_tapir", Impl::Tapir)
        .with_remote()
        .needs(&[
            "podman",
            "runc",
            "conmon",
            "newuidmap",
            "newgidmap",
            "busybox",
            "curl",
        ])
        .time_limits(120, 60)
        .run_ok(PODMAN);
}

/// `--enable-sandbox --enable-seccomp` confine tapir before it reports ready: a root directory
/// with only resolv.conf's directory, no_new_privs and a seccomp filter, as /proc shows. The confined tapir still
/// carries traffic and serves the API, and still removes its API socket when it is stopped.
#[test]
fn sandbox_and_seccomp_confine_tapir_and_it_still_works() {
    World::slirp4netns_compat("seccomp_tapir", Impl::Tapir)
        .needs(&["python3", "curl"])
        .run_ok(
            r#"
mkdir -p "$W/www"
echo 'served to a confined tapir' > "$W/www/index.html"
start web python3 -m http.server --bind 127.0.0.1 8080 --directory "$W/www"
wait_port tcp 8080
as_user unshare -Urn --fork sleep infinity &
ns_pid=$!
wait_until 5 "the sleeper in its own namespaces" pgrep -P "$ns_pid" -x sleep
sock="$W/tmp/s4nn.sock"
start s4nn as_user "$S4NN" --configure --enable-sandbox --enable-seccomp --api-socket "$sock" "$ns_pid" tap0
s4nn_pid=$!
wait_until 10 "the API socket" test -S "$sock"
# The binary is a symlink; the process is tapir itself (no wrapper in between).
status=$(cat "/proc/$s4nn_pid/status")
check_match "tapir's seccomp mode" "$status" $'Seccomp:\t2'
check_match "tapir's no_new_privs" "$status" $'NoNewPrivs:\t1'
check_eq "what tapir's root directory holds" "$(ls -A "/proc/$s4nn_pid/root/" 2>&1)" "etc"
out=$(as_user nsenter --preserve-credentials --user --net --target "$ns_pid" -- \
    curl -sS --max-time 10 http://10.0.2.2:8080/)
check_eq "HTTP through the confined tapir" "$out" "served to a confined tapir"
check_eq "the API of the confined tapir" "$(s4nn_api "$sock" '{"execute":"add_hostfwd","arguments":{"proto":"tcp","host_port":18081,"guest_port":80}}')" '{"return":{"id":1}}'
kill -TERM "$s4nn_pid"
wait_gone 5 "$s4nn_pid" tapir
check_eq "the API socket after tapir stopped" "$(test -e "$sock" && echo left || echo removed)" removed
"#,
        );
}
