#!/usr/bin/env python3
"""Score Prism SQL anomaly detectors on the Numenta Anomaly Benchmark (NAB), issue 20.

Why: NAB (https://github.com/numenta/NAB, MIT licence) is the common yardstick for streaming
anomaly detectors: 58 labelled series (AWS CloudWatch metrics, ad exchange, traffic, tweets,
known-cause incidents, artificial) and published scores for two dozen detectors. Scoring a
Prism SQL statement on it puts a number on "how good is this detector" that can be compared
with those figures, and before/after a change to the model's functions.

How:
  * The scorer is a reimplementation of NAB's (nab/sweeper.py, optimizer.py, scorer.py and the
    runner's normalisation), in numpy: anomaly windows from labels/combined_windows.json; each
    record scored by the scaled sigmoid of its position relative to the window it is in (a
    true positive, only the best, i.e. first, detection of a window counts) or to the window
    before it (a false positive); the first 15% of each file (at most 750 records) is
    probationary and not scored; one threshold for the whole corpus per application profile
    (standard, reward_low_FP_rate, reward_low_FN_rate from config/profiles.json), the one with
    the highest raw score, highest threshold on ties; normalised so that 0 is the null
    detector (never fires) and 100 a perfect one (every window found at its left edge, no
    false positive). A record is a detection when its anomaly_score >= the threshold.
  * `--check` scores NAB's stored detector outputs (results/<detector>/...) and prints them
    beside the published figures (results/final_results.json): the scorer is trusted only
    because they agree.
  * `--prism BIN --sql FILE` runs a SQL template once per NAB file with `prism sql` (no lake),
    writes the outputs in NAB's results layout and scores them. The template's placeholders:
        {csv}           absolute path of the NAB CSV (columns timestamp,value)
        {step_seconds}  the series' sampling step: the commonest gap between timestamps
        {NAME}          a parameter: `--param NAME=VALUE`, or a default given in the file
                        on a line `-- param NAME=VALUE`
    The last statement's result must have one row per CSV row, columns timestamp, value,
    anomaly_score (in [0, 1]), in timestamp order; any other count fails the run. Rows are
    matched back to the CSV's order by (timestamp, value), since a few NAB files are not in
    time order or repeat timestamps.
  * `--score NAME --results DIR` rescoring of outputs already in NAB's layout.

NAB is not vendored: `git clone https://github.com/numenta/NAB /work/nab` (or pass --nab).

    python3 benches/nab.py --check
    python3 benches/nab.py --prism target/release/prism --sql benches/nab/zscore_baseline.sql
    python3 benches/nab.py --prism target/release/prism --sql benches/nab/zscore_baseline.sql \\
        --param window_steps=1008 --detector zscore_1008
"""

import argparse
import collections
import concurrent.futures
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np
import pandas as pd

PROBATIONARY_PERCENT = 0.15  # NAB's runner.probationaryPercent
PROFILES = ("standard", "reward_low_FP_rate", "reward_low_FN_rate")
CHECK_DETECTORS = ("numenta", "windowedGaussian", "null", "ARTime", "relativeEntropy")
TOLERANCE = 0.1  # points of normalised score --check accepts


# ---------------------------------------------------------------------------------------------
# The corpus: data files, windows, and each record's place relative to the windows.


def scaled_sigmoid(position):
    """NAB's scaledSigmoid: 2*sigmoid(-5x) - 1, and -1 beyond 3 window lengths."""
    if position > 3.0:
        return -1.0
    return 2.0 / (1.0 + math.exp(5.0 * position)) - 1.0


MAX_TP = scaled_sigmoid(-1.0)


