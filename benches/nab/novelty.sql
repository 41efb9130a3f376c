-- NAB (issue 20): novelty, one statement per series and one threshold for all:
--
--   d             = novelty(value) / (max(value) - min(value))   the distance to the nearest
--                   earlier value, as a share of the series' range (NAB gives every detector
--                   the series' minimum and maximum; over a growing series use a trailing
--                   range instead)
--   s             = d / (d + {scale})                  in [0, 1): 0.5 at {scale} of the range
--   anomaly_score = s when above every s of the {refractory} rows before, else 0: a new level
--                   is reported once, not at every step that explores it
--
-- Run by benches/nab.py, which fills {csv} and the parameters.
--
-- param scale=0.01
-- param refractory=60

CREATE EXTERNAL TABLE series (timestamp TIMESTAMP, value DOUBLE)
STORED AS CSV LOCATION '{csv}' OPTIONS ('has_header' 'true');

SELECT timestamp, value,
       CASE WHEN s > coalesce(max(s) OVER (ORDER BY timestamp ROWS BETWEEN {refractory} PRECEDING AND 1 PRECEDING), 0) THEN s ELSE 0 END AS anomaly_score
FROM (
    SELECT timestamp, value, coalesce(d / (d + {scale}), 0) AS s
    FROM (
        SELECT timestamp, value,
               novelty(value) OVER (ORDER BY timestamp) / nullif(max(value) OVER () - min(value) OVER (), 0) AS d
        FROM series
    )
)
ORDER BY timestamp
