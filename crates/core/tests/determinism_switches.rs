//! `train.deterministic` and `train.tf32` set libtorch's CUDA switches (global flags of ATen's
//! context, so they can be set and read back on a CPU-only machine) and oneDNN's; its own
//! process, as the flags are process-wide.
use selfsup_core::config::RunConfig;
use selfsup_core::determinism::{apply, switches, Tf32};
use tch::Device;

#[test]
fn deterministic_sets_every_switch_and_back() {
    let on = apply(true, Tf32::Off, Device::Cpu).unwrap();
    assert!(on.deterministic && on.cudnn_deterministic && on.deterministic_algorithms);
    assert!(!on.cudnn_benchmark && !on.tf32_cublas && !on.tf32_cudnn && !on.mkldnn, "{on:?}");
    assert!(on.cublas_workspace_config.is_some());
    // NaN in every new uninitialized tensor: not on the CPU, as PyTorch does on CUDA.
    assert!(!on.fill_uninitialized_memory, "{on:?}");
    assert_eq!(switches(true).unwrap(), on);
    let cuda = apply(true, Tf32::Off, Device::Cuda(0)).unwrap();
    assert!(cuda.fill_uninitialized_memory && cuda.deterministic_algorithms, "{cuda:?}");
    assert!(!apply(false, Tf32::Off, Device::Cuda(0)).unwrap().fill_uninitialized_memory);
    let on = apply(true, Tf32::Off, Device::Cpu).unwrap();
    assert!(!on.fill_uninitialized_memory, "{on:?}");
    let off = apply(false, Tf32::Off, Device::Cpu).unwrap();
    assert!(!off.cudnn_deterministic && !off.deterministic_algorithms, "{off:?}");
    assert!(off.cudnn_benchmark && off.mkldnn, "{off:?}");
    // The record the trainer writes beside config.json.
    let v = serde_json::to_value(&on).unwrap();
    assert_eq!(v["tf32_cudnn"], false);
    assert_eq!(v["cublas_workspace_config"], ":4096:8");
    assert_eq!(v["fill_uninitialized_memory"], false);
    // Records written before the field: read as false.
    let mut old = v.clone();
    old.as_object_mut().unwrap().remove("fill_uninitialized_memory");
    let back: selfsup_core::determinism::Switches = serde_json::from_value(old).unwrap();
    assert_eq!(back, on);

    // TF32 is set apart from determinism, each way, whatever it was before.
    for deterministic in [true, false] {
        for (tf32, cudnn, cublas) in
            [(Tf32::Convolutions, true, false), (Tf32::All, true, true), (Tf32::Off, false, false)]
        {
            let s = apply(deterministic, tf32, Device::Cpu).unwrap();
            assert_eq!((s.tf32_cudnn, s.tf32_cublas), (cudnn, cublas), "{tf32:?}: {s:?}");
            assert_eq!(s.cudnn_deterministic, deterministic, "{tf32:?}: {s:?}");
            assert_eq!(s.cudnn_benchmark, !deterministic, "{tf32:?}: {s:?}");
        }
    }
}

#[test]
fn tf32_defaults_to_pytorchs_and_is_written_only_when_set() {
    let cfg = RunConfig::default();
    assert_eq!(cfg.train.tf32, Tf32::Convolutions);
    let v = serde_json::to_value(&cfg).unwrap();
    assert!(v["train"].get("tf32").is_none(), "{}", v["train"]);
    for (text, want) in
        [("off", Tf32::Off), ("convolutions", Tf32::Convolutions), ("all", Tf32::All)]
    {
        let mut v = serde_json::to_value(&cfg).unwrap();
        v["train"]["tf32"] = text.into();
        let back: RunConfig = serde_json::from_value(v).unwrap();
        assert_eq!(back.train.tf32, want);
        let again = serde_json::to_value(&back).unwrap();
        let written = again["train"].get("tf32").and_then(|t| t.as_str());
        assert_eq!(written, (want != Tf32::Convolutions).then_some(text), "{text}");
    }
    let mut v = serde_json::to_value(&cfg).unwrap();
    v["train"]["tf32"] = "matmuls".into();
    let e = serde_json::from_value::<RunConfig>(v).unwrap_err().to_string();
    assert!(e.contains("matmuls"), "{e}");
}