class File:
    """One NAB series and its windows, placed as NAB's Sweeper.calcSweepScore places them."""

    def __init__(self, nab, relpath, windows):
        self.relpath = relpath  # e.g. realKnownCause/nyc_taxi.csv
        self.path = os.path.join(nab, "data", relpath)
        self.frame = pd.read_csv(self.path, header=0, dtype={"timestamp": str})
        self.text_times = self.frame["timestamp"].to_numpy()
        self.times = pd.to_datetime(self.frame["timestamp"]).to_numpy().astype("datetime64[ns]")
        self.values = self.frame["value"].to_numpy(dtype=float)
        self.windows = [tuple(np.datetime64(pd.Timestamp(t), "ns") for t in w) for w in windows]
        n = len(self.times)
        gaps = np.diff(self.times).astype("timedelta64[s]").astype(np.int64)
        counts = collections.Counter(int(g) for g in gaps if g > 0)
        top = max(counts.values())
        self.step_seconds = min(g for g, c in counts.items() if c == top)
        self.in_order = bool(np.all(gaps >= 0))
        self.repeats = int(n - len(np.unique(self.times)))
        # label: 1 inside a window (NAB's CorpusLabel.getLabels)
        self.label = np.zeros(n, dtype=np.int8)
        for t1, t2 in self.windows:
            self.label[(self.times >= t1) & (self.times <= t2)] = 1
        self._place()

    def _place(self):
        """Per record: the unweighted sigmoid score, the window index it belongs to (-1 when
        outside every window) and whether it is scored (past the probationary period). A
        line-by-line port of calcSweepScore, whose quirks (first occurrence of a window edge's
        timestamp, FP distance from the previous window's right edge) it keeps."""
        times = list(self.times)
        n = len(times)
        first = {}
        for i, t in enumerate(times):
            first.setdefault(t, i)
        pending = list(self.windows)
        probationary = min(math.floor(PROBATIONARY_PERCENT * n), PROBATIONARY_PERCENT * 5000)
        self.unweighted = np.empty(n)
        self.window = np.full(n, -1, dtype=np.int64)
        self.scored = np.arange(n) >= probationary
        cur = None  # the window being crossed: (index, right edge's row, width in rows, right edge's time)
        prev = None  # the last window passed: (right edge's row, width in rows)
        for i, t in enumerate(times):
            if pending and t == pending[0][0]:
                left, right = pending.pop(0)
                k = len(self.windows) - len(pending) - 1
                cur = (k, first[right], float(first[right] - first[left] + 1), right)
            if cur is not None:
                self.unweighted[i] = scaled_sigmoid(-(cur[1] - i + 1) / cur[2])
                self.window[i] = cur[0]
            elif prev is None:
                self.unweighted[i] = -1.0
            else:
                self.unweighted[i] = scaled_sigmoid(abs(prev[0] - i) / float(prev[1] - 1))
            if cur is not None and t == cur[3]:
                prev = (i, cur[2])
                cur = None


class Corpus:
    """All of NAB's labelled files, in a fixed order, with the records' placement flattened."""

    def __init__(self, nab):
        self.nab = nab
        with open(os.path.join(nab, "labels", "combined_windows.json")) as f:
            windows = json.load(f)
        with open(os.path.join(nab, "config", "profiles.json")) as f:
            self.profiles = {k: v["CostMatrix"] for k, v in json.load(f).items()}
        missing = [p for p in PROFILES if p not in self.profiles]
        if missing:
            sys.exit(f"{nab}/config/profiles.json lacks profiles {missing}")
        self.files = [File(nab, rel, windows[rel]) for rel in sorted(windows)]
        self.window_count = sum(len(f.windows) for f in self.files)  # NAB's "tpCount"
        self.unweighted = np.concatenate([f.unweighted for f in self.files])
        self.scored = np.concatenate([f.scored for f in self.files])
        ids, base = [], 0
        for f in self.files:
            ids.append(np.where(f.window >= 0, f.window + base, -1))
            base += len(f.windows)
        self.window = np.concatenate(ids)
        # windows with at least one scored record: a miss costs fnWeight each
        self.scored_windows = len(np.unique(self.window[self.scored & (self.window >= 0)]))

    def null_score(self, profile):
        """The raw score of a detector that never fires: every scored window missed."""
        return -self.profiles[profile]["fnWeight"] * self.scored_windows

    def perfect_score(self, profile):
        return self.window_count * self.profiles[profile]["tpWeight"]

    def normalise(self, raw, profile):
        base = self.null_score(profile)
        return 100.0 * (raw - base) / (self.perfect_score(profile) - base)


