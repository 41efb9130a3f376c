-- name: insight_score_check
-- The detector's arithmetic, in SQL: for the API of the most recent call-rate Insight, every
-- minute's calls, the baseline the detector used, and the spike score it compared with its
-- threshold (6 by default), recomputed with the UDFs baseline(), deviation_score() and
-- anomaly_probability().
--
-- What it shows: why an Insight started where it did. The minutes around the Insight's start
-- have spike_score >= 6 while calls are above `expected`. Change the `target` CTE to look at
-- any other API, or reuse the pattern on your own series (any step, any numeric value).
--
-- The series is dense (minutes without calls are zeros) from the first minute of data of the
-- account and region, as the detector sees it.
WITH target AS (
    SELECT recipientaccountid, awsregion, insighteventsource, insighteventname
    FROM insights
    WHERE insighttype = 'ApiCallRateInsight' AND insightstate = 'Start'
    ORDER BY eventtime DESC, insighteventname
    LIMIT 1
),
bounds AS (
    SELECT min(r.period) AS first_minute, max(r.period) AS last_minute
    FROM rollups r JOIN target t
      ON r.recipientaccountid = t.recipientaccountid AND r.awsregion = t.awsregion
    WHERE r.kind = 'minute'
),
calls AS (
    SELECT r.period AS minute, sum(r.calls) AS calls
    FROM rollups r JOIN target t
      ON r.recipientaccountid = t.recipientaccountid AND r.awsregion = t.awsregion
     AND r.eventsource = t.insighteventsource AND r.eventname = t.insighteventname
    WHERE r.kind = 'minute' AND r.management AND r.readonly = false
    GROUP BY r.period
),
series AS (
    SELECT m.minute, coalesce(c.calls, 0) AS calls
    FROM (SELECT unnest(generate_series(first_minute, last_minute, INTERVAL '1 minute')) AS minute FROM bounds) m
    LEFT JOIN calls c ON c.minute = m.minute
),
based AS (
    SELECT minute, calls,
           baseline(calls, minute, INTERVAL '1 minute', INTERVAL '7 days', INTERVAL '1 day') OVER (ORDER BY minute) AS b
    FROM series
),
scored AS (
    SELECT minute, calls,
           b['mean'] AS baseline_mean,
           b['expected'] AS expected,
           deviation_score(CAST(sum(calls) OVER w AS DOUBLE), sum(b['expected']) OVER w, 3.0) AS spike_score
    FROM based
    WINDOW w AS (ORDER BY minute ROWS BETWEEN 2 PRECEDING AND CURRENT ROW)
)
SELECT minute, calls, round(baseline_mean, 6) AS baseline_mean, round(expected, 6) AS expected,
       round(spike_score, 3) AS spike_score, round(anomaly_probability(spike_score), 6) AS probability
FROM scored
WHERE spike_score >= 2
ORDER BY minute;
