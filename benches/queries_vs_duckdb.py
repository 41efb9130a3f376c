#!/usr/bin/env python3
"""Query benchmark: Prism against DuckDB on the same lake, with a fixed suite of typical queries.

Prism runs each query through `prism sql --lake LAKE -c SQL --format csv`, one process per run,
output to /dev/null. The startup of a process (opening the lake, reading the Delta log, building
the session) is measured with `SELECT 1`, run alternately with each query's runs, and its best
there is subtracted from the query's best, so the per-query figures compare query work with
query work whatever the machine's drift; the totals are given with and without it.

DuckDB runs the same SQL in one process, each result written as CSV to /dev/null
(`COPY (query) TO '/dev/null'`), on its best layout of the same rows (`--duckdb-layout day`,
the default): its own copy of the events, written by DuckDB with its defaults and partitioned
by region and day (made once under --work, not timed). `--duckdb-layout lake` reads the
Parquet files of the Delta tables' current versions instead (from `_delta_log`, checkpoints
included, partition columns from the Hive-style paths).

It also reports the lake's size against DuckDB's copy, and how many bytes a one-hour and a
one-minute `eventtime` filter read (DataFusion's `bytes_scanned`, from EXPLAIN ANALYZE).

Each query runs `--runs` times per engine (default 3, after one warm-up run that also checks
that both engines return the same number of rows); the best run counts.

Usage:
  pip install duckdb==2.0.0
  cargo build --release
  prism generate --out /tmp/bench10m --accounts 2 --regions us-east-1,eu-west-1 --days 10 \\
      --events-per-day 250000 --seed 3
  prism backfill /tmp/bench10m --lake /tmp/lake10m     # ingest, then Insights (for join_insights)
  python3 benches/queries_vs_duckdb.py /tmp/lake10m [--prism target/release/prism] [--runs 3]
      [--only NAME ...] [--set datafusion.execution.batch_size=32768 ...] [--prelude SQL ...]

`--set KEY=VALUE` runs `SET KEY = VALUE` before every Prism query, in the same process (as an
extra `-c`), to measure a session setting's effect; `--prelude SQL` runs any statement there
(e.g. to register the table another way). Both are part of the startup that is subtracted.
"""
import argparse
import glob
import json
import re
import shutil
import os
import subprocess
import sys
import time

