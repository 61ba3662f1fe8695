#!/usr/bin/env bash
# callgrind-txn.sh - a proxy's user-space instructions per transaction, under
# valgrind's callgrind: a count that repeats run to run (to within a few
# percent: health checks and pool connects fall where they fall), unlike
# CPU time on a shared machine. Kernel work (the socket calls) is not counted.
#
# Usage:
#   benches/callgrind-txn.sh LABEL PORT "PGBENCH ARGS" PROXY-COMMAND...
#
#   Starts PROXY-COMMAND under callgrind, waits until PORT answers, runs
#   pgbench once to warm up (NW transactions per client, default 200), zeroes
#   the counters, runs pgbench with NT transactions per client (default 1000),
#   dumps the counters and stops the proxy. Prints the transactions run, the
#   instructions per transaction of the whole process and of its busiest
#   thread that reads sockets (lagrouter's session worker; its main
#   thread, health monitor and blocking pool run on threads of their own,
#   and callgrind keeps one profile per thread), and leaves the profiles in
#   target/callgrind/LABEL.PID.1-NN (callgrind_annotate reads them).
#
#   CACHE_SIM=1 also simulates the caches (valgrind --cache-sim=yes, about
#   twice as slow) and prints the instruction-cache misses per transaction
#   (I1mr: 64-byte lines fetched again because the path per transaction did
#   not stay in the host's L1i; the kernel's share is not simulated), and the
#   busiest thread's data-cache misses per transaction (reads and writes
#   that missed L1d, and the last-level cache: the working set of many
#   sessions at once). LL=BYTES sets the simulated last level's size (the
#   host's L3 may be hundreds of MiB shared with other tenants; a core's L2
#   is the level a proxy's many sessions must fit in to stay fast). The
#   kernel's copies into the process's buffers are not simulated: a read of
#   bytes just received counts as a miss if the line was not in the cache.
#   Under the simulation a proxy runs about a hundred times slower: at
#   hundreds of clients give it the time (lagrouter: `[pool]
#   checkout_timeout`, `[health] check_interval` and `check_timeout`), or
#   the warm-up fails on a pool wait or a health check.
#
#   FOOTPRINT=1 records the instruction addresses (--dump-instr=yes; needs
#   python3) and prints the busiest thread's hot code: the 64-byte lines of the
#   instructions that ran in at least half of the transactions. A path that
#   spans more than the L1 instruction cache (32 KiB here) is fetched again
#   on every transaction.
#
#   LOCKS=1 also records the instruction addresses and prints how many
#   lock-prefixed instructions (atomic read-modify-writes: lock cmpxchg,
#   lock xadd, xchg with memory...) the busiest thread ran per transaction
#   in the proxy's own binary (not in shared libraries; needs objdump),
#   with the functions that ran most of them. Callgrind counts one such
#   instruction as one, but each costs tens of cycles: an ordering the
#   instruction count does not show.
#
#   NET=1 counts the transactions net of the logins: pgbench connects its
#   clients again for the measured run, and at 400 clients of 50
#   transactions each a login is 1 in 50 transactions (a SCRAM exchange:
#   about a fifth of a short run's instructions). It runs the measured
#   pgbench twice, NT then 2 x NT transactions per client, dumps after
#   each, and reports the second less the first over the transactions
#   the second ran more: the logins, as many in both, cancel. The
#   profiles left are both runs' dumps (NN.1-TT and NN.2-TT); FOOTPRINT and
#   LOCKS read the second, per transaction of that run, logins included.
#
#   The proxy must accept user app, password app, database app on 127.0.0.1
#   (PGUSER, PGPASSWORD, PGDATABASE override). RUNAS="runuser -u postgres --"
#   runs the proxy as another user (PgBouncer refuses to run as root).
#
# Example (a primary on 55440 with pgbench tables; lagrouter.toml listening
# on 7023, pgbouncer.ini on 7030):
#   benches/callgrind-txn.sh lagrouter 7023 "-S -M simple -c 4 -j 1" \
#       target/release/lagrouter run --config lagrouter.toml
#   RUNAS="runuser -u postgres --" benches/callgrind-txn.sh pgbouncer 7030 \
#       "-S -M simple -c 4 -j 1" /opt/pgbouncer-1.25.2/bin/pgbouncer pgbouncer.ini
set -euo pipefail
[[ $# -ge 4 ]] || { sed -n '2,30p' "$0"; exit 2; }
label=$1 port=$2 pgargs=$3
shift 3
for t in valgrind callgrind_control callgrind_annotate pgbench psql; do
    command -v "$t" >/dev/null || { echo "callgrind-txn: $t not found (apt-get install valgrind postgresql-client)" >&2; exit 1; }
done
export PGUSER=${PGUSER:-app} PGPASSWORD=${PGPASSWORD:-app} PGDATABASE=${PGDATABASE:-app}
nw=${NW:-200} nt=${NT:-1000}
out=$(pwd)/target/callgrind
mkdir -p "$out"
chmod 777 "$out"
rm -f "$out/$label".*
# shellcheck disable=SC2086
sim=()
[[ ${CACHE_SIM:-0} == 1 ]] && sim+=(--cache-sim=yes)
# The host's last level is shared by every tenant; LL=BYTES simulates a
# private one of that size (say the core's L2) instead.
# (16-way, 64-byte lines; or LL=BYTES,WAYS,64 when the sets would not be a
# power of two).
if [[ ${CACHE_SIM:-0} == 1 && -n ${LL:-} ]]; then
    [[ $LL == *,* ]] && sim+=(--LL="$LL") || sim+=(--LL="$LL,16,64")
fi
[[ ${FOOTPRINT:-0} == 1 || ${LOCKS:-0} == 1 ]] && sim+=(--dump-instr=yes)
proxy_bin=$(command -v "$1" || true)
${RUNAS:-} valgrind --tool=callgrind --separate-threads=yes "${sim[@]}" --callgrind-out-file="$out/$label.%p" "$@" >"$out/$label.log" 2>&1 &
cleanup() { [[ -n ${vp:-} ]] && { kill -INT "$vp" 2>/dev/null; sleep 2; kill -KILL "$vp" 2>/dev/null; } || true; }
trap cleanup EXIT
for _ in $(seq 1 120); do
    psql -h 127.0.0.1 -p "$port" -Atc 'select 1' >/dev/null 2>&1 && break
    sleep 1
done
vp=$(pgrep -f "callgrind-out-file=$out/$label" | tail -1)
[[ -n $vp ]] || { echo "callgrind-txn: the proxy did not start; see $out/$label.log" >&2; exit 1; }
# shellcheck disable=SC2086
pgbench -h 127.0.0.1 -p "$port" -n $pgargs -t "$nw" >/dev/null 2>&1 || { echo "callgrind-txn: warm-up failed" >&2; exit 1; }
${RUNAS:-} callgrind_control -z "$vp" >/dev/null
# shellcheck disable=SC2086
measure() { # transactions per client; prints the transactions run
    local n
    # shellcheck disable=SC2086
    n=$(pgbench -h 127.0.0.1 -p "$port" -n $pgargs -t "$1" 2>&1 | sed -n 's/^number of transactions actually processed: \([0-9]*\).*/\1/p')
    [[ -n $n && $n -gt 0 ]] || { echo "callgrind-txn: pgbench failed" >&2; exit 1; }
    ${RUNAS:-} callgrind_control -d "$vp" >/dev/null
    echo "$n"
}
txns=$(measure "$nt")
part=1
if [[ ${NET:-0} == 1 ]]; then
    first_txns=$txns
    txns=$(measure $((2 * nt)))
    part=2
fi
sleep 1
cleanup
vp=
# One file per thread (--separate-threads). The busiest of those that read
# sockets is where the transactions ran: lagrouter's session worker
# (lagrouter-worker-0, with the default workers = 1), PgBouncer's one
# thread; the others are
# lagrouter's main thread (listener, maintenance), health monitor and
# blocking pool (a server login's key stretching runs there).
first_prof=$(ls -t "$out/$label".*."$part"-01 | head -1)
profs=("${first_prof%-01}"-*)
# Events: Ir, or with CACHE_SIM=1 Ir Dr Dw I1mr D1mr D1mw ILmr DLmr DLmw.
sum_part() { # field number, files...
    local k=$1
    shift
    sed -n 's/^summary: //p' "$@" | awk -v k="$k" '{ s += $k } END { print s + 0 }'
}
# With NET=1, a file's count less that of the same thread in the first
# run's dump (part 1).
sum_of() { # field number, files...
    local k=$1 n
    shift
    n=$(sum_part "$k" "$@")
    if [[ $part == 2 ]]; then
        local f firsts=()
        for f in "$@"; do
            [[ -e ${f%.2-*}.1-${f##*.2-} ]] && firsts+=("${f%.2-*}.1-${f##*.2-}")
        done
        ((${#firsts[@]} > 0)) && n=$((n - $(sum_part "$k" "${firsts[@]}")))
    fi
    echo "$n"
}
per_txn() { awk -v m="$1" -v t="$txns" 'BEGIN { printf "%.1f", m / t }'; }
# Only threads that wait on sockets count: a server login's key stretching
# (tens of thousands of instructions per transaction of a short run, on the
# blocking pool's thread) is busier than the sessions' loop now and then.
main_prof=$first_prof main=0
for pass in sockets any; do
    for p in "${profs[@]}"; do
        if [[ $pass == sockets ]] && ! grep -q -E '^c?fn=\([0-9]+\) .*(recv|epoll_wait)' "$p"; then
            continue
        fi
        n=$(sum_of 1 "$p")
        if ((n > main)); then main=$n main_prof=$p; fi
    done
    ((main > 0)) && break
done
total=$(sum_of 1 "${profs[@]}")
run_txns=$txns # the profile's own (FOOTPRINT, LOCKS)
if [[ $part == 2 ]]; then
    echo "$label: net of logins: $txns - $first_txns transactions"
    txns=$((txns - first_txns))
fi
echo "$label: $txns transactions, $((total / txns)) instructions per transaction (busiest thread: $((main / txns)); profile $main_prof)"
if [[ ${CACHE_SIM:-0} == 1 ]]; then
    echo "$label: instruction-cache misses per transaction: $(per_txn "$(sum_of 4 "${profs[@]}")") (busiest thread: $(per_txn "$(sum_of 4 "$main_prof")"))"
    d1=$(($(sum_of 5 "$main_prof") + $(sum_of 6 "$main_prof")))
    dl=$(($(sum_of 8 "$main_prof") + $(sum_of 9 "$main_prof")))
    echo "$label: busiest thread's data-cache misses per transaction: L1d $(per_txn "$d1"), last level $(per_txn "$dl")"
fi
if [[ ${FOOTPRINT:-0} == 1 || ${LOCKS:-0} == 1 ]]; then
    if [[ ${LOCKS:-0} == 1 ]]; then
        command -v objdump >/dev/null || { echo "callgrind-txn: objdump not found (apt-get install binutils)" >&2; exit 1; }
    fi
    python3 - "$main_prof" "$run_txns" "${FOOTPRINT:-0}" "${LOCKS:-0}" "$(readlink -f "$proxy_bin")" <<'PY'
import collections, os, re, subprocess, sys
path, txns = sys.argv[1], int(sys.argv[2])
footprint, locks, binary = sys.argv[3] == "1", sys.argv[4] == "1", sys.argv[5]
# Instructions per address (all objects), and the object and function of
# each: callgrind names a file or function once with its number, then by
# the number alone.
names = {"ob": {}, "fn": {}}
def name(kind, s):
    m = re.match(r"\((\d+)\)(?: (.*))?", s)
    if not m:
        return s
    if m.group(2):
        names[kind][m.group(1)] = m.group(2)
    return names[kind].get(m.group(1), m.group(1))
ir, where = collections.Counter(), {}
npos, last, call_cost, ob, fn = 1, 0, False, "", ""
for line in open(path, errors="replace"):
    if line.startswith("positions:"):
        npos = len(line.split()) - 1
    elif line.startswith(("ob=", "fn=")):
        kind = line[:2]
        v = name(kind, line[3:].strip())
        ob, fn = (v, fn) if kind == "ob" else (ob, v)
    elif line.startswith(("cob=", "cfn=")):
        name(line[1:3], line[4:].strip())
    elif line.startswith("calls="):
        call_cost = True  # the next cost line is a call's inclusive cost
    elif line[:1] and line[0] in "0123456789+-*":
        f = line.split()
        a = f[0]
        last = last if a == "*" else last + int(a, 0) if a[0] in "+-" else int(a, 0)
        if call_cost:
            call_cost = False
        elif len(f) > npos:
            ir[last] += int(f[npos])
            where[last] = (ob, fn)
if footprint:
    hot = {a >> 6 for a, n in ir.items() if n * 2 >= txns}
    print(f"hot code of the busiest thread: {len(hot)} lines of 64 bytes = {len(hot) * 64 / 1024:.1f} KiB")
if locks:
    own = os.path.basename(binary)
    mine = {a: n for a, n in ir.items() if os.path.basename(where[a][0]) == own}
    dis = subprocess.run(["objdump", "-d", "--no-show-raw-insn", binary], capture_output=True, text=True).stdout
    locked = set()
    for l in dis.splitlines():
        m = re.match(r"\s*([0-9a-f]+):\s+(\S+)(.*)", l)
        if m and (m.group(2) == "lock" or (m.group(2).startswith("xchg") and "(" in m.group(3))):
            locked.add(int(m.group(1), 16))
    # The binary's load address under valgrind: the one that puts the
    # most executed addresses on instructions.
    base = max((0, 0x108000, 0x4000000), key=lambda b: sum(1 for a in mine if a - b in locked))
    by_fn = collections.Counter()
    for a, n in mine.items():
        if a - base in locked:
            by_fn[where[a][1]] += n
    total = sum(by_fn.values())
    print(f"lock-prefixed instructions per transaction (busiest thread, {own} only): {total / txns:.1f}")
    for f, n in by_fn.most_common(8):
        print(f"  {n / txns:6.1f}  {f[:100]}")
PY
fi
