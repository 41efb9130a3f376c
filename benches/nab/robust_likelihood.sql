-- NAB (issue 20): the measurement functions as the README's model section recommends, one
-- statement per series and one threshold for all:
--
--   score         = robust_baseline(value, ...)['score']      a robust z-score: (value -
--                   expected) / spread, expected the median of the last 3 steps, spread the
--                   residuals' over the trailing {window_steps} steps (missing steps stay
--                   missing, rows in one step averaged)
--   anomaly_score = anomaly_likelihood(|score|, short, long)
--                   how unusual the average of the last {short} scores is against the {long}
--                   before them, log-scaled; a lasting anomaly goes red (>= 0.5) once
--
-- Run by benches/nab.py, which fills {csv}, {step_seconds} and the parameters.
--
-- param window_steps=288
-- param short=10
-- param long=8640

CREATE EXTERNAL TABLE series (timestamp TIMESTAMP, value DOUBLE)
STORED AS CSV LOCATION '{csv}' OPTIONS ('has_header' 'true');

SELECT timestamp, value, anomaly_likelihood(abs(b['score']), {short}, {long}) OVER (ORDER BY timestamp) AS anomaly_score
FROM (
    SELECT timestamp, value,
           robust_baseline(value, timestamp, INTERVAL '{step_seconds} seconds',
                           CAST(CAST({step_seconds} * {window_steps} AS VARCHAR) || ' seconds' AS INTERVAL))
               OVER (ORDER BY timestamp) AS b
    FROM series
)
ORDER BY timestamp
