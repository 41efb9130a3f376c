#!/usr/bin/env python3
"""Ingest benchmark: Prism against DuckDB on the same gzipped CloudTrail archive.

For each archive and each granularity (day, minute) it runs, one at a time:
  - `prism ingest ARCHIVE --lake fresh-lake --granularity G`
  - DuckDB 2.0 in its plainest configuration, in the same run, on the same files:
      SET threads = 2;
      COPY (SELECT r.*, strftime(r.eventTime::TIMESTAMP, '%Y-%m-%d') AS date[, … '%H%M' AS minute]
            FROM (SELECT unnest(Records) AS r FROM read_json('ARCHIVE/AWSLogs/**/*.json.gz')))
      TO 'OUT' (FORMAT parquet, PARTITION_BY (awsRegion, date[, minute]));
    (`--duckdb-schema`: the earlier set-up with an explicit record schema, five times slower.)
    When DuckDB refuses files over its 16 MB `maximum_object_size`, as it does a busy
    account's, it is run again with `maximum_object_size` raised above the largest file (the
    next power of two of its JSON size), as its error suggests;
    if that runs out of memory, once more with `SET preserve_insertion_order = false`, as that
    error suggests.
and reports events/s, decompressed JSON MB/s, Parquet files written, output size and the peak
RSS of each process (from wait4, so only that process and not this script).

Usage:
  pip install duckdb==2.0.0
  cargo build --release
  python3 benches/ingest_vs_duckdb.py ARCHIVE [ARCHIVE ...] [--prism target/release/prism] [--work DIR]

ARCHIVE is a folder holding AWSLogs/ in the AWS layout, e.g. from `prism generate`; a second,
differently shaped one (an hour per file, tens of MB each, as a busy account's) comes from
`python3 benches/hourly_files.py ARCHIVE OUT`.
"""
import argparse
import glob
import gzip
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

# DuckDB's plainest use, as a user would first write it: schema inferred, partitioned by region
# and the time bucket. A busy account's CloudTrail files exceed `maximum_object_size`'s 16 MB
# default, which DuckDB then refuses, saying to raise it: only then is it raised (`big`), since
# the raised limit halves DuckDB's speed on small files (measured: 9.0 s against 18.0 s). (An explicit record schema, `--duckdb-schema`, was the earlier set-up:
# it makes DuckDB about five times slower.)
DUCKDB_PLAIN = r"""
import sys, duckdb
archive, out, granularity = sys.argv[1], sys.argv[2], sys.argv[3]
big = next((a[4:] for a in sys.argv[4:] if a.startswith("big=")), None)
con = duckdb.connect()
con.execute("SET threads = 2")
if "lean" in sys.argv[4:]:
    con.execute("SET preserve_insertion_order = false")
limit = f", maximum_object_size = {big}" if big else ""
minute = ", strftime(r.eventTime::TIMESTAMP, '%H%M') AS minute" if granularity == "minute" else ""
con.execute(f'''
COPY (SELECT r.*, strftime(r.eventTime::TIMESTAMP, '%Y-%m-%d') AS date{minute}
      FROM (SELECT unnest(Records) AS r FROM read_json('{archive}/AWSLogs/**/*.json.gz'{limit})))
TO '{out}' (FORMAT parquet, PARTITION_BY (awsRegion, date{', minute' if minute else ''}))
''')
"""

