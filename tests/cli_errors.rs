//! Bad input to `tapir run`: each case must exit non-zero within a few seconds, without running
//! the command, with a short message (at most three non-empty lines, no panic) on stderr that
//! names the offending value. A control case checks that the same options, well-formed, run.

mod common;

use common::World;

/// `rejects OFFENDING ARGS...` runs `tapir run ARGS` (where a command is given, it is
/// `touch $W/tmp/ran`) and records every way it misbehaves; all cases run, and the scenario fails
/// listing each problem found.
const REJECTS: &str = r#"
problems=()
ran=(touch "$W/tmp/ran")
rejects() {
    local offending=$1 rc=0 started=$SECONDS err lines
    shift
    rm -f "$W/tmp/ran"
    timeout 10 as_user "$TAPIR" run "$@" > "$W/tmp/out" 2> "$W/tmp/err" || rc=$?
    err=$(cat "$W/tmp/err")
    lines=$(grep -c . "$W/tmp/err" || true)
    local case="tapir run $*"
    if [ "$rc" = 0 ]; then problems+=("$case: exit status 0"); fi
    if [ "$rc" = 124 ] || [ $((SECONDS - started)) -gt 5 ]; then problems+=("$case: took more than 5 s"); fi
    if [ -e "$W/tmp/ran" ]; then problems+=("$case: ran the command"); fi
    if ! grep -qiF -- "$offending" <<<"$err"; then
        problems+=("$case: stderr does not name '$offending': ${err:-(empty)}")
    fi
    if grep -q 'panicked' <<<"$err"; then problems+=("$case: panicked: $err"); fi
    if [ "$lines" -gt 3 ]; then problems+=("$case: $lines lines on stderr, not one sentence: $err"); fi
}
rejects 8080 -p 8080 -- "${ran[@]}"
rejects x:80 -p x:80 -- "${ran[@]}"
rejects 8080:80/sctp -p 8080:80/sctp -- "${ran[@]}"
rejects 70000:80 -p 70000:80 -- "${ran[@]}"
rejects 8080:0 -p 8080:0 -- "${ran[@]}"
rejects 300.1.2.3:8080:80 -p 300.1.2.3:8080:80 -- "${ran[@]}"
rejects 10.0.2.100/24 --cidr 10.0.2.100/24 -- "${ran[@]}"
rejects 10.0.2.0/33 --cidr 10.0.2.0/33 -- "${ran[@]}"
rejects 10.0.2 --cidr 10.0.2 -- "${ran[@]}"
rejects abc --mtu abc -- "${ran[@]}"
rejects 100 --mtu 100 -- "${ran[@]}"
rejects 8000-8010 -T 8000-8010 -- "${ran[@]}"
rejects 80:0 -T 80:0 -- "${ran[@]}"
rejects 5432 -T 5432 -T 5432:5433 -- "${ran[@]}"
rejects --disable-host-loopback --disable-host-loopback -T 5432 -- "${ran[@]}"
rejects 1001 --busy-poll 1001 -- "${ran[@]}"
# No command at all: the message must say a command is missing.
rejects command
rejects command --
rejects command -p 127.0.0.1:18080:80 --
if [ "${#problems[@]}" -gt 0 ]; then
    fail "$(printf '\n  %s' "${problems[@]}")"
fi
"#;

#[test]
fn bad_input_is_refused_with_one_sentence() {
    World::tapir("cli_errors").run_ok(REJECTS);
}

/// The control: the options the cases above break, well-formed, are accepted and the command runs.
#[test]
fn well_formed_options_are_accepted() {
    World::tapir("cli_accepts").run_ok(
        r#"
tapir_run -p 127.0.0.1:18080:80/tcp -p 18081:81/udp -p 18082:82 --cidr 10.0.3.0/24 --mtu 1500 \
    -T 5432 -T 8080:80 --busy-poll 1000 -- touch "$W/tmp/ran"
check test -e "$W/tmp/ran"
"#,
    );
}
