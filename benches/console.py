#!/usr/bin/env python3
"""Console benchmark: how fast `prism serve` answers its pages on a big lake, and its memory.

Starts `prism serve --lake LAKE --listen 127.0.0.1:0`, then requests, one at a time:
  - the Insights page (`/insights`, the first page of the list with its per-day strip),
  - a details page (`/insights/<id>`: the chart from the rollups, statistics, the left column),
    cycling through every Insight of the lake,
  - the Events tab of the same Insights (`/insights/<id>?tab=events`: the events table, pruned
    by time and partition),
each `--requests` times (default 100, after one warm-up request each), and prints p50, p95 and
the largest latency (seconds, measured by this client, the whole response read), and the
server's peak RSS (VmHWM from /proc, the server process only).

Targets (issue 15): on a lake of at least 30 million events with its Insights, the Insights page
and a details page under 300 ms at the 95th percentile, the Events tab under 1 s, memory under
1 GiB while serving.

Usage:
  cargo build --release
  python3 benches/insights_backfill.py --work /tmp/ib       # 30 days x 1M events, with Insights
  python3 benches/console.py /tmp/ib/lake [--prism target/release/prism] [--requests 100]
"""
import argparse
import json
import statistics
import subprocess
import sys
import time
import urllib.request


def fetch(url):
    start = time.perf_counter()
    with urllib.request.urlopen(url, timeout=60) as r:
        body = r.read()
        status = r.status
    if status != 200:
        sys.exit(f"{url}: HTTP {status}")
    return time.perf_counter() - start, body


def percentile(values, p):
    s = sorted(values)
    return s[min(len(s) - 1, int(round(p / 100 * (len(s) - 1))))]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("lake")
    ap.add_argument("--prism", default="target/release/prism")
    ap.add_argument("--requests", type=int, default=100)
    args = ap.parse_args()

    count = subprocess.run([args.prism, "sql", "--lake", args.lake, "--format", "csv", "-c", "SELECT count(*) FROM events"],
                           capture_output=True, text=True, check=True).stdout.splitlines()[-1]
    server = subprocess.Popen([args.prism, "serve", "--lake", args.lake, "--listen", "127.0.0.1:0"], stdout=subprocess.PIPE, text=True)
    try:
        line = server.stdout.readline()
        base = next(w for w in line.split() if w.startswith("http://")).rstrip("/")
        _, body = fetch(f"{base}/api/insights?perPage=500")
        page = json.loads(body)
        ids = [i["sharedeventid"] for i in page["items"]]
        if not ids:
            sys.exit("the lake has no Insights: run `prism insights backfill` on it first")
        print(f"lake: {args.lake}: {int(count):,} events, {page['total']} Insights; {args.requests} requests per page, one at a time")
        targets = [
            ("Insights page", lambda i: f"{base}/insights", 0.3),
            ("details page", lambda i: f"{base}/insights/{ids[i % len(ids)]}", 0.3),
            ("Events tab", lambda i: f"{base}/insights/{ids[i % len(ids)]}?tab=events", 1.0),
        ]
        print("| page | p50 s | p95 s | max s | target (p95) |")
        print("|---|---|---|---|---|")
        for name, url, target in targets:
            fetch(url(0))  # warm-up
            times = [fetch(url(i))[0] for i in range(args.requests)]
            p95 = percentile(times, 95)
            print(f"| {name} | {statistics.median(times):.3f} | {p95:.3f} | {max(times):.3f} | {target} s: {'met' if p95 < target else 'MISSED'} |")
        status = open(f"/proc/{server.pid}/status").read()
        hwm = next(int(l.split()[1]) for l in status.splitlines() if l.startswith("VmHWM"))
        print(f"server peak RSS: {hwm / 1024:.0f} MiB (target: under 1024)")
    finally:
        server.terminate()
        server.wait()


if __name__ == "__main__":
    main()
