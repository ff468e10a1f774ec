//! DSN / ARF field groups and typed values from any text.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    for group in broadside_feedback::classify::fields::parse_groups(&text) {
        for (_, value) in &group.0 {
            let _ = broadside_feedback::classify::fields::typed_value(value);
            let _ = broadside_feedback::classify::codes::find_status(value);
        }
    }
    let _ = broadside_feedback::classify::unsubscribe_tokens(&text);
});
