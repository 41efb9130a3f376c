//! A scheduled query's file: its header lines (name, cron schedule, output template, window,
//! delay) and, when it parses, its slots, output paths and rendered SQL.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let Ok(query) = prism::schedule::header::parse_query_file(std::path::Path::new("fuzz.sql"), text) else { return };
    let now = chrono::DateTime::from_timestamp(1_717_243_200, 0).expect("a constant time");
    if let Some(slot) = query.schedule.as_ref().and_then(|s| s.latest_slot(now)) {
        let window = query.window_at(slot);
        let _ = query.output.render(&query.name, slot, window);
        let _ = query.render_sql(window);
    }
});
