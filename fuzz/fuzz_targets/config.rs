//! Run configs (`config.json` as `selfsup train --config` reads it: JSON, the `RunConfig`
//! fields with their defaults, then `validate`) and `--set KEY=VALUE` overrides on the default
//! config. The first byte picks which.
#![no_main]
use libfuzzer_sys::fuzz_target;
use selfsup_core::config::{apply_override, from_value, RunConfig};

fuzz_target!(|data: &[u8]| {
    let Some((&pick, bytes)) = data.split_first() else { return };
    if pick % 2 == 0 {
        let Ok(value) = serde_json::from_slice::<serde_json::Value>(bytes) else { return };
        if let Ok(cfg) = from_value::<RunConfig>(&value, "config.json") {
            let _ = cfg.validate();
        }
    } else {
        let Ok(text) = std::str::from_utf8(bytes) else { return };
        let mut value = serde_json::to_value(RunConfig::default()).unwrap();
        if apply_override(&mut value, text).is_ok() {
            if let Ok(cfg) = from_value::<RunConfig>(&value, "profile") {
                let _ = cfg.validate();
            }
        }
    }
});