# ---------------------------------------------------------------------------------------------
# Sweeping thresholds (NAB's calcScoreByThreshold over the whole corpus) and choosing one.


Result = collections.namedtuple(
    "Result", "profile threshold raw score tp_windows fn_windows fp tp_records fn_records"
)


def optimise(corpus, scores, profile):
    """The best threshold for `scores` (one per record, corpus order) under `profile`, as
    NAB's optimizer picks it, with its raw and normalised score and counts."""
    cost = corpus.profiles[profile]
    m = corpus.scored
    s, w, u = scores[m], corpus.window[m], corpus.unweighted[m]
    sweep = np.where(w >= 0, u * cost["tpWeight"] / MAX_TP, u * cost["fpWeight"])
    order = np.argsort(-s, kind="stable")
    s, w, sweep = s[order], w[order], sweep[order]
    fn = cost["fnWeight"]
    # A false positive adds its sweep score; a record in a window raises that window's part
    # from -fnWeight to the best sweep score of its detected records.
    step = np.where(w < 0, sweep, 0.0)
    inw = np.nonzero(w >= 0)[0]
    if len(inw):
        g = pd.DataFrame({"w": w[inw], "v": sweep[inw]}).groupby("w")["v"]
        best = np.maximum(g.cummax().to_numpy(), -fn)
        before = pd.Series(best, index=inw).groupby(w[inw]).shift(1).fillna(-fn).to_numpy()
        step[inw] = best - before
    base = -fn * len(np.unique(w[w >= 0]))
    total = base + np.cumsum(step)
    # one candidate per distinct score: all records with a score >= it are detections
    ends = np.nonzero(np.append(s[1:] != s[:-1], True))[0] if len(s) else np.array([], int)
    thresholds = np.concatenate([[1.1], s[ends]])
    raws = np.concatenate([[base], total[ends]])
    k = int(np.argmax(raws))  # first maximum: the highest threshold among equal scores
    taken = 0 if k == 0 else ends[k - 1] + 1
    hit = w[:taken]
    tp_windows = len(np.unique(hit[hit >= 0]))
    total_windows = len(np.unique(w[w >= 0]))
    return Result(
        profile=profile,
        threshold=float(thresholds[k]),
        raw=float(raws[k]),
        score=corpus.normalise(float(raws[k]), profile),
        tp_windows=tp_windows,
        fn_windows=total_windows - tp_windows,
        fp=int(np.sum(hit < 0)),
        tp_records=int(np.sum(hit >= 0)),
        fn_records=int(np.sum(w >= 0) - np.sum(hit >= 0)),
    )


def raw_at(corpus, scores, profile, threshold):
    """The raw score at a given threshold (NAB's scorer.scoreCorpus, summed over files)."""
    cost = corpus.profiles[profile]
    m = corpus.scored
    s, w, u = scores[m], corpus.window[m], corpus.unweighted[m]
    sweep = np.where(w >= 0, u * cost["tpWeight"] / MAX_TP, u * cost["fpWeight"])
    hit = s >= threshold
    windows = np.unique(w[w >= 0])
    best = np.full(corpus.window_count, -cost["fnWeight"])
    np.maximum.at(best, w[hit & (w >= 0)], sweep[hit & (w >= 0)])
    return float(best[windows].sum() + sweep[hit & (w < 0)].sum())


def score_all(corpus, scores):
    return [optimise(corpus, scores, p) for p in PROFILES]


# ---------------------------------------------------------------------------------------------
# Reading and writing NAB's results layout: <dir>/<detector>/<category>/<detector>_<file>.csv


