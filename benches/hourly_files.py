#!/usr/bin/env python3
"""Reshapes a CloudTrail archive into one file per account, region and hour: the shape of a
busy account's delivery (CloudTrail files reach tens of MB), for the ingest benchmark's second
archive. Records are kept byte for byte, in order; only the files change.

Usage:
  prism generate --out /tmp/busy --accounts 1 --regions us-east-1 --days 2 --events-per-day 1000000
  python3 benches/hourly_files.py /tmp/busy /tmp/busy-hourly
"""
import collections
import glob
import gzip
import json
import os
import re
import sys


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    src, out = sys.argv[1], sys.argv[2]
    # <account>_CloudTrail_<region>_YYYYMMDDTHHMMZ_<name>.json.gz
    pattern = re.compile(r"^(\d{12})_CloudTrail_([a-z0-9-]+)_(\d{8}T\d{2})\d{2}Z_.*\.json\.gz$")
    groups = collections.defaultdict(list)
    for path in sorted(glob.glob(f"{src}/AWSLogs/**/*.json.gz", recursive=True)):
        m = pattern.match(os.path.basename(path))
        if m:
            groups[(m.group(1), m.group(2), m.group(3), os.path.dirname(os.path.relpath(path, src)))].append(path)
    for (account, region, hour, folder), paths in sorted(groups.items()):
        records = []
        for p in paths:
            with gzip.open(p, "rb") as f:
                records.extend(json.load(f)["Records"])
        os.makedirs(os.path.join(out, folder), exist_ok=True)
        name = f"{account}_CloudTrail_{region}_{hour}00Z_hourly.json.gz"
        with gzip.open(os.path.join(out, folder, name), "wt", compresslevel=6) as f:
            json.dump({"Records": records}, f, separators=(",", ":"))
    print(f"{sum(len(p) for p in groups.values())} files into {len(groups)} hourly files under {out}")


if __name__ == "__main__":
    main()
