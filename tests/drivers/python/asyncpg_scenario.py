"""The driver scenario with asyncpg (default statement cache, conn.prepare()).

Same contract as psycopg_scenario.py: PG* env vars, DRIVER_WORKERS
concurrent workers x DRIVER_REPS fresh connections, one JSON record per
line ordered by worker/repetition/step, exit 1 if a worker failed.
"""

import asyncio
import datetime
import decimal
import io
import json
import os
import sys

import asyncpg

from scenario_common import LITERALS, REPS, WORKERS, ZONES
from scenario_common import plain as plain_any


def plain(v):
    return plain_any(v, asyncpg.Record)


async def run(w, rep, out):
    def rec(step, v):
        out.append({"w": w, "rep": rep, "i": len(out), "step": step, "v": plain(v)})
        print(f"progress w{w} rep{rep} {step}", file=sys.stderr, flush=True)

    table = f"drv_asyncpg_w{w}"
    conn = await asyncpg.connect(
        host=os.environ["PGHOST"],
        port=int(os.environ["PGPORT"]),
        user=os.environ["PGUSER"],
        password=os.environ["PGPASSWORD"],
        database=os.environ["PGDATABASE"],
        timeout=10,
    )
    notices = []
    conn.add_log_listener(lambda _c, msg: notices.append(msg.message))
    try:
        rec("tz_initial", await conn.fetchval("SHOW TimeZone"))
        rows = await conn.fetch("SELECT 1 AS one, 'hello'::text AS s")
        rec("simple", {"cols": list(rows[0].keys()), "rows": rows})
        rec("param", await conn.fetchrow("SELECT $1::int + 1, $2::text || '!'", 41, "x"))
        # The statement cache: the same text again reuses the server-side statement.
        rec("cached", [await conn.fetchval("SELECT $1::int * 3 AS t", i) for i in range(6)])
        stmt = await conn.prepare("SELECT $1::int * 2 AS d")
        rec("prepared", [await stmt.fetchval(i) for i in range(6)])
        for text in LITERALS:
            await conn.execute(text)
        rec("after_literals", [await stmt.fetchval(i) for i in range(3)])

        await conn.execute(f"DROP TABLE IF EXISTS {table}")
        await conn.execute(f"CREATE TABLE {table} (k int PRIMARY KEY, v text)")
        count = f"SELECT count(*) FROM {table}"
        tr = conn.transaction()
        await tr.start()
        await conn.execute(f"INSERT INTO {table} VALUES ($1, $2)", 1, "one")
        rec("txn_inside", await conn.fetchval(count))
        await tr.rollback()
        rec("txn_rolled_back", await conn.fetchval(count))
        async with conn.transaction():
            await conn.executemany(f"INSERT INTO {table} VALUES ($1, $2)", [(2, "two"), (3, None)])
        rec("txn_committed", await conn.fetch(f"SELECT k, v FROM {table} ORDER BY k"))

        try:
            await conn.fetchval("SELECT 1/0")
            rec("error", "no error")
        except asyncpg.PostgresError as e:
            rec("error", [e.sqlstate, str(e)])
        rec("after_error", await conn.fetchval("SELECT 2"))
        try:
            async with conn.transaction():
                await conn.execute(f"INSERT INTO {table} VALUES (4, 'four')")
                await conn.execute("SELECT 1/0")
        except asyncpg.PostgresError as e:
            rec("error_in_txn", [e.sqlstate, conn.is_in_transaction()])
        rec("after_error_in_txn", await conn.fetchval(count))

        sent = (
            7,
            b"\x00\x01\xffab",
            decimal.Decimal("12345.678900"),
            datetime.datetime(2024, 2, 29, 13, 45, 6, 123456, tzinfo=datetime.timezone.utc),
            json.dumps({"a": [1, 2, None], "b": "\u00e9"}),
            None,
            "na\u00efve \u2603",
        )
        rec(
            "types_param",
            await conn.fetchrow(
                "SELECT $1::int4, $2::bytea, $3::numeric, $4::timestamptz, $5::jsonb, $6::text, $7::text",
                *sent,
            ),
        )
        rec(
            "types_server",
            await conn.fetchrow(
                "SELECT NULL::int, '\\x0102'::bytea, 1.50::numeric, "
                "'2024-01-01 00:00:00+00'::timestamptz, '{\"k\": [1, null]}'::json, "
                "ARRAY[1, NULL, 3]::int[]"
            ),
        )

        await conn.execute(f"SET TimeZone = '{ZONES[w % len(ZONES)]}'")
        async with conn.transaction():
            rec(
                "tz_later_txn",
                [
                    await conn.fetchval("SHOW TimeZone"),
                    await conn.fetchval("SELECT '2024-06-01 12:00:00+00'::timestamptz::text"),
                ],
            )

        notices.clear()
        await conn.execute("DO $$ BEGIN RAISE NOTICE 'hello %', 42; END $$")
        await asyncio.sleep(0)
        rec("notice", notices)

        await conn.copy_records_to_table(table, records=[(10, "ten"), (11, None)], columns=["k", "v"])
        await conn.copy_to_table(table, source=io.BytesIO(b"12\ttab\\there\n"), columns=["k", "v"])
        buf = io.BytesIO()
        await conn.copy_from_query(f"SELECT k, v FROM {table} WHERE k >= 10 ORDER BY k", output=buf)
        rec("copy_out", buf.getvalue().decode())

        got = asyncio.get_running_loop().create_future()

        def on_notify(_c, _pid, channel, payload):
            if not got.done():
                got.set_result([channel, payload])

        await conn.add_listener(f"ch_asyncpg_{w}", on_notify)
        await conn.execute(f"NOTIFY ch_asyncpg_{w}, 'payload {rep}'")
        try:
            rec("notify", await asyncio.wait_for(got, 5))
        except asyncio.TimeoutError:
            rec("notify", "timed out")
        rec("final", [await conn.fetchval(count), await conn.fetchval("SHOW TimeZone")])
    finally:
        await conn.close(timeout=10)


async def worker(w):
    out = []
    try:
        for rep in range(REPS):
            await run(w, rep, out)
    except Exception as e:
        out.append({"w": w, "rep": -1, "i": len(out), "step": "FAILED", "v": f"{type(e).__name__}: {e}"})
    return out


async def main():
    results = await asyncio.gather(*(worker(w) for w in range(WORKERS)))
    failed = False
    for out in results:
        for r in out:
            failed |= r["step"] == "FAILED"
            print(json.dumps(r, sort_keys=True, ensure_ascii=True))
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    asyncio.run(main())
