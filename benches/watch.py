#!/usr/bin/env python3
"""Steady-state cost of `prism watch`: CPU per poll and memory while idle.

The issue's case: 10 accounts x 4 regions, each delivering a log file every 5 minutes. A
generated archive (`prism generate`) of that shape supplies the files; the first days are the
trail's history (caught up at start), then the next day's files land in delivery order, 8 per
poll: 40 files per 5 minutes is 8 a minute, what each poll of a 60-second interval finds. Time
is compressed (a poll every --interval seconds), which changes nothing per poll. Then no file
lands for --idle polls: what an empty poll costs.

CPU is the process's user+system time from /proc/<pid>/stat between poll lines; memory is
VmRSS from /proc/<pid>/status. "Core use at 60s" projects the measured CPU per poll onto one
poll a minute.

    python3 benches/watch.py --prism target/release/prism --work /tmp/watch-bench
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time

TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def rss_mib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def stamp(path):
    return os.path.basename(path).split("_")[3]


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--prism", default="target/release/prism")
    p.add_argument("--work", default="/tmp/prism-watch-bench")
    p.add_argument("--events-per-day", type=int, default=5000, help="per account and region")
    p.add_argument("--history-days", type=int, default=3)
    p.add_argument("--rounds", type=int, default=60, help="polls with new files")
    p.add_argument("--idle", type=int, default=30, help="polls with none")
    p.add_argument("--interval", default="1s")
    a = p.parse_args()

    shutil.rmtree(a.work, ignore_errors=True)
    archive, trail, lake = (os.path.join(a.work, d) for d in ("archive", "trail", "lake"))
    regions = "us-east-1,eu-west-1,ap-south-1,us-west-2"
    subprocess.run([a.prism, "generate", "--out", archive, "--accounts", "10", "--regions", regions, "--days", str(a.history_days + 1),
                    "--events-per-day", str(a.events_per_day), "--anomalies", "0", "--seed", "5", "--json"], check=True, stdout=subprocess.DEVNULL)
    files = []
    for root, _, names in os.walk(archive):
        files += [os.path.join(root, n) for n in names if n.endswith(".json.gz")]
    files.sort(key=lambda f: (stamp(f), f))
    # Date folders: the generated days, and the next one (deliveries just after midnight).
    days = sorted({f.split("/CloudTrail/")[1].split("/", 1)[1][:10] for f in files})
    history = [f for f in files if f.split("/CloudTrail/")[1].split("/", 1)[1][:10] < days[a.history_days]]
    kept = set(history)
    live = [f for f in files if f not in kept]

    def land(f):
        to = os.path.join(trail, os.path.relpath(f, archive))
        os.makedirs(os.path.dirname(to), exist_ok=True)
        os.link(f, to)

    for f in history:
        land(f)
    print(f"archive: 40 account-regions, {len(history)} files of history, {len(live)} to land", file=sys.stderr)

    proc = subprocess.Popen([a.prism, "watch", trail, "--lake", lake, "--interval", a.interval, "--alert", f"file={a.work}/alerts.ndjson"],
                            stdout=subprocess.PIPE, text=True)

    def poll_line():
        while True:
            line = proc.stdout.readline()
            if not line:
                raise SystemExit("prism watch ended")
            v = json.loads(line)
            if "poll" in v:
                return v

    started = time.time()
    first = poll_line()
    catch_up = time.time() - started
    print(f"catch-up: {first['ingest']['files']} files, {first['ingest']['events']} events in {catch_up:.1f} s; RSS {rss_mib(proc.pid):.0f} MiB", file=sys.stderr)

    active, idle, rss_active, rss_idle, split = [], [], [], [], []
    cpu = cpu_seconds(proc.pid)
    pending = list(live)
    for _ in range(a.rounds):
        batch, pending = pending[:8], pending[8:]
        for f in batch:
            land(f)
        got = 0
        while got < len(batch):
            v = poll_line()
            got += v.get("ingest", {}).get("files", 0)
            now = cpu_seconds(proc.pid)
            active.append((now - cpu, v["seconds"]))
            split.append((v.get("ingest", {}).get("seconds", 0), v.get("insights_seconds", 0)))
            cpu = now
        rss_active.append(rss_mib(proc.pid))
    poll_line()  # the poll running while the last batch landed
    cpu = cpu_seconds(proc.pid)
    for _ in range(a.idle):
        v = poll_line()
        now = cpu_seconds(proc.pid)
        idle.append((now - cpu, v["seconds"]))
        cpu = now
        rss_idle.append(rss_mib(proc.pid))
    proc.terminate()
    proc.wait()

    def describe(xs):
        c = sorted(x[0] for x in xs)
        w = sorted(x[1] for x in xs)
        return f"CPU median {statistics.median(c):.3f} s, p95 {c[int(len(c) * 0.95) - 1]:.3f} s; wall median {statistics.median(w):.3f} s"

    busy = statistics.mean(x[0] for x in active)
    print(f"polls with 8 new files ({len(active)}): {describe(active)}")
    print(f"  of which ingest median {statistics.median(x[0] for x in split):.3f} s, Insights run median {statistics.median(x[1] for x in split):.3f} s (wall)")
    print(f"empty polls ({len(idle)}): {describe(idle)}")
    print(f"RSS: {max(rss_active):.0f} MiB at most while files land, {statistics.median(rss_idle):.0f} MiB idle")
    print(f"core use at --interval 60s: {100 * busy / 60:.2f}% (one poll with 8 files a minute); "
          f"{100 * statistics.mean(x[0] for x in idle) / 60:.3f}% when nothing lands")


if __name__ == "__main__":
    main()
