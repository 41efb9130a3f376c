#!/usr/bin/env python3
"""Labelled test series for the scoring functions (issue 20), in NAB's corpus layout.

Writes `OUT/data/<kind>/<name>.csv` (`timestamp,value`), `OUT/labels/combined_windows.json`
(each series' anomaly windows) and NAB's profiles in `OUT/config/`, so that
`benches/nab.py --nab OUT` scores Prism's SQL on them exactly as on NAB: windows found and
missed (recall) and detections outside them, beside NAB's score.

The series cover what real metrics do, each kind on its own and mixed: counts (Poisson, where
gaps are zeros) and measurements (Gaussian or skewed noise, where gaps are missing); daily and
weekly seasons; spikes, dips, level shifts, trend changes, a change of variance; 5-minute,
30-minute and hourly steps; gaps. The anomalies' places and sizes come from a seeded random
generator, so a run is reproducible (`--seed`).

    python3 benches/series/generate.py --out /tmp/series [--seed 1]
"""

import argparse
import csv
import datetime as dt
import json
import math
import os
import random

START = dt.datetime(2024, 1, 1)


def poisson(rng, lam):
    if lam <= 0:
        return 0
    if lam > 50:
        return max(0, round(rng.gauss(lam, math.sqrt(lam))))
    l, k, p = math.exp(-lam), 0, 1.0
    while True:
        p *= rng.random()
        if p <= l:
            return k
        k += 1


def daily(t_hours, amplitude):
    """A daily cycle: low at night, high in the afternoon."""
    return amplitude * (0.5 - 0.5 * math.cos(2 * math.pi * (t_hours - 3) / 24))


def weekly(day_index):
    return 0.6 if day_index % 7 in (5, 6) else 1.0


