-- NAB (issue 20) reference detector: a z-score against the trailing baseline, written as a
-- new user would with today's functions, so the benchmark has a figure to improve on.
--
--   anomaly_score = anomaly_probability((value - mean) / stddev)   (0 when stddev is 0)
--
-- where mean and stddev are baseline()'s over the last {window_steps} steps of the series'
-- sampling step (steps without a row count as zeros, rows in one step are summed: baseline()
-- models counts). Run by benches/nab.py, which fills {csv}, {step_seconds} and {window_steps}.
--
-- param window_steps=288

CREATE EXTERNAL TABLE series (timestamp TIMESTAMP, value DOUBLE)
STORED AS CSV LOCATION '{csv}' OPTIONS ('has_header' 'true');

SELECT timestamp, value,
       CASE WHEN b['stddev'] > 0 THEN anomaly_probability((value - b['mean']) / b['stddev']) ELSE 0.0 END
           AS anomaly_score
FROM (
    SELECT timestamp, value,
           baseline(value, timestamp, INTERVAL '{step_seconds} seconds',
                    -- the range as an interval of window_steps steps (intervals cannot be multiplied)
                    CAST(CAST({step_seconds} * {window_steps} AS VARCHAR) || ' seconds' AS INTERVAL))
               OVER (ORDER BY timestamp) AS b
    FROM series
)
ORDER BY timestamp