def result_path(root, detector, relpath):
    category, name = relpath.split("/")
    return os.path.join(root, detector, category, f"{detector}_{name}")


def read_results(corpus, root, detector):
    parts = []
    for f in corpus.files:
        path = result_path(root, detector, f.relpath)
        frame = pd.read_csv(path, usecols=["anomaly_score"])
        if len(frame) != len(f.times):
            sys.exit(f"{path}: {len(frame)} rows, {f.relpath} has {len(f.times)}")
        parts.append(frame["anomaly_score"].to_numpy(dtype=float))
    return np.concatenate(parts)


def write_results(corpus, root, detector, per_file):
    for f, score in zip(corpus.files, per_file):
        path = result_path(root, detector, f.relpath)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        pd.DataFrame(
            {"timestamp": f.text_times, "value": f.frame["value"], "anomaly_score": score, "label": f.label}
        ).to_csv(path, index=False)


def print_results(results):
    print(f"{'profile':<20} {'score':>7} {'threshold':<20} {'TP':>4} {'FN':>4} {'FP':>5} {'raw':>9}")
    for r in results:
        print(f"{r.profile:<20} {r.score:7.2f} {r.threshold!r:<20} {r.tp_windows:4d} {r.fn_windows:4d} {r.fp:5d} {r.raw:9.3f}")
    print("TP, FN: windows detected and missed (first detection in a window counts); FP: detections outside windows;")
    print("raw: NAB's unnormalised score. Records in the probationary 15% are not scored.")


# ---------------------------------------------------------------------------------------------
# Running a SQL template with Prism.

PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
DEFAULT_PARAM = re.compile(r"^\s*--\s*param\s+([A-Za-z_][A-Za-z0-9_]*)\s*=\s*(\S+)\s*$", re.M)


def fill(template, values):
    return PLACEHOLDER.sub(lambda m: str(values[m.group(1)]), template)


def run_file(prism, template, params, f, workdir):
    """Runs the template on one file; returns (anomaly scores in the CSV's order, seconds)."""
    sql = fill(template, {**params, "csv": os.path.abspath(f.path), "step_seconds": f.step_seconds})
    stem = f.relpath.replace("/", "__")
    sql_path = os.path.join(workdir, stem + ".sql")
    out_path = os.path.join(workdir, stem + ".out.csv")
    with open(sql_path, "w") as fh:
        fh.write(sql)
    start = time.monotonic()
    proc = subprocess.run(
        [prism, "sql", "-f", sql_path, "--format", "csv", "-o", out_path], capture_output=True, text=True
    )
    seconds = time.monotonic() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{f.relpath}: prism sql failed ({proc.returncode}):\n{proc.stderr.strip()}")
    out = pd.read_csv(out_path)
    for column in ("timestamp", "value", "anomaly_score"):
        if column not in out.columns:
            raise RuntimeError(f"{f.relpath}: the result has no column {column} (it has {list(out.columns)})")
    if len(out) != len(f.times):
        raise RuntimeError(f"{f.relpath}: the result has {len(out)} rows, the CSV {len(f.times)}")
    score = out["anomaly_score"].to_numpy(dtype=float)
    bad = ~((score >= 0) & (score <= 1))
    if bad.any():
        i = int(np.argmax(bad))
        raise RuntimeError(f"{f.relpath}: {int(bad.sum())} anomaly_score values outside [0, 1] or NULL, e.g. row {i}: {out.iloc[i].to_dict()}")
    times = pd.to_datetime(out["timestamp"], utc=True).dt.tz_localize(None).to_numpy().astype("datetime64[ns]")
    if np.any(np.diff(times) < np.timedelta64(0, "ns")):
        raise RuntimeError(f"{f.relpath}: the result is not in timestamp order")
    # Match rows to the CSV's by (timestamp, value): both sorted the same way.
    values = out["value"].to_numpy(dtype=float)
    mine = np.lexsort((values, times))
    theirs = np.lexsort((f.values, f.times))
    if not (np.array_equal(times[mine], f.times[theirs]) and np.allclose(values[mine], f.values[theirs], rtol=1e-9, atol=0)):
        raise RuntimeError(f"{f.relpath}: the result's (timestamp, value) rows are not the CSV's")
    aligned = np.empty(len(score))
    aligned[theirs] = score[mine]
    return aligned, seconds


