//! `train.deterministic` sets libtorch's CUDA switches (global flags of ATen's context, so they
//! can be set and read back on a CPU-only machine) and oneDNN's; its own process, as the flags
//! are process-wide.
use selfsup_core::determinism::{apply, switches};

#[test]
fn deterministic_sets_every_switch_and_back() {
    let on = apply(true).unwrap();
    assert!(on.deterministic && on.cudnn_deterministic && on.deterministic_algorithms);
    assert!(!on.cudnn_benchmark && !on.tf32_cublas && !on.tf32_cudnn && !on.mkldnn, "{on:?}");
    assert!(on.cublas_workspace_config.is_some());
    assert_eq!(switches(true).unwrap(), on);
    let off = apply(false).unwrap();
    assert!(!off.cudnn_deterministic && !off.deterministic_algorithms, "{off:?}");
    assert!(off.cudnn_benchmark && off.mkldnn, "{off:?}");
    // The record the trainer writes beside config.json.
    let v = serde_json::to_value(&on).unwrap();
    assert_eq!(v["tf32_cudnn"], false);
    assert_eq!(v["cublas_workspace_config"], ":4096:8");
}
