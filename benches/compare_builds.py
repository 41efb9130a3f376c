#!/usr/bin/env python3
"""Time one SQL statement with several Prism builds, alternating, one process per run.

Usage: python3 benches/compare_builds.py LAKE RUNS "SQL" PRISM_BINARY...

Each run of each binary is `prism sql --lake LAKE -c SQL --format csv` with its output thrown
away; the builds take turns, so drift of the machine (other load, frequency) falls on all of
them alike. Prints each build's minimum and median wall time, start-up included.
"""
import statistics
import subprocess
import sys
import time


def main():
    if len(sys.argv) < 5:
        sys.exit(__doc__)
    lake, runs, sql, binaries = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4:]
    times = {b: [] for b in binaries}
    for _ in range(runs):
        for b in binaries:
            start = time.perf_counter()
            subprocess.run([b, "sql", "--lake", lake, "-c", sql, "--format", "csv"], stdout=subprocess.DEVNULL, check=True)
            times[b].append(time.perf_counter() - start)
    for b in binaries:
        t = sorted(times[b])
        print(f"{b}: min {t[0] * 1000:.1f} ms, median {statistics.median(t) * 1000:.1f} ms ({runs} runs)")


if __name__ == "__main__":
    main()