DUCKDB_SCHEMA = r"""
# DuckDB gets an explicit record schema with the free-form fields as JSON, as Prism stores
# them: inferring a union schema over thousands of files exhausts memory.
import sys, duckdb, time
archive, out, granularity = sys.argv[1], sys.argv[2], sys.argv[3]
fmt = {"minute": "%Y%m%dT%H%MZ", "day": "%Y%m%d"}[granularity]
con = duckdb.connect()
con.execute("SET threads = 2"); con.execute("SET preserve_insertion_order = false"); 
issuer = "STRUCT(type VARCHAR, principalId VARCHAR, arn VARCHAR, accountId VARCHAR, userName VARCHAR)"
ui = f"STRUCT(type VARCHAR, principalId VARCHAR, arn VARCHAR, accountId VARCHAR, accessKeyId VARCHAR, userName VARCHAR, invokedBy VARCHAR, sessionContext STRUCT(sessionIssuer {issuer}, attributes STRUCT(creationDate VARCHAR, mfaAuthenticated VARCHAR), webIdFederationData JSON, sourceIdentity VARCHAR, ec2RoleDelivery VARCHAR))"
rec = ("STRUCT(eventVersion VARCHAR, userIdentity " + ui + ", eventTime TIMESTAMP, eventSource VARCHAR, eventName VARCHAR, awsRegion VARCHAR, "
       "sourceIPAddress VARCHAR, userAgent VARCHAR, errorCode VARCHAR, errorMessage VARCHAR, requestParameters JSON, responseElements JSON, "
       "additionalEventData JSON, requestID VARCHAR, eventID VARCHAR, eventType VARCHAR, apiVersion VARCHAR, managementEvent BOOLEAN, readOnly BOOLEAN, "
       "resources STRUCT(ARN VARCHAR, accountId VARCHAR, type VARCHAR)[], recipientAccountId VARCHAR, serviceEventDetails JSON, sharedEventID VARCHAR, "
       "vpcEndpointId VARCHAR, eventCategory VARCHAR, tlsDetails STRUCT(tlsVersion VARCHAR, cipherSuite VARCHAR, clientProvidedHostHeader VARCHAR), "
       "sessionCredentialFromConsole VARCHAR)")
con.execute(f'''
COPY (
  SELECT r.*, strftime(r.eventTime, '{fmt}') AS eventperiod
  FROM (SELECT unnest(Records) AS r FROM read_json('{archive}/**/*.json.gz', columns = {{'Records': '{rec}[]'}}, format = 'auto'))
) TO '{out}' (FORMAT parquet, PARTITION_BY (awsRegion, eventperiod), COMPRESSION zstd)
''')
"""

BUCKET_FORMATS = ["minute", "day"]


def run(cmd):
    """Runs cmd; returns (seconds, peak RSS in MiB, exit code, stdout)."""
    start = time.perf_counter()
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out = p.stdout.read()
    err = p.stderr.read()
    _, status, usage = os.wait4(p.pid, 0)
    seconds = time.perf_counter() - start
    code = os.waitstatus_to_exitcode(status)
    if code not in (0, 3):
        sys.stderr.write(err.decode(errors="replace")[-2000:])
        sys.stderr.write(f"\n{cmd[0]} failed with exit code {code}\n")
    return seconds, usage.ru_maxrss / 1024, code, out


def tree_size(path):
    files = [f for f in glob.glob(f"{path}/**/*.parquet", recursive=True)]
    total = sum(os.path.getsize(f) for f in glob.glob(f"{path}/**/*", recursive=True) if os.path.isfile(f))
    return len(files), total


def archive_facts(archive):
    files = glob.glob(f"{archive}/**/*.json.gz", recursive=True)
    raw = sum(os.path.getsize(f) for f in files)
    return files, raw


def object_size_for(files):
    """A `maximum_object_size` above the archive's largest file as JSON (from each gzip's
    trailer), as a user raises it after DuckDB's error: the next power of two. 1 GiB, the
    first figure to hand, made DuckDB run out of 18 GiB on 49 files of 29-107 MB of JSON."""
    largest = 0
    for f in files:
        with open(f, "rb") as fh:
            fh.seek(-4, os.SEEK_END)
            largest = max(largest, int.from_bytes(fh.read(4), "little"))
    size = 1 << 24
    while size <= largest:
        size <<= 1
    return size


