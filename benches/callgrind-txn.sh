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
#   instructions per transaction of the whole process and of its main thread
#   (lagrouter's sessions; its health monitor and blocking pool run on
#   threads of their own), and leaves the profile in target/callgrind/LABEL.*
#   (callgrind_annotate reads it).
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
${RUNAS:-} valgrind --tool=callgrind --callgrind-out-file="$out/$label.%p" "$@" >"$out/$label.log" 2>&1 &
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
txns=$(pgbench -h 127.0.0.1 -p "$port" -n $pgargs -t "$nt" 2>&1 | sed -n 's/^number of transactions actually processed: \([0-9]*\).*/\1/p')
[[ -n $txns && $txns -gt 0 ]] || { echo "callgrind-txn: pgbench failed" >&2; exit 1; }
${RUNAS:-} callgrind_control -d "$vp" >/dev/null
sleep 1
cleanup
vp=
prof=$(ls -t "$out/$label".*.1 | head -1)
total=$(sed -n 's/^summary: //p' "$prof")
main=$(callgrind_annotate --threshold=100 --auto=no --inclusive=yes "$prof" 2>/dev/null |
    awk '!done && NF > 2 && ($NF ~ /:main$/ || $(NF-1) ~ /:main$/) { gsub(",", "", $1); print $1; done = 1 }')
echo "$label: $txns transactions, $((total / txns)) instructions per transaction (main thread: $(( ${main:-0} / txns )); profile $prof)"
