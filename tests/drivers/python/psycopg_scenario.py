"""The driver scenario with psycopg 3 (sync API, one thread per worker).

Connection from PGHOST/PGPORT/PGUSER/PGPASSWORD/PGDATABASE; DRIVER_WORKERS
concurrent workers each run the scenario DRIVER_REPS times on a fresh
connection. Prints one JSON record per line, ordered by worker, repetition
and step, so two runs can be compared as text. Exits 1 if a worker failed.
"""

import datetime
import decimal
import json
import os
import sys
import threading

import psycopg

from scenario_common import LITERALS, REPS, WORKERS, ZONES, plain


def run(w, rep, out):
    def rec(step, v):
        out.append({"w": w, "rep": rep, "i": len(out), "step": step, "v": plain(v)})
        print(f"progress w{w} rep{rep} {step}", file=sys.stderr, flush=True)

    table = f"drv_psycopg_w{w}"
    notices = []
    # Odd workers prepare every statement (prepare_threshold=0) in autocommit
    # mode; even ones use psycopg's defaults (implicit transactions).
    odd = w % 2 == 1
    conn = psycopg.connect(
        host=os.environ["PGHOST"],
        port=os.environ["PGPORT"],
        user=os.environ["PGUSER"],
        password=os.environ["PGPASSWORD"],
        dbname=os.environ["PGDATABASE"],
        autocommit=odd,
        prepare_threshold=0 if odd else 5,
        connect_timeout=10,
    )
    conn.add_notice_handler(lambda d: notices.append(d.message_primary))
    with conn:
        rec("tz_initial", conn.execute("SHOW TimeZone").fetchone()[0])
        conn.commit()
        cur = conn.execute("SELECT 1 AS one, 'hello'::text AS s")
        rec("simple", {"cols": [c.name for c in cur.description], "rows": cur.fetchall()})
        rec("param", conn.execute("SELECT %s::int + 1, %s::text || '!'", (41, "x")).fetchone())
        rec(
            "prepared",
            [conn.execute("SELECT %s::int * 2 AS d", (i,), prepare=True).fetchone()[0] for i in range(6)],
        )
        conn.commit()
        for text in LITERALS:
            conn.execute(text)
        rec(
            "after_literals",
            [conn.execute("SELECT %s::int * 2 AS d", (i,), prepare=True).fetchone()[0] for i in range(3)],
        )
        # psycopg forgets its statements on DEALLOCATE ALL and prepares again.
        conn.execute("DEALLOCATE ALL")
        rec(
            "after_deallocate_all",
            [conn.execute("SELECT %s::int * 2 AS d", (i,), prepare=True).fetchone()[0] for i in range(3)],
        )
        conn.commit()

        conn.execute(f"DROP TABLE IF EXISTS {table}")
        conn.execute(f"CREATE TABLE {table} (k int PRIMARY KEY, v text)")
        conn.commit()
        count = f"SELECT count(*) FROM {table}"
        with conn.transaction():
            conn.execute(f"INSERT INTO {table} VALUES (1, 'one')")
            rec("txn_inside", conn.execute(count).fetchone()[0])
            raise psycopg.Rollback()
        rec("txn_rolled_back", conn.execute(count).fetchone()[0])
        conn.commit()
        with conn.transaction():
            conn.execute(f"INSERT INTO {table} VALUES (%s, %s), (%s, %s)", (2, "two", 3, None))
        rec("txn_committed", conn.execute(f"SELECT k, v FROM {table} ORDER BY k").fetchall())
        conn.commit()

        try:
            conn.execute("SELECT 1/0")
            rec("error", "no error")
        except psycopg.Error as e:
            rec("error", [e.sqlstate, e.diag.message_primary])
            conn.rollback()
        rec("after_error", conn.execute("SELECT 2").fetchone()[0])
        conn.commit()
        try:
            with conn.transaction():
                conn.execute(f"INSERT INTO {table} VALUES (4, 'four')")
                conn.execute("SELECT 1/0")
        except psycopg.Error as e:
            rec("error_in_txn", [e.sqlstate, conn.info.transaction_status.name])
        rec("after_error_in_txn", conn.execute(count).fetchone()[0])
        conn.commit()

        sent = (
            7,
            b"\x00\x01\xffab",
            decimal.Decimal("12345.678900"),
            datetime.datetime(2024, 2, 29, 13, 45, 6, 123456, tzinfo=datetime.timezone.utc),
            psycopg.types.json.Jsonb({"a": [1, 2, None], "b": "\u00e9"}),
            None,
            "na\u00efve \u2603",
        )
        rec(
            "types_param",
            conn.execute(
                "SELECT %s::int4, %s::bytea, %s::numeric, %s::timestamptz, %s::jsonb, %s::text, %s::text",
                sent,
            ).fetchone(),
        )
        rec(
            "types_server",
            conn.execute(
                "SELECT NULL::int, '\\x0102'::bytea, 1.50::numeric, "
                "'2024-01-01 00:00:00+00'::timestamptz, '{\"k\": [1, null]}'::json, "
                "ARRAY[1, NULL, 3]::int[]"
            ).fetchone(),
        )
        conn.commit()

        conn.execute(f"SET TimeZone = '{ZONES[w % len(ZONES)]}'")
        conn.commit()
        with conn.transaction():
            rec(
                "tz_later_txn",
                [
                    conn.execute("SHOW TimeZone").fetchone()[0],
                    conn.execute("SELECT '2024-06-01 12:00:00+00'::timestamptz::text").fetchone()[0],
                    conn.execute("SELECT '2024-06-01 12:00:00+00'::timestamptz").fetchone()[0],
                ],
            )
        conn.commit()

        notices.clear()
        conn.execute("DO $$ BEGIN RAISE NOTICE 'hello %', 42; END $$")
        conn.commit()
        rec("notice", notices)

        cur = conn.cursor()
        with cur.copy(f"COPY {table} (k, v) FROM STDIN") as copy:
            copy.write_row((10, "ten"))
            copy.write_row((11, None))
            copy.write_row((12, "tab\there"))
        conn.commit()
        with cur.copy(f"COPY (SELECT k, v FROM {table} WHERE k >= 10 ORDER BY k) TO STDOUT") as copy:
            rec("copy_out", list(copy.rows()))
        conn.commit()

        conn.autocommit = True
        conn.execute(f"LISTEN ch_psycopg_{w}")
        conn.execute(f"NOTIFY ch_psycopg_{w}, 'payload {rep}'")
        got = [(n.channel, n.payload) for n in conn.notifies(timeout=5, stop_after=1)]
        rec("notify", got)
        rec("final", [conn.execute(count).fetchone()[0], conn.execute("SHOW TimeZone").fetchone()[0]])


def worker(w, results):
    out = []
    try:
        for rep in range(REPS):
            run(w, rep, out)
    except Exception as e:  # recorded so the comparison shows it
        out.append({"w": w, "rep": -1, "i": len(out), "step": "FAILED", "v": f"{type(e).__name__}: {e}"})
    results[w] = out


def main():
    results = [None] * WORKERS
    threads = [threading.Thread(target=worker, args=(w, results)) for w in range(WORKERS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    failed = False
    for out in results:
        for r in out:
            failed |= r["step"] == "FAILED"
            print(json.dumps(r, sort_keys=True, ensure_ascii=True))
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
