#!/bin/bash
# Cost of one SMTP session through the release front-end, counted rather than timed, so that
# a machine busy with other work still gives comparable figures: smtp-source -> one-worker
# front-end (`run --without-kernel`, loopback) -> smtp-sink, N sessions of 1 KiB and of
# 100 KiB (the cost scenario's smtp-source flags), each figure the median of RUNS runs.
#
#   bench/perf-session.sh [N_1K [N_100K [RUNS]]]      (defaults 2000 500 3)
#
# TOOL=perf (default): `perf stat -p PID` over each run: user/kernel instructions and user
# cycles where the machine has hardware counters (a VM often has none: perf then says "not
# supported" and they are left out), and always task-clock (ms) and system calls. TOOL=
# callgrind: user-space instructions (Ir) counted by valgrind, exact and load-independent:
# each run is a whole life of the front-end (warm-up, the sessions, stop) less a life
# without the sessions; the profiles are kept in OUT (default target/perf-session) for
# callgrind_annotate. Callgrind runs the front-end some 50 times slower: N 300 100 is
# plenty. ROBUSTIFIER_BIN picks the binary (default target/release/robustifier). Needs
# smtp-source/smtp-sink (postfix), perf or valgrind; as root the front-end runs as the
# robustifier user when there is one. SINK=chunking puts bench/chunking-sink.py in
# smtp-sink's place: a back-end that offers CHUNKING, as Postfix and Exim do, so the
# front-end relays each message as BDAT.
set -euo pipefail

N1=${1:-2000}
N100=${2:-500}
RUNS=${3:-3}
TOOL=${TOOL:-perf}
BIN=${ROBUSTIFIER_BIN:-target/release/robustifier}
OUT=${OUT:-target/perf-session}
# The front-end on CPU 0, the load on CPU 1 (as the bench pins them).
SUT_CPU=${SUT_CPU:-0}
LOAD_CPU=${LOAD_CPU:-1}

[ -x "$BIN" ] || { echo "perf-session: no $BIN (cargo build --release -p robustifier)" >&2; exit 1; }
mkdir -p "$OUT"
dir=$(mktemp -d /tmp/perf-session.XXXXXX)
# The front-end's user writes its control socket (and callgrind's counts) there.
mkdir "$dir/run"
if id robustifier >/dev/null 2>&1; then chown robustifier: "$dir/run"; chmod 0755 "$dir"; fi
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$dir"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
sink_port=$(free_port)
fe_port=$(free_port)

