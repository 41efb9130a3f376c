//! Insight selectors (`PutInsightSelectors`) and the event configuration
//! (`PutEventConfiguration`): any text is accepted or refused, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(selectors) = prism::insights::parse_selectors(text) {
        let url = url::Url::parse("file:///lake/").expect("a constant URL");
        let _ = prism::insights::selectors_response(&url, &selectors);
    }
    let _ = prism::aggregate::parse_event_config(text);
});