def run_prism(a, corpus):
    with open(a.sql) as fh:
        template = fh.read()
    params = dict(DEFAULT_PARAM.findall(template))
    for p in a.param:
        key, _, value = p.partition("=")
        params[key] = value
    missing = sorted(set(PLACEHOLDER.findall(template)) - set(params) - {"csv", "step_seconds"})
    if missing:
        sys.exit(f"{a.sql}: no value for {', '.join('{' + m + '}' for m in missing)} (give --param NAME=VALUE or a '-- param NAME=VALUE' line)")
    detector = a.detector or os.path.splitext(os.path.basename(a.sql))[0]
    prism = os.path.abspath(a.prism)
    shown = ", ".join(f"{k}={v}" for k, v in sorted(params.items()))
    print(f"detector {detector}: {a.sql}{' (' + shown + ')' if shown else ''}, {prism}")
    per_file = [None] * len(corpus.files)
    start = time.monotonic()
    work = tempfile.mkdtemp(prefix="prism-nab-")  # the filled SQL and raw results; kept on failure
    with concurrent.futures.ThreadPoolExecutor(a.jobs) as pool:
        jobs = {pool.submit(run_file, prism, template, params, f, work): i for i, f in enumerate(corpus.files)}
        done = 0
        for job in concurrent.futures.as_completed(jobs):
            i = jobs[job]
            f = corpus.files[i]
            try:
                per_file[i], seconds = job.result()
            except Exception as e:  # noqa: BLE001 - report and stop
                for other in jobs:
                    other.cancel()
                sys.exit(f"error: {e}\n(the filled SQL and outputs are in {work})")
            done += 1
            notes = []
            if not f.in_order:
                notes.append("CSV not in time order")
            if f.repeats:
                notes.append(f"{f.repeats} repeated timestamps")
            note = f" ({', '.join(notes)})" if notes else ""
            print(f"[{done:2d}/{len(corpus.files)}] {f.relpath:<58} {len(f.times):6d} rows, step {f.step_seconds:5d} s, {seconds:6.2f} s{note}", flush=True)
    elapsed = time.monotonic() - start
    shutil.rmtree(work, ignore_errors=True)
    write_results(corpus, a.out, detector, per_file)
    results = score_all(corpus, np.concatenate(per_file))
    summary = {r.profile: r._asdict() for r in results}
    with open(os.path.join(a.out, detector, f"{detector}_summary.json"), "w") as fh:
        json.dump({"detector": detector, "sql": os.path.abspath(a.sql), "params": params, "seconds": elapsed, "profiles": summary}, fh, indent=2)
    print(f"\n{len(corpus.files)} files in {elapsed:.1f} s; outputs in {os.path.join(a.out, detector)}\n")
    print(f"NAB scores of {detector} (0 = never fires, 100 = perfect; {corpus.window_count} windows):")
    print_results(results)


# ---------------------------------------------------------------------------------------------