case ${SINK:-smtp-sink} in
smtp-sink) taskset -c "$LOAD_CPU" smtp-sink -u nobody "127.0.0.1:$sink_port" 4096 & ;;
chunking) taskset -c "$LOAD_CPU" python3 "$(dirname "$0")/chunking-sink.py" "127.0.0.1:$sink_port" & ;;
*) echo "perf-session: SINK is smtp-sink or chunking" >&2; exit 1 ;;
esac
pids+=($!)
for _ in $(seq 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$sink_port") 2>/dev/null && break
    sleep 0.1
done

# Health checks are spread out so that their work does not count as the sessions'.
cat >"$dir/robustifier.toml" <<EOF
[frontend]
name = "perf-session"
serve_loopback_clients = true
workers = 1

[ha]
control_socket = "$dir/run/control.sock"

[[service]]
name = "smtp"
protocol = "smtp"
port = $fe_port
vips = ["127.0.0.1"]
pool = "mx"
max_connections = 30000
max_per_client = 30000

[[pool]]
name = "mx"
identity = "none"
backend = [{ name = "be1", address = "127.0.0.1:$sink_port" }]

[pool.health]
interval_ms = 600000
EOF

run=("$BIN" run --without-kernel --config "$dir/robustifier.toml")
# Started as its own user (not root, from which it would drop to that user): callgrind
# then writes its counts with the rights it had when it created the file.
as_user=()
if [ "$(id -u)" = 0 ] && id robustifier >/dev/null 2>&1; then
    as_user=(setpriv --reuid=robustifier --regid=robustifier --clear-groups)
fi
fe=
start_fe() { # [callgrind output file]
    : >"$dir/fe.log"
    if [ $# = 1 ]; then
        taskset -c "$SUT_CPU" "${as_user[@]}" valgrind --tool=callgrind \
            --callgrind-out-file="$1" "${run[@]}" >/dev/null 2>"$dir/fe.log" &
    else
        taskset -c "$SUT_CPU" "${as_user[@]}" "${run[@]}" >/dev/null 2>"$dir/fe.log" &
    fi
    # taskset, setpriv and valgrind run the front-end in their own process: `$!` is its pid.
    fe=$!
    pids+=("$fe")
    for _ in $(seq 1200); do
        grep -q "robustifier ready" "$dir/fe.log" && return 0
        kill -0 "$fe" 2>/dev/null || break
        sleep 0.1
    done
    cat "$dir/fe.log" >&2
    echo "perf-session: front-end not ready" >&2
    exit 1
}
stop_fe() { # SIGTERM: an orderly stop, after which callgrind writes its counts
    kill -TERM "$fe"
    wait "$fe" || true
}

source_() { # sessions size
    taskset -c "$LOAD_CPU" smtp-source -s 20 -m "$1" -l "$2" -M client.invalid \
        -f bench@client.invalid -t rcpt@example.test "127.0.0.1:$fe_port"
}
warm_up() { source_ 200 1024; } # pools, kept legs, caches

median() { sort -g | awk '{v[NR]=$1} END {if (NR==0) print "n/a"; else if (NR%2) print v[(NR+1)/2]; else print (v[NR/2]+v[NR/2+1])/2}'; }
per() { awk -v v="$1" -v n="$2" 'BEGIN {printf (v / n >= 100 ? "%.0f" : "%.4g"), v / n}'; }
# Instructions callgrind counted in a whole run of the front-end.
ir() { awk '/^summary:|^totals:/ {print $2; exit}' "$1"; }

declare -A samples
case $TOOL in
perf)
    start_fe
    warm_up
    for r in $(seq "$RUNS"); do
        for size in 1024 102400; do
            n=$N1
            [ "$size" = 102400 ] && n=$N100
            perf stat -x, -o "$dir/stat" \
                -e instructions:u,instructions:k,cycles:u,task-clock,raw_syscalls:sys_enter \
                -p "$fe" -- bash -c "$(declare -f source_); LOAD_CPU=$LOAD_CPU fe_port=$fe_port source_ $n $size" >/dev/null
            while IFS=, read -r value _ event _; do
                case $value in '' | '<not'*) continue ;; esac
                samples[$size/$event]+="$(per "$value" "$n") "
            done < <(grep -v '^#' "$dir/stat")
        done
    done
    stop_fe
    ;;
callgrind)
    # Each run is a whole life of the front-end (callgrind counts from start to exit):
    # start, warm-up, the sessions, stop; less the same life without the sessions.
    for r in $(seq "$RUNS"); do
        start_fe "$dir/run/base.$r"
        warm_up
        stop_fe
        base=$(ir "$dir/run/base.$r")
        for size in 1024 102400; do
            n=$N1
            [ "$size" = 102400 ] && n=$N100
            start_fe "$dir/run/cg.$size.$r"
            warm_up
            source_ "$n" "$size" >/dev/null
            stop_fe
            samples[$size/Ir]+="$(per "$(($(ir "$dir/run/cg.$size.$r") - base))" "$n") "
            cp "$dir/run/cg.$size.$r" "$OUT/callgrind.$size.out"
        done
    done
    ;;
*) echo "perf-session: TOOL is perf or callgrind" >&2; exit 1 ;;
esac

echo "per session, median of $RUNS runs ($TOOL; 1 KiB: $N1 sessions, 100 KiB: $N100):"
for key in $(printf '%s\n' "${!samples[@]}" | sort); do
    printf '  %-36s %14s   (%s)\n' "$key" \
        "$(tr ' ' '\n' <<<"${samples[$key]}" | grep . | median)" "${samples[$key]% }"
done
[ "$TOOL" = callgrind ] && echo "profiles: $OUT/callgrind.{1024,102400}.out (callgrind_annotate)"
exit 0
