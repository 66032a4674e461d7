//! Config loading: any text gets a config or a list of errors, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // `${file:..}` paths resolve under a directory that does not exist.
    let base = std::path::Path::new("/nonexistent/strangle-fuzz");
    match strangle::config::parse("fuzz.toml", text, base) {
        Ok(config) => {
            for r in &config.routes {
                assert!(r.path.starts_with('/'));
            }
        }
        Err(errors) => assert!(!errors.0.is_empty()),
    }
});