# The suite. Adding a query is one line: (name, what it exercises, SQL). The SQL is DataFusion's
# and DuckDB's common dialect; a dict {"prism": ..., "duckdb": ...} gives each engine its own.
# Times are 2024-01-0x, the generator's default start; `TIMESTAMP '… …'` literals are UTC in both
# sessions. `->>` is parenthesised: in DataFusion it binds looser than `=`.
QUERIES = [
    ("time_range_1h", "time-range filter (pruning) + group by, top 10",
     "SELECT eventname, count(*) AS n FROM events WHERE eventtime >= TIMESTAMP '2024-01-05 14:00:00' "
     "AND eventtime < TIMESTAMP '2024-01-05 15:00:00' GROUP BY eventname ORDER BY n DESC, eventname LIMIT 10"),
    ("time_range_1d", "time-range filter over a day, several aggregates",
     "SELECT count(*), count(errorcode), count(DISTINCT eventname), min(eventtime), max(eventtime) FROM events "
     "WHERE eventtime >= TIMESTAMP '2024-01-06 00:00:00' AND eventtime < TIMESTAMP '2024-01-07 00:00:00'"),
    ("group_by_api", "group by over every event",
     "SELECT eventsource, eventname, count(*) AS n, count(errorcode) AS errors FROM events GROUP BY 1, 2 ORDER BY n DESC, 1, 2"),
    ("top_n_latest", "top-N rows by time (sort with limit)",
     "SELECT eventtime, eventsource, eventname, useridentity['arn'] AS arn, sourceipaddress FROM events "
     "ORDER BY eventtime DESC, eventid LIMIT 100"),
    ("top_identities", "top-N groups on a struct field",
     "SELECT useridentity['arn'] AS arn, count(*) AS n FROM events GROUP BY 1 ORDER BY n DESC, arn LIMIT 10"),
    ("json_field_filter", "JSON field of requestparameters in a filter",
     "SELECT eventname, count(*) AS n FROM events WHERE (requestparameters->>'userName') = 'svc-user-7' GROUP BY 1 ORDER BY 1"),
    ("count_distinct", "count distinct on three columns",
     "SELECT count(DISTINCT sourceipaddress), count(DISTINCT useragent), count(DISTINCT requestid) FROM events"),
    ("per_hour_buckets", "time buckets (date_trunc) with errors",
     "SELECT date_trunc('hour', eventtime) AS hour, count(*) AS n, count(errorcode) AS errors FROM events GROUP BY 1 ORDER BY 1"),
    ("like_filter", "LIKE filters on strings",
     "SELECT count(*) FROM events WHERE useragent LIKE '%python-requests%' OR sourceipaddress LIKE '185.220.%'"),
    ("regex_filter", "regular-expression filter",
     {"prism": "SELECT eventname, count(*) FROM events WHERE regexp_like(useragent, '^aws-cli/2\\.[0-9]+') GROUP BY 1 ORDER BY 1",
      "duckdb": "SELECT eventname, count(*) FROM events WHERE regexp_matches(useragent, '^aws-cli/2\\.[0-9]+') GROUP BY 1 ORDER BY 1"}),
    ("join_ingest_log", "join with the ingest journal (events per delivered file status)",
     "SELECT f.status, count(*) AS events, count(DISTINCT e.sourcefile) AS files FROM events e "
     "JOIN ingested_files f ON e.sourcefile = f.sourcefile GROUP BY 1 ORDER BY 1"),
    ("join_insights", "join with insights: who called each Insight's API during it",
     "WITH s AS (SELECT sharedeventid, recipientaccountid, awsregion, insighteventsource, insighteventname, "
     "min(eventtime) AS t0, max(eventtime) AS t1 FROM insights GROUP BY 1, 2, 3, 4, 5) "
     "SELECT s.insighteventname, e.useridentity['arn'] AS arn, count(*) AS n FROM s JOIN events e "
     "ON e.recipientaccountid = s.recipientaccountid AND e.awsregion = s.awsregion AND e.eventsource = s.insighteventsource "
     "AND e.eventname = s.insighteventname AND e.eventtime >= s.t0 AND e.eventtime < s.t1 + INTERVAL '1 minute' "
     "GROUP BY 1, 2 ORDER BY n DESC, 1, 2 LIMIT 20"),
    ("self_join_errors", "self-join of two aggregates: error share per identity",
     "WITH t AS (SELECT useridentity['arn'] AS arn, count(*) AS n FROM events GROUP BY 1), "
     "e AS (SELECT useridentity['arn'] AS arn, count(*) AS n FROM events WHERE errorcode IS NOT NULL GROUP BY 1) "
     "SELECT t.arn, e.n AS errors, t.n AS calls FROM t JOIN e ON t.arn = e.arn ORDER BY errors DESC, t.arn LIMIT 20"),
]

# Prism's views over ingest_log (src/sql/mod.rs), defined the same way for DuckDB.
DUCKDB_VIEWS = """
CREATE VIEW ingested_files AS SELECT sourcefile, reason AS status, filesize, records, kept, duplicates, rejected, runid, ingestedat
FROM ingest_log WHERE kind = 'file';
"""


def delta_files(table_dir):
    """The data files of a Delta table's current version: the last checkpoint's adds, then the
    adds and removes of the JSON commits after it."""
    import duckdb

    log = os.path.join(table_dir, "_delta_log")
    live = {}
    after = -1
    last = os.path.join(log, "_last_checkpoint")
    if os.path.exists(last):
        version = json.load(open(last))["version"]
        parts = sorted(glob.glob(os.path.join(log, f"{version:020d}.checkpoint*.parquet")))
        con = duckdb.connect()
        for (path,) in con.execute(f"SELECT add.path FROM read_parquet({parts!r}) WHERE add IS NOT NULL").fetchall():
            live[path] = True
        after = version
    for f in sorted(glob.glob(os.path.join(log, "[0-9]" * 20 + ".json"))):
        if int(os.path.basename(f)[:20]) <= after:
            continue
        for line in open(f):
            action = json.loads(line)
            if "add" in action:
                live[action["add"]["path"]] = True
            elif "remove" in action:
                live.pop(action["remove"]["path"], None)
    from urllib.parse import unquote

    return [os.path.join(table_dir, unquote(p)) for p in live]


def sql_for(query, engine):
    return query[engine] if isinstance(query, dict) else query


def best(times):
    return min(times) if times else float("nan")


class Prism:
    def __init__(self, binary, lake, settings, preludes):
        self.binary, self.lake = binary, lake
        statements = ["SET {} = {}".format(*kv.split("=", 1)) for kv in settings] + preludes
        self.prefix = [arg for sql in statements for arg in ("-c", sql)]

    def run(self, sql, fmt="csv"):
        cmd = [self.binary, "sql", "--lake", self.lake, "--format", fmt, *self.prefix, "-c", sql]
        start = time.perf_counter()
        p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        secs = time.perf_counter() - start
        if p.returncode != 0:
            raise RuntimeError(f"prism failed on {sql!r}: {p.stderr.decode(errors='replace')[-1500:]}")
        return secs, p.stdout

    def rows(self, sql):
        _, out = self.run(sql, fmt="ndjson")
        # Statements before the query print nothing as ndjson: every line is a result row.
        return len([l for l in out.splitlines() if l.strip()])


