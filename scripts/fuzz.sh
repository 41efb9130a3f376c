#!/bin/sh
# A short fuzzing run of every target in fuzz/ (issue 19), about a minute in all by default:
#   scripts/fuzz.sh [SECONDS_PER_TARGET]
# Long runs: cargo fuzz run --sanitizer none <target> fuzz/corpus/<target> fuzz/seeds/<target> -- -runs=10000000
# Limits as the issue sets them: 1 s per input, 256 MiB of RSS and per allocation. Built
# without a sanitizer (safe Rust: the findings sought are panics, hangs and memory blow-ups),
# which builds and runs several times faster than with AddressSanitizer.
set -eu
cd "$(dirname "$0")/.."
per_target=${1:-15}
targets="records selectors schedule_header sql_statements"

command -v cargo-fuzz >/dev/null 2>&1 || cargo install cargo-fuzz --locked
# cargo fuzz needs nightly features: the nightly toolchain when there is one, else stable with
# RUSTC_BOOTSTRAP=1.
toolchain=""
if rustup toolchain list 2>/dev/null | grep -q '^nightly'; then toolchain="+nightly"; else export RUSTC_BOOTSTRAP=1; fi

# Seeds: real CloudTrail files and a generated archive (records), the shipped and test queries
# (schedule headers, SQL), and AWS's request shapes (selectors).
seeds=fuzz/seeds
mkdir -p "$seeds/records" "$seeds/selectors" "$seeds/schedule_header" "$seeds/sql_statements"
real=../shared/data/cloudtrail-real
if [ -d "$real" ]; then
    find "$real" -type f \( -name '*.json' -o -name '*.json.gz' -o -name '*.jsonl' \) -size -1M | while read -r f; do
        cp "$f" "$seeds/records/$(echo "$f" | md5sum | cut -c1-16)"
    done
fi
if [ ! -d "$seeds/generated" ]; then
    cargo run --quiet -- generate --out "$seeds/generated" --accounts 1 --days 1 --events-per-day 2000 --anomalies 0 --data-events-per-day 500 --seed 3 >/dev/null
    find "$seeds/generated" -name '*.json.gz' | head -50 | while read -r f; do cp "$f" "$seeds/records/gen-$(basename "$f")"; done
fi
for f in queries/*.sql tests/fixtures/schedule/*.sql; do
    cp "$f" "$seeds/schedule_header/"
    cp "$f" "$seeds/sql_statements/"
done
printf '%s' '[{"InsightType":"ApiCallRateInsight"},{"InsightType":"ApiErrorRateInsight","EventCategories":["Management","Data"]}]' > "$seeds/selectors/insight"
printf '%s' '{"InsightSelectors":[{"InsightType":"ApiCallRateInsight","EventCategories":["Data"]}]}' > "$seeds/selectors/request"
printf '%s' '[{"EventCategory":"Data","Templates":["API_ACTIVITY","RESOURCE_ACCESS","USER_ACTIONS"]}]' > "$seeds/selectors/aggregation"

for t in $targets; do
    mkdir -p "fuzz/corpus/$t"
    echo "== $t (${per_target} s)"
    cargo $toolchain fuzz run --sanitizer none "$t" "fuzz/corpus/$t" "$seeds/$t" -- \
        -max_total_time="$per_target" -timeout=1 -rss_limit_mb=256 -malloc_limit_mb=256 -print_final_stats=1 2>&1 |
        grep -E '^(stat::number_of_executed_units|stat::peak_rss_mb|==|SUMMARY|.*(panicked|ERROR|deadly))' || true
done