def bench_archive(archive, args, work):
    files, raw = archive_facts(archive)
    print(f"archive: {archive}: {len(files)} files, {raw / 1e6:.1f} MB gzipped", flush=True)
    script = DUCKDB_SCHEMA if args.duckdb_schema else DUCKDB_PLAIN
    rows = []
    for g in args.granularity or ["day", "minute"]:
        lake = os.path.join(work, f"prism-{g}")
        shutil.rmtree(lake, ignore_errors=True)
        secs, rss, code, out = run([args.prism, "ingest", archive, "--lake", lake, "--granularity", g, "--json", "--quiet"])
        summary = json.loads(out)
        events = summary["records_read"]
        json_mb = summary["json_bytes"] / 1e6
        nfiles, size = tree_size(os.path.join(lake, "events"))
        rows.append(("prism", g, events, secs, json_mb, nfiles, size, rss))
        print(f"prism  {g}: {events / secs:,.0f} events/s", flush=True)
        if not args.keep:
            shutil.rmtree(lake, ignore_errors=True)

        out_dir = os.path.join(work, f"duckdb-{g}")
        shutil.rmtree(out_dir, ignore_errors=True)
        secs, rss, code, _ = run([sys.executable, "-c", script, archive, out_dir, g])
        if code != 0 and not args.duckdb_schema:
            size = object_size_for(files)
            print(f"duckdb: retrying with maximum_object_size raised to {size:,} bytes (above the largest file), as its error says", flush=True)
            shutil.rmtree(out_dir, ignore_errors=True)
            secs, rss, code, _ = run([sys.executable, "-c", script, archive, out_dir, g, f"big={size}"])
        if code != 0 and not args.duckdb_schema:
            # Out of memory on files of tens of MB: its error's first suggestion after fewer threads.
            print("duckdb: retrying with preserve_insertion_order = false, as its error suggests", flush=True)
            shutil.rmtree(out_dir, ignore_errors=True)
            secs, rss, code, _ = run([sys.executable, "-c", script, archive, out_dir, g, f"big={size}", "lean"])
        if code != 0:
            secs = float("nan")  # reported as failed
        nfiles, size = tree_size(out_dir)
        rows.append(("duckdb", g, events, secs, json_mb, nfiles, size, rss))
        print(f"duckdb {g}: {events / secs:,.0f} events/s", flush=True)
        if not args.keep:
            shutil.rmtree(out_dir, ignore_errors=True)

    print()
    print(f"Archive {archive} ({len(files):,} files, {raw / 1e6:.0f} MB gzipped); DuckDB {'with an explicit schema' if args.duckdb_schema else 'plain read_json'}")
    print()
    print("| engine | granularity | events | seconds | events/s | JSON MB/s | files | output MB | peak RSS MiB |")
    print("|---|---|---|---|---|---|---|---|---|")
    for eng, g, ev, s, mb, nf, size, rss in rows:
        print(f"| {eng} | {g} | {ev:,} | {s:.1f} | {ev / s:,.0f} | {mb / s:.0f} | {nf:,} | {size / 1e6:.0f} | {rss:.0f} |")
    by = {(r[0], r[1]): r for r in rows}
    print()
    for g in args.granularity or ["day", "minute"]:
        p, d = by[("prism", g)], by[("duckdb", g)]
        print(f"{g}: Prism is {d[3] / p[3]:.2f}x DuckDB's events/s, {p[6] / max(d[6], 1):.2f}x its output size; peak RSS {p[7]:.0f} MiB against {d[7]:.0f}")
    print(flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("archive", nargs="+", help="one or more archives, each measured on its own")
    ap.add_argument("--prism", default="target/release/prism")
    ap.add_argument("--work", default=None, help="scratch folder (default: a temporary one)")
    ap.add_argument("--granularity", action="append", choices=BUCKET_FORMATS, help="repeatable; default both")
    ap.add_argument("--duckdb-schema", action="store_true", help="the earlier DuckDB set-up: an explicit record schema (slower)")
    ap.add_argument("--keep", action="store_true", help="keep the outputs in --work (e.g. for queries_vs_duckdb.py)")
    args = ap.parse_args()
    work = args.work or tempfile.mkdtemp(prefix="prism-bench-")
    for archive in args.archive:
        bench_archive(os.path.abspath(archive), args, work if len(args.archive) == 1 else os.path.join(work, os.path.basename(archive)))


if __name__ == "__main__":
    main()
