#!/usr/bin/env python3
"""S3 benchmark: `prism backfill` from a loopback S3 server against the same backfill from a
local folder, and the time to list many keys.

The server is by default `benches/s3_server.rs`: the tests' own server (tests/e2e/common/s3.rs,
s3s + s3s-fs) serving a folder on 127.0.0.1, with its own ListObjectsV2 that walks only the
folder a prefix names, from the resume point on, as an indexed store (S3, MinIO) lists. Stock
s3s-fs walks the whole bucket for every 1,000-key page, which measures the server, not Prism:
`--stock-listing` has our server answer listings with s3s-fs's code, `--s3s-fs PATH` runs the
stock `s3s-fs` binary instead. The archive is hard-linked into the served folder, so both
backfills read the same bytes: one through the S3 protocol (listing, signed GETs, streaming),
one from disk.

Issue targets: the S3 backfill at >= 80% of the local backfill's speed; listing 50,000 keys in
under 10 s; peak RSS under 1.5 GiB. Each run's peak RSS is that process's (`/usr/bin/time -v`).

Usage:
  cargo build --release
  python3 benches/s3_vs_local.py --work /tmp/s3b [--days 9 --events-per-day 100000] [--keys 50000]

The server is built with `cargo bench --bench s3_server --no-run` (release settings) unless
`--server PATH` names an s3_server executable (`--server-profile dev` builds a debug one, for
trying the script out). For stock s3s-fs:
  cargo install s3s-fs --version 0.14.1 --features binary --locked
  python3 benches/s3_vs_local.py --work /tmp/s3b --s3s-fs ~/.cargo/bin/s3s-fs

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


def build_server(profile):
    """Builds benches/s3_server.rs and returns its executable."""
    cmd = ["cargo", "bench", "--no-run"] if profile == "bench" else ["cargo", "build"]
    p = subprocess.run(cmd + ["--bench", "s3_server", "--message-format=json"], capture_output=True, text=True,
                       cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    if p.returncode != 0:
        sys.exit(f"building s3_server failed:\n{p.stderr}")
    for line in p.stdout.splitlines():
        msg = json.loads(line)
        if msg.get("reason") == "compiler-artifact" and msg["target"]["name"] == "s3_server" and msg.get("executable"):
            return msg["executable"]
    sys.exit("cargo built no s3_server executable")


def start_server(a, root):
    """Starts the S3 server over root; returns (process, endpoint, access key, secret key)."""
    if a.s3s_fs:
        port = free_port()
        server = subprocess.Popen([a.s3s_fs, "--host", "127.0.0.1", "--port", str(port), "--access-key", KEY, "--secret-key", SECRET, root],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.1)
        return server, f"http://127.0.0.1:{port}", KEY, SECRET
    exe = a.server or build_server(a.server_profile)
    cmd = [exe, "--root", root] + (["--stock-listing"] if a.stock_listing else [])
    server = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    line = server.stdout.readline()
    if not line:
        sys.exit(f"{exe} did not start")
    ready = json.loads(line)
    return server, ready["endpoint"], ready["access_key"], ready["secret_key"]


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
    ap.add_argument("--server", help="an s3_server executable (default: build benches/s3_server.rs)")
    ap.add_argument("--server-profile", choices=["bench", "dev"], default="bench",
                    help="how to build s3_server: release settings (cargo bench --no-run) or debug")
    ap.add_argument("--stock-listing", action="store_true", help="s3_server answers listings with s3s-fs's own code")
    ap.add_argument("--s3s-fs", metavar="PATH", help="run this stock s3s-fs binary instead of s3_server")
    ap.add_argument("--work", required=True)
    ap.add_argument("--days", type=int, default=9)
    ap.add_argument("--events-per-day", type=int, default=100_000)
    ap.add_argument("--keys", type=int, default=50_000)
    ap.add_argument("--jobs", type=int, help="--jobs of both backfills (default: Prism's, the number of CPUs)")
    ap.add_argument("--downloads", type=int, help="--downloads of the S3 backfill (default: Prism's, 32)")
    ap.add_argument("--list-only", action="store_true", help="only the listing of the --keys tree, no backfills")
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

    server, endpoint, key, secret = start_server(a, root)
    label = "stock s3s-fs" if a.s3s_fs else "s3_server" + (" with s3s-fs's listing" if a.stock_listing else "")
    print(f"server: {label} at {endpoint}", flush=True)
    try:
        env = dict(os.environ, AWS_ENDPOINT_URL=endpoint, AWS_ACCESS_KEY_ID=key, AWS_SECRET_ACCESS_KEY=secret,
                   AWS_REGION="us-east-1", AWS_ALLOW_HTTP="true", AWS_EC2_METADATA_DISABLED="true")
        results = {}
        for name, source in [] if a.list_only else [("local", os.path.join(bucket, "AWSLogs")), ("s3", "s3://trail/AWSLogs/")]:
            lake = os.path.join(a.work, f"lake-{name}")
            shutil.rmtree(lake, ignore_errors=True)
            tuning = (["--jobs", str(a.jobs)] if a.jobs else []) + (["--downloads", str(a.downloads)] if a.downloads else [])
            s, rss, out = timed([prism, "backfill", source, "--lake", lake, "--json"] + tuning, env=env)
            summary = json.loads(out)
            events = summary["ingest"]["records_written"]
            results[name] = (s, rss, events)
            print(f"backfill from {name}: {events:,} events, {summary['ingest']['files_read']:,} objects, "
                  f"{summary['insights']['starts'] if summary.get('insights') else 0} Insights in {s:.1f} s = {events / s:,.0f} events/s, "
                  f"peak RSS {rss:.0f} MiB", flush=True)
        if results:
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
