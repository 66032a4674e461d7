//! Config loading: any text gets a config or a list of errors, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // No environment and no files: every `${env:..}`, `${file:..}`, key and CA reads as
    // missing, so a run depends on the input alone.
    let inputs = strangle::config::Fixed::new();
    let base = std::path::Path::new("/nonexistent/strangle-fuzz");
    match strangle::config::parse_with("fuzz.toml", text, base, &inputs) {
        Ok(config) => {
            for r in &config.routes {
                assert!(r.path.starts_with('/'));
            }
        }
        Err(errors) => assert!(!errors.0.is_empty()),
    }
});