class DuckDB:
    def __init__(self, lake, layout, work):
        import duckdb

        self.con = duckdb.connect()
        self.con.execute("SET TimeZone = 'UTC'")
        events = delta_files(os.path.join(lake, "events"))
        journal = delta_files(os.path.join(lake, "ingest_log"))
        source = (f"read_parquet({events!r}, hive_partitioning = true, "
                  "hive_types = {'awsregion': VARCHAR, 'eventperiod': VARCHAR})")
        if layout == "day":
            # DuckDB's best layout of the same rows: its own Parquet, by region and day, its
            # default settings.
            # Written once, not timed; the stamp names the lake files it was made from, so a copy
            # of another lake (or of an older version of this one) is made again.
            out = os.path.join(work, "duckdb-day")
            stamp = os.path.join(work, "duckdb-day.source")
            made_from = "\n".join(sorted(events))
            if not os.path.isdir(out) or not os.path.exists(stamp) or open(stamp).read() != made_from:
                shutil.rmtree(out, ignore_errors=True)
                os.makedirs(work, exist_ok=True)
                self.con.execute(f"COPY (SELECT *, strftime(eventtime, '%Y-%m-%d') AS day FROM {source}) "
                                 f"TO '{out}' (FORMAT parquet, PARTITION_BY (awsregion, day))")
                with open(stamp, "w") as f:
                    f.write(made_from)
            files = glob.glob(f"{out}/**/*.parquet", recursive=True)
            self.bytes = sum(os.path.getsize(f) for f in files)
            self.files = len(files)
            self.con.execute(f"CREATE VIEW events AS SELECT * EXCLUDE (day) FROM read_parquet('{out}/**/*.parquet', hive_partitioning = true, "
                             "hive_types = {'awsregion': VARCHAR, 'day': VARCHAR})")
        else:
            self.files = len(events)
            self.bytes = sum(os.path.getsize(f) for f in events)
            self.con.execute(f"CREATE VIEW events AS SELECT * FROM {source}")
        self.con.execute(f"CREATE VIEW ingest_log AS SELECT * FROM read_parquet({journal!r})")
        insights = delta_files(os.path.join(lake, "insights")) if os.path.isdir(os.path.join(lake, "insights")) else []
        if insights:
            self.con.execute(f"CREATE VIEW insights AS SELECT * FROM read_parquet({insights!r})")
        self.con.execute(DUCKDB_VIEWS)

    def run(self, sql):
        start = time.perf_counter()
        self.con.execute(f"COPY ({sql}) TO '/dev/null' (FORMAT csv)")
        return time.perf_counter() - start

    def rows(self, sql):
        return self.con.execute(f"SELECT count(*) FROM ({sql})").fetchone()[0]


def scanned_bytes(plan):
    """Sum of DataFusion's bytes_scanned metrics in an EXPLAIN ANALYZE text."""
    total = 0.0
    for m in re.finditer(r"bytes_scanned=([0-9.]+) ?([KMGT]?)", plan):
        total += float(m.group(1)) * {"K": 1e3, "M": 1e6, "G": 1e9, "T": 1e12}.get(m.group(2), 1)
    return total


