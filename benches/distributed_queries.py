#!/usr/bin/env python3
"""Distributed queries: the query suite of queries_vs_duckdb.py on plain `prism sql`, and on
`prism sql --workers` with 1 coordinator and N `prism worker` processes on loopback, in one run,
on the same lake. Reports each query's time (best of --runs, net of the process start-up measured
with `SELECT 1` in each mode) and the distributed/plain ratio. All processes share this machine,
so this measures the overhead of distribution (planning stages, gRPC, Arrow IPC), not a
cluster's speed-up.

Usage (the binary built with the `distributed` feature):
  cargo build --release --features distributed
  python3 benches/distributed_queries.py LAKE [--prism target/release/prism] [--workers 2] [--runs 3]
      [--set distributed.file_scan_config_bytes_per_partition=1048576 ...]
"""
import argparse
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from queries_vs_duckdb import QUERIES, Prism, best, sql_for  # noqa: E402


def start_worker(binary):
    p = subprocess.Popen([binary, "worker", "--listen", "127.0.0.1:0"], stdout=subprocess.PIPE, text=True)
    line = p.stdout.readline().strip()
    if not line.startswith("prism worker listening on "):
        p.kill()
        raise RuntimeError(f"the worker said: {line!r}")
    return p, line.rsplit(" ", 1)[1]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("lake")
    ap.add_argument("--prism", default="target/release/prism")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--only", nargs="*", help="query names to run (default: all)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a session setting of the distributed runs")
    args = ap.parse_args()
    lake = os.path.abspath(args.lake)
    queries = [q for q in QUERIES if not args.only or q[0] in args.only]
    workers = [start_worker(args.prism) for _ in range(args.workers)]
    try:
        plain = Prism(args.prism, lake, [], [])
        dist = Prism(args.prism, lake, args.set, [])
        dist.prefix = ["--workers", ",".join(url for _, url in workers), *dist.prefix]
        _, out = plain.run("SELECT count(*) FROM events")
        print(f"lake: {lake}: {int(out.decode().split()[-1]):,} events; {args.workers} workers on loopback; {os.cpu_count()} CPUs", flush=True)
        startup = {m: best([p.run("SELECT 1")[0] for _ in range(args.runs + 1)]) for m, p in (("plain", plain), ("distributed", dist))}
        print(f"start-up (SELECT 1): plain {startup['plain']:.3f} s, distributed {startup['distributed']:.3f} s", flush=True)
        rows = []
        for name, _, query in queries:
            sql = sql_for(query, "prism")
            if plain.rows(sql) != dist.rows(sql):
                print(f"  WARNING {name}: the row counts differ", flush=True)
            t = {}
            for mode, p in (("plain", plain), ("distributed", dist)):
                t[mode] = max(best([p.run(sql)[0] for _ in range(args.runs)]) - startup[mode], 0.0)
            rows.append((name, t["plain"], t["distributed"]))
            print(f"  {name:20} plain {t['plain']:7.3f} s  distributed {t['distributed']:7.3f} s  ratio {t['distributed'] / max(t['plain'], 1e-9):5.2f}", flush=True)
        print()
        print("| query | plain `prism sql` s | on workers s | ratio | overhead s |")
        print("|---|---|---|---|---|")
        for name, p, d in rows:
            print(f"| {name} | {p:.3f} | {d:.3f} | {d / max(p, 1e-9):.2f} | {d - p:+.3f} |")
        tp, td = sum(r[1] for r in rows), sum(r[2] for r in rows)
        print(f"| **total** | {tp:.3f} | {td:.3f} | {td / max(tp, 1e-9):.2f} | {td - tp:+.3f} |")
    finally:
        for p, _ in workers:
            p.kill()
            p.wait()


if __name__ == "__main__":
    main()
