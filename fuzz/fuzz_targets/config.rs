//! `hypervisor.toml` from arbitrary bytes: parsing and the later checks
//! never panic, and every error names a position inside the text.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut outcome = config::parse_bytes("hypervisor.toml", data);
    config::check_images(&mut outcome, |path| path.len() % 2 == 0);
    config::check_memory(&mut outcome, 64 << 20, |g| g.memory / 512);
    let lines = data.split(|&b| b == b'\n').count();
    for e in &outcome.errors {
        let text = e.to_string();
        assert!(
            text.starts_with("config: error: hypervisor.toml:"),
            "{text}"
        );
        // Positions are 1-based and inside the file (one past the last
        // line for an error at the very end).
        assert!(e.line >= 1 && e.line as usize <= lines + 1, "{text}");
    }
});
