#!/usr/bin/env python3
"""S3 benchmark: `prism backfill` from a loopback S3 server against the same backfill from a
local folder, and the time to list many keys.

The server is `s3s-fs` (the same s3s + s3s-fs the tests start in-process), serving a folder on
127.0.0.1. The archive is hard-linked into that folder, so both runs read the same bytes: one
through the S3 protocol (listing, signed GETs, streaming), one from disk.

Issue targets: the S3 backfill at >= 80% of the local backfill's speed; listing 50,000 keys in
under 10 s; peak RSS under 1.5 GiB. Each run's peak RSS is that process's (`/usr/bin/time -v`).

Usage:
  cargo install s3s-fs --version 0.14.1 --features binary --locked
  cargo build --release
  python3 benches/s3_vs_local.py --work /tmp/s3b [--days 9 --events-per-day 100000] [--keys 50000]

The archive and the 50,000-key tree are kept in --work and reused; lakes are made afresh.
"""
import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import time

KEY, SECRET = "prism-bench-key", "prism-bench-secret"


def timed(cmd, env=None):
    """Runs cmd under /usr/bin/time -v; returns (seconds, peak RSS MiB, stdout)."""
    start = time.perf_counter()
    p = subprocess.run(["/usr/bin/time", "-v"] + cmd, capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - start
    if p.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed ({p.returncode}):\n{p.stdout}\n{p.stderr}")
    rss = next((int(l.split(":")[1]) / 1024 for l in p.stderr.splitlines() if "Maximum resident set size" in l), float("nan"))
    return seconds, rss, p.stdout


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def many_keys(root, n):
    """n small CloudTrail-like objects over 1 account, 4 regions and 5-minute deliveries."""
    base = os.path.join(root, "many", "AWSLogs", "123456789012", "CloudTrail")
    if os.path.isdir(base) and sum(len(f) for _, _, f in os.walk(base)) == n:
        return
    shutil.rmtree(os.path.join(root, "many"), ignore_errors=True)
    regions = ["us-east-1", "us-west-2", "eu-west-1", "ap-southeast-2"]
    body = b'{"Records":[]}'
    for i in range(n):
        region = regions[i % 4]
        m = (i // 4) * 5
        day, minute = m // 1440, m % 1440
        d = f"2024/{1 + day // 28:02d}/{1 + day % 28:02d}"
        folder = os.path.join(base, region, d)
        os.makedirs(folder, exist_ok=True)
        name = f"123456789012_CloudTrail_{region}_2024{1 + day // 28:02d}{1 + day % 28:02d}T{minute // 60:02d}{minute % 60:02d}Z_{i:016d}.json.gz"
        with open(os.path.join(folder, name), "wb") as f:
            f.write(body)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prism", default="target/release/prism")
    ap.add_argument("--server", default=shutil.which("s3s-fs") or os.path.expanduser("~/.cargo/bin/s3s-fs"))
    ap.add_argument("--work", required=True)
    ap.add_argument("--days", type=int, default=9)
    ap.add_argument("--events-per-day", type=int, default=100_000)
    ap.add_argument("--keys", type=int, default=50_000)
    ap.add_argument("--jobs", type=int, default=16, help="--jobs of both backfills (S3 latency wants more than the CPUs)")
    a = ap.parse_args()
    prism = os.path.abspath(a.prism)
    root = os.path.join(a.work, "root")
    bucket = os.path.join(root, "trail")
    archive = os.path.join(a.work, "archive")
    os.makedirs(bucket, exist_ok=True)
    if not os.path.exists(os.path.join(archive, "labels.json")):
        s, _, out = timed([prism, "generate", "--out", archive, "--days", str(a.days), "--events-per-day", str(a.events_per_day), "--json"])
        print(f"generate: {json.loads(out)['events']:,} events in {s:.1f} s", flush=True)
    if not os.path.isdir(os.path.join(bucket, "AWSLogs")):
        subprocess.run(["cp", "-al", os.path.join(archive, "AWSLogs"), os.path.join(bucket, "AWSLogs")], check=True)
    many_keys(bucket, a.keys)

    port = free_port()
    server = subprocess.Popen([a.server, "--host", "127.0.0.1", "--port", str(port), "--access-key", KEY, "--secret-key", SECRET, root],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.1)
        env = dict(os.environ, AWS_ENDPOINT_URL=f"http://127.0.0.1:{port}", AWS_ACCESS_KEY_ID=KEY, AWS_SECRET_ACCESS_KEY=SECRET,
                   AWS_REGION="us-east-1", AWS_ALLOW_HTTP="true", AWS_EC2_METADATA_DISABLED="true")
        results = {}
        for name, source in [("local", os.path.join(bucket, "AWSLogs")), ("s3", "s3://trail/AWSLogs/")]:
            lake = os.path.join(a.work, f"lake-{name}")
            shutil.rmtree(lake, ignore_errors=True)
            s, rss, out = timed([prism, "backfill", source, "--lake", lake, "--jobs", str(a.jobs), "--json"], env=env)
            summary = json.loads(out)
            events = summary["ingest"]["records_written"]
            results[name] = (s, rss, events)
            print(f"backfill from {name}: {events:,} events, {summary['ingest']['files_read']:,} objects, "
                  f"{summary['insights']['starts'] if summary.get('insights') else 0} Insights in {s:.1f} s = {events / s:,.0f} events/s, "
                  f"peak RSS {rss:.0f} MiB", flush=True)
        (ls, _, le), (ss, _, se) = results["local"], results["s3"]
        if le != se:
            sys.exit(f"the two lakes differ: {le} events from disk, {se} through S3")
        print(f"S3 backfill at {100 * ls / ss:.0f}% of the local backfill's speed", flush=True)
        s, rss, out = timed([prism, "ingest", "s3://trail/many/", "--lake", os.path.join(a.work, "lake-list"), "--dry-run", "--json"], env=env)
        summary = json.loads(out)
        print(f"listing: {summary['files_listed']:,} keys in {summary['list_seconds']:.2f} s "
              f"(process {s:.2f} s, peak RSS {rss:.0f} MiB)", flush=True)
    finally:
        server.terminate()
        server.wait()


if __name__ == "__main__":
    main()
