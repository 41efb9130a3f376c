-- name: unusual_activity
-- schedule: 0 7 * * *
-- output: results/{name}/{date}.csv
-- Unusual activity: every Insight of the last 7 days of data, newest first, with how far the
-- rate moved from its baseline and who drove it.
--
-- What it finds: API call-rate spikes and drops, and error-rate bursts, found by
-- `prism insights run` / `backfill` (the `insights` table). One row per Insight: its start and
-- end (end is empty while it is still open), the API, the error code for error-rate Insights,
-- the baseline and Insight averages (calls per minute) and the top caller during the Insight.
-- Read `ratio` as "times the usual rate": 0 for an API that went silent.
SELECT s.eventtime AS started,
       e.eventtime AS ended,
       s.recipientaccountid AS account,
       s.awsregion AS region,
       s.insighttype AS type,
       s.insighteventsource AS source,
       s.insighteventname AS api,
       s.insighterrorcode AS errorcode,
       s.insightdirection AS direction,
       coalesce(e.baselineaverage, s.baselineaverage) AS baseline_per_min,
       coalesce(e.insightaverage, s.insightaverage) AS insight_per_min,
       round(coalesce(e.insightaverage, s.insightaverage) / greatest(coalesce(e.baselineaverage, s.baselineaverage), 0.01), 1) AS ratio,
       json_get_str(s.eventjson, 'insightDetails', 'insightContext', 'attributions', 0, 'insight', 0, 'value') AS top_caller
FROM insights s
LEFT JOIN insights e ON e.sharedeventid = s.sharedeventid AND e.insightstate = 'End'
WHERE s.insightstate = 'Start'
  AND s.eventtime >= (SELECT max(eventtime) FROM insights) - INTERVAL '7 days'
ORDER BY started DESC, api;
