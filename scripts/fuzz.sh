#!/bin/sh
# A short fuzzing run of every target in fuzz/ (issue 19), about a minute in all by default:
#   scripts/fuzz.sh [SECONDS_PER_TARGET]
# Long runs: cargo fuzz run --sanitizer none <target> fuzz/corpus/<target> fuzz/seeds/<target> -- -runs=10000000 (and the limits below)
# Limits as the issue sets them: 1 s per input, 256 MiB of RSS and per allocation. Built
# without a sanitizer (safe Rust: the findings sought are panics, hangs and memory blow-ups),
# which builds and runs several times faster than with AddressSanitizer.
set -eu
cd "$(dirname "$0")/.."
per_target=${1:-15}
targets="records selectors schedule_header sql_statements http"

command -v cargo-fuzz >/dev/null 2>&1 || cargo install cargo-fuzz --locked
# cargo fuzz needs nightly features: the nightly toolchain when there is one, else stable with
# RUSTC_BOOTSTRAP=1.
toolchain=""
if rustup toolchain list 2>/dev/null | grep -q '^nightly'; then toolchain="+nightly"; else export RUSTC_BOOTSTRAP=1; fi

# Seeds: real CloudTrail files and a generated archive (records), the shipped and test queries
# (schedule headers, SQL), and AWS's request shapes (selectors).
seeds=fuzz/seeds
mkdir -p "$seeds/records" "$seeds/selectors" "$seeds/schedule_header" "$seeds/sql_statements" "$seeds/http"
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
# The console's requests: the first byte picks the server (0: no token, 1: a token), `{id}` is
# replaced by a real Insight's id (fuzz/fuzz_targets/http.rs).
i=0
for line in \
    '0GET /insights?type=ApiCallRateInsight&category=Management&from=2024-01-01&page=2 HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n\r\n' \
    '0GET /insights/{id}?zoom=week&tab=events&page=1 HTTP/1.1\r\nHost: localhost\r\n\r\n' \
    '0GET /api/insights?eventsource=s3.amazonaws.com&direction=up&limit=5 HTTP/1.1\r\nHost: [::1]:8080\r\n\r\n' \
    '0GET /api/insights/{id}/series?zoom=day HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n' \
    '0GET /api/insights/{id}/chart.svg?zoom=insight HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n' \
    '0GET /api/insights/{id}/events?page=2 HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n' \
    '0PUT /api/selectors HTTP/1.1\r\nHost: 127.0.0.1\r\nOrigin: http://127.0.0.1\r\nContent-Type: application/json\r\n\r\n{"InsightSelectors":[{"InsightType":"ApiCallRateInsight"}]}' \
    '0POST /settings HTTP/1.1\r\nHost: 127.0.0.1\r\nReferer: http://127.0.0.1/settings\r\nContent-Type: application/x-www-form-urlencoded\r\n\r\nApiCallRateInsight=on&Data-ApiErrorRateInsight=on' \
    '0GET /sql?q=SELECT+eventname%2C+count(*)+FROM+events+GROUP+BY+1&page=1 HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n' \
    '0POST /api/sql HTTP/1.1\r\nHost: 127.0.0.1\r\nOrigin: http://127.0.0.1\r\nContent-Type: application/json\r\n\r\n{"sql":"SELECT count(*) FROM insights","format":"csv"}' \
    '1GET /api/insights HTTP/1.1\r\nHost: console.example\r\nAuthorization: Bearer fuzz-token-0123456789abcdef\r\n\r\n' \
    '1GET /insights HTTP/1.1\r\nHost: console.example\r\nCookie: a=b; prism_token=fuzz-token-0123456789abcdef\r\n\r\n' \
    '1POST /login HTTP/1.1\r\nHost: console.example\r\nOrigin: http://console.example\r\nContent-Type: application/x-www-form-urlencoded\r\n\r\ntoken=fuzz-token-0123456789abcdef&next=%2Fsettings' \
    '1GET /settings HTTP/1.1\r\nHost: console.example\r\n\r\n'; do
    i=$((i + 1))
    printf '%b' "$line" > "$seeds/http/$i"
done

# The RSS limit: 256 MiB, or for http its fixture's baseline (the instrumented binary, a lake's
# sessions: about 330 MiB) plus 256 MiB for one input.
rss_limit() { if [ "$1" = http ]; then echo 600; else echo 256; fi; }

for t in $targets; do
    mkdir -p "fuzz/corpus/$t"
    echo "== $t (${per_target} s)"
    cargo $toolchain fuzz run --sanitizer none "$t" "fuzz/corpus/$t" "$seeds/$t" -- \
        -max_total_time="$per_target" -timeout=1 -rss_limit_mb="$(rss_limit "$t")" -malloc_limit_mb=256 -print_final_stats=1 2>&1 |
        grep -E '^(stat::number_of_executed_units|stat::peak_rss_mb|==|SUMMARY|.*(panicked|ERROR|deadly))' || true
done
