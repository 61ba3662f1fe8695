#!/usr/bin/env python3
"""commit-lsn-cost.py - what asking for the commit LSN costs the primary.

lagrouter asks the primary where a writing transaction's commit landed,
right behind the client's COMMIT. This measures the server CPU each way of
asking adds to a transaction, straight against PostgreSQL (no proxy): one
connection runs `BEGIN; SELECT 1` then a COMMIT, alone or with a question
behind it, and the server process's CPU time (/proc/PID/schedstat, in ns)
is divided by the transactions. The variants run in rotating order, round
after round; the medians are printed with the increment over the COMMIT
alone.

  simple-base          Query COMMIT
  simple+query         ... + Query SELECT pg_current_wal_insert_lsn()
  simple+named         ... + Bind/Execute/Sync of the SELECT prepared once
  simple+fcall         ... + FunctionCall of the function by OID (lagrouter)
  ext-base             Parse/Bind/Execute COMMIT, Sync
  ext+inbatch-unnamed  ... + Parse/Bind/Execute/Close of the SELECT, before the Sync
  ext+inbatch-named    ... + Bind/Execute of the SELECT prepared once, before the Sync
  ext+fcall            ... + FunctionCall after the Sync (lagrouter)

Usage (on the primary's host, which must trust the connection: the unix
socket of a cluster made by initdb's defaults does):

  python3 benches/commit-lsn-cost.py --socket-dir /tmp/clu/run --port 55440 \\
      --user app --dbname app --txns 1000 --rounds 16

Standard library only. The transactions write nothing (the COMMIT of a
read-only transaction is cheap and steady); the question costs the same.
"""
import argparse
import os
import socket
import statistics
import struct
import sys

PG_CURRENT_WAL_INSERT_LSN = 2852
LSN_SQL = "SELECT pg_catalog.pg_current_wal_insert_lsn()"


def msg(tag, body):
    return tag + struct.pack("!i", len(body) + 4) + body


def cstr(s):
    return s.encode() + b"\0"


def query(sql):
    return msg(b"Q", cstr(sql))


def parse(sql, name=""):
    return msg(b"P", cstr(name) + cstr(sql) + struct.pack("!h", 0))


def bind(statement=""):
    return msg(b"B", cstr("") + cstr(statement) + struct.pack("!hhh", 0, 0, 0))


BIND = bind()
BIND_LSN = bind("lsn")
EXECUTE = msg(b"E", cstr("") + struct.pack("!i", 0))
CLOSE = msg(b"C", b"S" + cstr(""))
SYNC = msg(b"S", b"")
FCALL = msg(b"F", struct.pack("!ihhh", PG_CURRENT_WAL_INSERT_LSN, 0, 0, 0))

VARIANTS = {
    "simple-base": (query("COMMIT"), 1),
    "simple+query": (query("COMMIT") + query(LSN_SQL), 2),
    "simple+named": (query("COMMIT") + BIND_LSN + EXECUTE + SYNC, 2),
    "simple+fcall": (query("COMMIT") + FCALL, 2),
    "ext-base": (parse("COMMIT") + BIND + EXECUTE + SYNC, 1),
    "ext+inbatch-unnamed": (
        parse("COMMIT") + BIND + EXECUTE + parse(LSN_SQL) + BIND + EXECUTE + CLOSE + SYNC,
        1,
    ),
    "ext+inbatch-named": (parse("COMMIT") + BIND + EXECUTE + BIND_LSN + EXECUTE + SYNC, 1),
    "ext+fcall": (parse("COMMIT") + BIND + EXECUTE + SYNC + FCALL, 2),
}


class Conn:
    def __init__(self, args):
        if args.socket_dir:
            self.sock = socket.socket(socket.AF_UNIX)
            self.sock.connect(os.path.join(args.socket_dir, f".s.PGSQL.{args.port}"))
        else:
            self.sock = socket.create_connection((args.host, args.port))
            self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        body = struct.pack("!i", 196608)
        body += cstr("user") + cstr(args.user) + cstr("database") + cstr(args.dbname) + b"\0"
        self.sock.sendall(struct.pack("!i", len(body) + 4) + body)
        self.buf = b""
        for m in self.until_ready(1):
            if m[:1] == b"R" and struct.unpack("!i", m[5:9])[0] != 0:
                sys.exit("commit-lsn-cost: the server asks for a password; use a trusted connection")

    def read(self):
        while len(self.buf) < 5 or len(self.buf) < 1 + struct.unpack("!i", self.buf[1:5])[0]:
            data = self.sock.recv(65536)
            if not data:
                sys.exit("commit-lsn-cost: the server closed the connection")
            self.buf += data
        n = 1 + struct.unpack("!i", self.buf[1:5])[0]
        m, self.buf = self.buf[:n], self.buf[n:]
        return m

    def until_ready(self, count):
        out = []
        while count:
            m = self.read()
            if m[:1] == b"E":
                sys.exit(f"commit-lsn-cost: server error: {m[5:]!r}")
            out.append(m)
            if m[:1] == b"Z":
                count -= 1
        return out

    def run(self, data, readies):
        self.sock.sendall(data)
        return self.until_ready(readies)


def cpu_ns(pid):
    with open(f"/proc/{pid}/schedstat") as f:
        return int(f.read().split()[0])


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--socket-dir", help="connect over this unix socket directory")
    ap.add_argument("--host", default="127.0.0.1", help="else over TCP to this host")
    ap.add_argument("--port", type=int, default=5432)
    ap.add_argument("--user", default=os.environ.get("PGUSER", "postgres"))
    ap.add_argument("--dbname", default=os.environ.get("PGDATABASE", "postgres"))
    ap.add_argument("--txns", type=int, default=1000, help="transactions per variant and round")
    ap.add_argument("--rounds", type=int, default=16)
    args = ap.parse_args()
    c = Conn(args)
    row = [m for m in c.run(query("SELECT pg_backend_pid()"), 1) if m[:1] == b"D"][0]
    pid = int(row[11:].decode())
    c.run(parse(LSN_SQL, "lsn") + SYNC, 1)
    if not os.path.exists(f"/proc/{pid}/schedstat"):
        sys.exit(f"commit-lsn-cost: server process {pid} is not on this host")
    names = list(VARIANTS)
    spent = {k: [] for k in names}
    for r in range(args.rounds):
        k = r % len(names)
        for name in names[k:] + names[:k]:
            data, readies = VARIANTS[name]
            t0 = cpu_ns(pid)
            for _ in range(args.txns):
                c.run(query("BEGIN; SELECT 1"), 1)
                c.run(data, readies)
            spent[name].append((cpu_ns(pid) - t0) / args.txns / 1000)
        print(f"round {r + 1}/{args.rounds}", file=sys.stderr)
    med = {k: statistics.median(v) for k, v in spent.items()}
    print(f"{'variant':22s} {'server us/txn':>14s} {'added':>7s}  (median of {args.rounds} rounds)")
    for name in names:
        base = med["simple-base" if name.startswith("simple") else "ext-base"]
        print(f"{name:22s} {med[name]:14.1f} {med[name] - base:+7.1f}")


if __name__ == "__main__":
    main()