def pruning(prism, lake_bytes):
    """Bytes a one-hour and a one-minute eventtime filter read, against the lake's size."""
    for name, start, end in [("one hour", "2024-01-05 14:00:00", "2024-01-05 15:00:00"), ("one minute", "2024-01-05 14:30:00", "2024-01-05 14:31:00")]:
        sql = f"EXPLAIN ANALYZE SELECT * FROM events WHERE eventtime >= TIMESTAMP '{start}' AND eventtime < TIMESTAMP '{end}'"
        _, out = prism.run(sql)
        b = scanned_bytes(out.decode(errors="replace"))
        print(f"pruning: a {name} filter read {b / 1e6:.2f} MB = {100 * b / lake_bytes:.2f}% of the lake", flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("lake")
    ap.add_argument("--prism", default="target/release/prism")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--only", nargs="*", help="query names to run (default: all)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a Prism session setting (repeatable)")
    ap.add_argument("--prelude", action="append", default=[], metavar="SQL", help="a statement run before each Prism query (repeatable)")
    ap.add_argument("--skip-duckdb", action="store_true", help="time Prism only (e.g. to compare settings)")
    ap.add_argument("--duckdb-layout", choices=["day", "lake"], default="day",
                    help="day (default): DuckDB queries its own day-partitioned copy of the events, its best layout; "
                         "lake: the lake's own files")
    ap.add_argument("--work", default="/tmp/prism-queries-bench", help="where DuckDB's copy is kept (reused when present)")
    args = ap.parse_args()
    lake = os.path.abspath(args.lake)
    queries = [q for q in QUERIES if not args.only or q[0] in args.only]

    prism = Prism(args.prism, lake, args.set, args.prelude)
    count_sql = "SELECT count(*) FROM events"
    _, out = prism.run(count_sql)
    events = int(out.decode().split()[-1])
    startup = best([prism.run("SELECT 1")[0] for _ in range(args.runs + 1)])
    print(f"lake: {lake}: {events:,} events; prism startup (SELECT 1): {startup:.3f} s", flush=True)
    duck = None
    if not args.skip_duckdb:
        t = time.perf_counter()
        duck = DuckDB(lake, args.duckdb_layout, args.work)
        print(f"duckdb: {duck.files:,} Parquet files, {duck.bytes / 1e6:.0f} MB ({args.duckdb_layout} layout; {time.perf_counter() - t:.2f} s)", flush=True)
    lake_files = delta_files(os.path.join(lake, "events"))
    lake_bytes = sum(os.path.getsize(f) for f in lake_files)
    print(f"prism: {len(lake_files):,} Parquet files, {lake_bytes / 1e6:.0f} MB"
          + (f" = {lake_bytes / duck.bytes:.2f}x DuckDB's" if duck else ""), flush=True)
    pruning(prism, lake_bytes)
    if args.set or args.prelude:
        print("prism session: " + "; ".join([*args.set, *args.prelude]))

    results, startups = [], []
    for name, what, query in queries:
        p_sql, d_sql = sql_for(query, "prism"), sql_for(query, "duckdb")
        # Warm-up run, and the same answer from both engines.
        p_rows = prism.rows(p_sql)
        d_rows = duck.rows(d_sql) if duck else None
        if duck and p_rows != d_rows:
            print(f"  WARNING {name}: prism returned {p_rows} rows, duckdb {d_rows}", flush=True)
        # The query's runs alternate with `SELECT 1`'s, whose best is subtracted: the machine's
        # drift over the suite (start-up measured 22-34 ms in one session) falls on both alike,
        # which matters for queries of a few milliseconds.
        p_times, s_times = [], []
        for _ in range(args.runs):
            p_times.append(prism.run(p_sql)[0])
            s_times.append(prism.run("SELECT 1")[0])
        p, here = best(p_times), best(s_times)
        d = best([duck.run(d_sql) for _ in range(args.runs)]) if duck else float("nan")
        net = max(p - here, 0.0)
        startups.append(here)
        results.append((name, what, p_rows, p, net, d))
        print(f"  {name:20} prism {p:7.3f} s (net {net:7.3f}) duckdb {d:7.3f} s  ratio {net / d if duck else float('nan'):5.2f}", flush=True)

    print()
    print("| query | what | rows | Prism s (process) | Prism s (net of startup) | DuckDB s | Prism/DuckDB |")
    print("|---|---|---|---|---|---|---|")
    for name, what, rows, p, net, d in results:
        print(f"| {name} | {what} | {rows:,} | {p:.3f} | {net:.3f} | {d:.3f} | {net / d:.2f} |")
    tp, tn, td = sum(r[3] for r in results), sum(r[4] for r in results), sum(r[5] for r in results)
    print(f"| **total** | {len(results)} queries | | {tp:.3f} | {tn:.3f} | {td:.3f} | {tn / td:.2f} |")
    print()
    print(f"Prism startup per process: {min(startups):.3f}-{max(startups):.3f} s (`SELECT 1`, run alternately with each query; "
          "its best is included in the process column, subtracted in the net one).")
    if duck:
        worst = max(results, key=lambda r: r[4] / r[5])
        ok_total, ok_each = tn <= 0.8 * td, worst[4] / worst[5] <= 1.5
        print(f"Target: total at most 0.8x DuckDB's: {'met' if ok_total else 'MISSED'} ({tn:.2f} s vs {td:.2f} s, {tn / td:.2f}x); "
              f"no query over 1.5x: {'met' if ok_each else 'MISSED'} (worst {worst[0]} at {worst[4] / worst[5]:.2f}x)")


if __name__ == "__main__":
    main()
