//! Checkpoints (`checkpoint::load`): the fuzzer's bytes become one file of an otherwise valid
//! checkpoint folder. First byte even: `trainer.json` is the bytes. Odd: `model.safetensors` is
//! the bytes and `trainer.json` names their true SHA-256, so the safetensors reader itself is
//! reached (a checkpoint whose hash does not match stops before it).
#![no_main]
use libfuzzer_sys::fuzz_target;
use selfsup_core::checkpoint::{load, TrainerState, FORMAT_VERSION};
use selfsup_core::config::RunConfig;
use sha2::{Digest, Sha256};

/// An empty safetensors file: an 8-byte header length and the header `{}`, padded.
const EMPTY: &[u8] = b"\x08\x00\x00\x00\x00\x00\x00\x00{}      ";

fn hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

fuzz_target!(|data: &[u8]| {
    let Some((&pick, bytes)) = data.split_first() else { return };
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("trainer.safetensors"), EMPTY).unwrap();
    if pick % 2 == 0 {
        std::fs::write(d.join("model.safetensors"), EMPTY).unwrap();
        std::fs::write(d.join("trainer.json"), bytes).unwrap();
    } else {
        std::fs::write(d.join("model.safetensors"), bytes).unwrap();
        let state = TrainerState {
            version: FORMAT_VERSION,
            epoch: 1,
            batch_in_epoch: 0,
            global_step: 1,
            config: RunConfig::default(),
            image_channels: 3,
            normalization: None,
            epoch_means: None,
            model_sha256: hex(bytes),
            trainer_sha256: hex(EMPTY),
        };
        std::fs::write(d.join("trainer.json"), serde_json::to_vec(&state).unwrap()).unwrap();
    }
    let _ = load(d);
});
