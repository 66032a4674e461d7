//! The Lambda response decoder, for every payload format: never a panic, and whatever it
//! accepts is safe to pass on (a final status, headers under the caps).
#![no_main]

use libfuzzer_sys::fuzz_target;
use strangle::config::Payload;
use strangle::lambda::event::{decode, MAX_RESPONSE_HEADERS};

fuzz_target!(|data: &[u8]| {
    for format in [Payload::ApigwV2, Payload::ApigwV1, Payload::Alb] {
        if let Ok(resp) = decode(format, data) {
            assert!((200..=599).contains(&resp.status), "status {}", resp.status);
            assert!(resp.headers.len() <= MAX_RESPONSE_HEADERS);
        }
    }
});