def check(a, corpus):
    """Scores NAB's stored outputs two ways: at the threshold NAB stored for the detector
    (config/thresholds.json: checks windows, sigmoid, probation, normalisation) and at the
    threshold our sweep chooses (checks the optimiser too). The published figures were
    computed at the stored thresholds, some of which came from NAB's older local optimiser,
    so the sweep may find a better one: it can never be worse."""
    with open(os.path.join(a.nab, "results", "final_results.json")) as fh:
        published = json.load(fh)
    with open(os.path.join(a.nab, "config", "thresholds.json")) as fh:
        stored = json.load(fh)
    detectors = a.check or list(CHECK_DETECTORS)
    if detectors == ["all"]:
        detectors = sorted(published)
    print(f"{'detector':<18} {'profile':<19} {'published':>9} | {'at NAB threshold':>16} {'diff':>7} | {'optimised':>9} {'diff':>7} threshold")
    worst_fixed = worst_opt = 0.0
    better = []
    for d in detectors:
        if d not in published or d not in stored:
            sys.exit(f"{d}: not in {a.nab}/results/final_results.json and config/thresholds.json")
        scores = read_results(corpus, os.path.join(a.nab, "results"), d)
        for r in score_all(corpus, scores):
            pub = published[d][r.profile]
            fixed = corpus.normalise(raw_at(corpus, scores, r.profile, stored[d][r.profile]["threshold"]), r.profile)
            worst_fixed = max(worst_fixed, abs(fixed - pub))
            worst_opt = max(worst_opt, pub - r.score)
            if r.score - pub > TOLERANCE:
                better.append(f"{d} {r.profile}")
            flag = "  (better threshold)" if r.score - pub > TOLERANCE else ""
            print(f"{d:<18} {r.profile:<19} {pub:9.2f} | {fixed:16.2f} {fixed - pub:+7.3f} | {r.score:9.2f} {r.score - pub:+7.3f} {r.threshold!r}{flag}")
    ok = worst_fixed <= TOLERANCE and worst_opt <= TOLERANCE
    print(f"\nat NAB's stored thresholds: largest difference {worst_fixed:.2g} points")
    print(f"optimised: at most {max(worst_opt, 0.0):.2g} points below the published score")
    if better:
        print(f"the sweep found a better threshold than NAB's stored one for: {', '.join(better)}")
    print(f"{'OK' if ok else 'FAILED'} (tolerance {TOLERANCE} points)")
    return 0 if ok else 1


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nab", default=os.environ.get("NAB_DIR", "/work/nab"), help="NAB checkout (default $NAB_DIR or /work/nab)")
    mode = ap.add_mutually_exclusive_group(required=True)
    mode.add_argument("--check", nargs="*", metavar="DETECTOR", help=f"score NAB's stored outputs of these detectors (default: {' '.join(CHECK_DETECTORS)}; 'all': every published one) and compare with the published scores")
    mode.add_argument("--sql", help="SQL template to run with --prism on every NAB file")
    mode.add_argument("--score", metavar="DETECTOR", help="score outputs already in NAB's layout under --results")
    ap.add_argument("--prism", default="target/release/prism", help="the prism binary (default %(default)s)")
    ap.add_argument("--detector", help="detector name for the outputs (default: the SQL file's stem). NAB's own run.py splits names on '_', so use none there")
    ap.add_argument("--param", action="append", default=[], metavar="NAME=VALUE", help="fill {NAME} in the template (overrides a '-- param NAME=VALUE' line)")
    ap.add_argument("--out", default=os.path.join(tempfile.gettempdir(), "prism-nab-results"), help="results folder written by --sql (default %(default)s)")
    ap.add_argument("--results", help="results folder read by --score (default: --out)")
    ap.add_argument("--jobs", type=int, default=1, help="prism processes at once (default %(default)s)")
    a = ap.parse_args()

    if not os.path.isfile(os.path.join(a.nab, "labels", "combined_windows.json")):
        sys.exit(f"no NAB at {a.nab}: git clone https://github.com/numenta/NAB and pass --nab")
    corpus = Corpus(a.nab)
    if a.check is not None:
        return check(a, corpus)
    if a.score:
        results = score_all(corpus, read_results(corpus, a.results or a.out, a.score))
        print(f"NAB scores of {a.score}:")
        print_results(results)
        return 0
    if not os.access(a.prism, os.X_OK):
        sys.exit(f"no prism binary at {a.prism} (--prism)")
    run_prism(a, corpus)
    return 0


if __name__ == "__main__":
    sys.exit(main())
