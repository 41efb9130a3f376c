#!/usr/bin/env python3
"""Insights benchmark and detector quality.

Two measurements, each on a `prism generate` archive:

1. Speed (issue targets: backfill of an ingested 30-day x 1M events/day lake under 30 s; the
   whole path from the gzipped archive, ingest included, at >= 80% of plain ingest speed; peak
   RSS under 2 GiB):
     - `prism ingest ARCHIVE --lake L` (which also keeps the per-minute rollups),
     - `prism insights backfill --lake L` (reads the rollups, not the events),
   each timed with its peak RSS (from wait4: that process only).
2. Quality: `prism insights evaluate` against the archive's labels.json: recall, precision,
   false Insights per 100 API-days.

Usage:
  cargo build --release
  python3 benches/insights_backfill.py --work /tmp/ib [--days 30 --events-per-day 1000000 --accounts 1 --regions us-east-1]
  python3 benches/insights_backfill.py --work /tmp/q14 --days 14 --events-per-day 100000 --accounts 2 --regions us-east-1,eu-west-1 --quality

The archive and lake are kept in --work and reused when present (delete them to start over).
"""
import argparse
import json
import os
import subprocess
import sys
import time

BOTH = '[{"InsightType":"ApiCallRateInsight"},{"InsightType":"ApiErrorRateInsight"}]'


def timed(cmd):
    """Runs cmd under /usr/bin/time -v for its peak RSS; returns (seconds, MiB, stdout)."""
    start = time.perf_counter()
    p = subprocess.run(["/usr/bin/time", "-v"] + cmd, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if p.returncode not in (0, 3):
        sys.exit(f"{' '.join(cmd)} failed ({p.returncode}):\n{p.stderr}")
    rss = next((int(l.split(":")[1]) / 1024 for l in p.stderr.splitlines() if "Maximum resident set size" in l), float("nan"))
    return seconds, rss, p.stdout


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--prism", default="target/release/prism")
    ap.add_argument("--work", required=True)
    ap.add_argument("--days", type=int, default=30)
    ap.add_argument("--events-per-day", type=int, default=1_000_000)
    ap.add_argument("--accounts", type=int, default=1)
    ap.add_argument("--regions", default="us-east-1")
    ap.add_argument("--granularity", default="minute")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--quality", action="store_true", help="also score against labels.json")
    a = ap.parse_args()
    archive, lake = os.path.join(a.work, "archive"), os.path.join(a.work, "lake")
    if not os.path.exists(os.path.join(archive, "labels.json")):
        s, rss, out = timed([a.prism, "generate", "--out", archive, "--days", str(a.days), "--events-per-day", str(a.events_per_day),
                             "--accounts", str(a.accounts), "--regions", a.regions, "--seed", str(a.seed), "--json"])
        print(f"generate: {json.loads(out)['events']} events in {s:.1f} s")
    if not os.path.exists(os.path.join(lake, "events")):
        s, rss, out = timed([a.prism, "ingest", archive, "--lake", lake, "--granularity", a.granularity, "--json"])
        summary = json.loads(out)
        events = summary["records_written"]
        print(f"ingest (with rollups): {events} events in {s:.1f} s = {events / s:,.0f} events/s, peak RSS {rss:.0f} MiB")
        ingest_seconds = s
    else:
        ingest_seconds = None
    subprocess.run([a.prism, "selectors", "put", "--lake", lake, "--insight-selectors", BOTH], check=True, capture_output=True)
    s, rss, out = timed([a.prism, "insights", "backfill", "--lake", lake, "--json"])
    r = json.loads(out)
    print(f"insights backfill: {r['series']} series, {r['minutes']:,} series-minutes, {r['starts']} Insights, "
          f"{s:.1f} s wall ({r['seconds']:.1f} s inside), peak RSS {rss:.0f} MiB")
    if ingest_seconds:
        print(f"archive to Insights (ingest + backfill) runs at {100 * ingest_seconds / (ingest_seconds + s):.0f}% of ingest alone")
    if a.quality:
        _, _, out = timed([a.prism, "insights", "evaluate", "--lake", lake, "--labels", os.path.join(archive, "labels.json"), "--json"])
        q = json.loads(out)
        print(f"quality: recall {q['recall']:.2f} ({q['eligible_found']}/{q['eligible']}), precision {q['precision']:.2f} "
              f"({q['true_insights']}/{q['insights']}), false {q['false_insights']} over {q['api_days']:.0f} API-days = "
              f"{q['false_per_100_api_days']:.2f} per 100, scheduled-job flags {q['scheduled_job_flags']}")
        for m in q["missed"]:
            print(f"  missed #{m['id']} {m['kind']} {m['eventName']} {m['start']}..{m['end']} x{m['magnitude']}")
        for f in q["found"]:
            if f["label"] is None:
                print(f"  false: {f['start']} {f['insight_type']} {f['event_name']} {f['direction']} "
                      f"baseline {f['baseline_average']:.3f} insight {f['insight_average']:.3f}")


if __name__ == "__main__":
    main()