class Series:
    def __init__(self, name, kind, step_minutes, days, rng):
        self.name, self.kind, self.step = name, kind, step_minutes
        self.n = days * 24 * 60 // step_minutes
        self.rng = rng
        self.effects = [0.0] * self.n  # additive
        self.scale = [1.0] * self.n  # multiplicative on the noise
        self.windows = []  # (first, last) step indices
        self.gaps = set()

    def hours(self, i):
        return i * self.step / 60

    def place(self, length, margin=None):
        """A random start for an anomaly of `length` steps after the first 20% of the series
        (NAB's scoring leaves out the first 15% as a probationary period), apart from others."""
        margin = margin or self.n // 20
        for _ in range(1000):
            s = self.rng.randrange(self.n // 5, self.n - length - 1)
            if all(s + length + margin < a or s > b + margin for a, b in self.windows):
                return s
        raise RuntimeError(f"{self.name}: no room for another anomaly")

    def label(self, s, length):
        # NAB-style window: centred on the anomaly, 10% of the series split over all anomalies
        # is NAB's rule; here a fixed slack either side keeps windows comparable.
        slack = max(2, length // 2, 60 // self.step)
        self.windows.append((max(0, s - slack), min(self.n - 1, s + length + slack)))

    def spike(self, size, length=1):
        s = self.place(length)
        for i in range(s, s + length):
            self.effects[i] += size
        self.label(s, length)

    def shift(self, size):
        s = self.place(self.n // 10)
        for i in range(s, self.n):
            self.effects[i] += size
        self.label(s, 1)

    def trend_change(self, slope_per_day):
        s = self.place(self.n // 10)
        per_step = slope_per_day * self.step / 1440
        for i in range(s, self.n):
            self.effects[i] += per_step * (i - s)
        self.label(s, 24 * 60 // self.step // 2)

    def variance_change(self, factor, length):
        s = self.place(length)
        for i in range(s, s + length):
            self.scale[i] = factor
        self.label(s, length)

    def gap(self, length):
        s = self.rng.randrange(self.n // 10, self.n - length)
        self.gaps.update(range(s, s + length))


def build(rng, days):
    out = []

    def counts(name, step, level, amp, week=False):
        s = Series(name, "counts", step, days, rng)
        s.base = lambda i: (level + daily(s.hours(i), amp)) * (weekly(int(s.hours(i) // 24)) if week else 1.0)
        return s

    def measure(name, step, level, amp, noise, week=False):
        s = Series(name, "measurements", step, days, rng)
        s.noise = noise
        s.base = lambda i: (level + daily(s.hours(i), amp)) * (weekly(int(s.hours(i) // 24)) if week else 1.0)
        return s

    a = counts("api_calls_spike", 5, 20, 60)
    a.spike(150, 3)
    a.spike(90, 6)
    out.append(a)
    b = counts("api_calls_outage", 5, 40, 80, week=True)
    b.spike(-1e9, 24)  # no calls at all for two hours
    out.append(b)
    c = counts("errors_rare_burst", 5, 0.3, 0.5)
    c.spike(25, 4)
    c.spike(12, 2)
    out.append(c)
    d = counts("api_calls_level_shift", 30, 200, 300)
    d.shift(250)
    out.append(d)
    e = counts("logins_hourly", 60, 5, 15, week=True)
    e.spike(60, 2)
    out.append(e)

    f = measure("cpu_spike", 5, 30, 25, 3)
    f.spike(45, 4)
    f.spike(-25, 6)
    out.append(f)
    g = measure("cpu_gaps_shift", 5, 40, 10, 2)
    g.gap(36)
    g.gap(100)
    g.shift(15)
    out.append(g)
    h = measure("latency_variance", 5, 120, 40, 6)
    h.variance_change(6, 48)
    out.append(h)
    i = measure("temperature_trend", 30, 18, 8, 0.6)
    i.trend_change(1.5)
    out.append(i)
    j = measure("disk_dip_weekly", 60, 500, 200, 20, week=True)
    j.spike(-400, 3)
    out.append(j)
    k = measure("network_noisy_spike", 5, 1000, 0, 120)
    k.spike(900, 3)
    k.spike(600, 2)
    out.append(k)
    nothing = measure("cpu_no_anomaly", 5, 50, 20, 4)
    out.append(nothing)
    quiet = counts("api_calls_no_anomaly", 5, 15, 30)
    out.append(quiet)
    return out


def values(s):
    rng = s.rng
    for i in range(s.n):
        if i in s.gaps:
            continue
        base = s.base(i)
        if s.kind == "counts":
            v = poisson(rng, max(0.0, base + s.effects[i]))
        else:
            v = base + s.effects[i] + rng.gauss(0, s.noise * s.scale[i])
        yield START + dt.timedelta(minutes=i * s.step), v


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="folder to write (data/ and labels/ under it)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--days", type=int, default=28, help="length of each series (default 28)")
    args = ap.parse_args()
    rng = random.Random(args.seed)
    windows = {}
    for s in build(rng, args.days):
        rel = f"{s.kind}/{s.name}.csv"
        path = os.path.join(args.out, "data", rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        stamps = []
        with open(path, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["timestamp", "value"])
            for t, v in values(s):
                w.writerow([t.strftime("%Y-%m-%d %H:%M:%S"), f"{v:.4f}".rstrip("0").rstrip(".") if s.kind != "counts" else int(v)])
                stamps.append(t)
        fmt = lambda i: (START + dt.timedelta(minutes=i * s.step)).strftime("%Y-%m-%d %H:%M:%S.000000")
        windows[rel] = [[fmt(a), fmt(b)] for a, b in sorted(s.windows)]
    # NAB's application profiles, so that benches/nab.py scores this corpus as it scores NAB.
    os.makedirs(os.path.join(args.out, "config"), exist_ok=True)
    profiles = {
        name: {"CostMatrix": {"tpWeight": 1.0, "fnWeight": fn, "fpWeight": fp, "tnWeight": 1.0}}
        for name, fn, fp in [("standard", 1.0, 0.11), ("reward_low_FP_rate", 1.0, 0.22), ("reward_low_FN_rate", 2.0, 0.11)]
    }
    with open(os.path.join(args.out, "config", "profiles.json"), "w") as f:
        json.dump(profiles, f, indent=2)
    os.makedirs(os.path.join(args.out, "labels"), exist_ok=True)
    with open(os.path.join(args.out, "labels", "combined_windows.json"), "w") as f:
        json.dump(windows, f, indent=2, sort_keys=True)
    print(f"{len(windows)} series, {sum(len(w) for w in windows.values())} anomaly windows in {args.out}")


if __name__ == "__main__":
    main()
