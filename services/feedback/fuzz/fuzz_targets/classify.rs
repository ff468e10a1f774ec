//! Any bytes as an inbound message: classification never panics.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let verdict = broadside_feedback::classify::classify(data, &["bnc+x@bounces.example".to_owned()]);
    let _ = verdict.kind.as_str();
});
