//! Export of encoder weights for use outside selfsup, as safetensors in the layout of
//! PyTorch's `state_dict()`.
//!
//! The ResNet encoders already name their variables as torchvision does
//! ([`crate::encoders::resnet`]), so [`torchvision_state_dict`] strips the var-store prefix
//! (`encoder.`) and adds the two things torchvision's `resnet18()` / `resnet50()` have and the
//! encoder does not, so that `model.load_state_dict(state, strict=True)` succeeds:
//!
//! - `num_batches_tracked` (an int64 scalar) for every BatchNorm. selfsup does not count
//!   batches, so it is written as 0; PyTorch reads it only when a BatchNorm's `momentum` is
//!   `None`, which torchvision's are not.
//! - `fc.weight` `(1000, C)` and `fc.bias` `(1000,)`, with `C` = 512 (ResNet-18) or 2048
//!   (ResNet-50): an **untrained** classifier initialised as torchvision initialises it
//!   (`nn.Linear`'s default, uniform in ±1/√C, here drawn from ChaCha8 with seed
//!   [`FC_SEED`] so exports are reproducible). [`torchvision_metadata`] says so in the file.
//!   Replace `model.fc` (e.g. `model.fc = torch.nn.Identity()` for 512/2048-d features) before
//!   using the model.
//!
//! A ResNet with the `cifar` stem exports a 3×3 `conv1.weight` `(64, C_in, 3, 3)`: in
//! torchvision set `model.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)` and
//! `model.maxpool = nn.Identity()` before `load_state_dict(state, strict=True)`.
//!
//! Other encoders (NIN, AlexNet) are exported with the same rule (prefix stripped,
//! `num_batches_tracked` added, no fc): their names are selfsup's, not those of any PyTorch
//! model. The parity test loads exported ResNet-18/50 into torchvision with `strict=True` and
//! compares `layer4` outputs with ours (run when `SELFSUP_PYTHON` names a Python with torch
//! and torchvision).
use crate::checkpoint::write_atomic;
use crate::{CoreError, Result};
use rand::{Rng, SeedableRng};
use safetensors::tensor::{Dtype, TensorView};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use tch::{nn, Device, Kind, Tensor};

/// Classes of the `fc` added to exported ResNets (torchvision's default, ImageNet).
pub const TORCHVISION_NUM_CLASSES: i64 = 1000;

/// Seed of the ChaCha8 stream that draws the untrained `fc` of exported ResNets.
pub const FC_SEED: u64 = 0;

/// Metadata key that says whether (and how) an `fc` was added to an export.
pub const FC_METADATA_KEY: &str = "selfsup.fc";

/// The encoder's tensors under `prefix` (`"encoder"`; `""` for the whole var store) with the
/// prefix stripped, sorted by name, as PyTorch `state_dict()` entries: every BatchNorm gets
/// `num_batches_tracked` (int64 scalar 0), and a torchvision ResNet gets an untrained `fc`
/// (1000 classes) initialised as torchvision does (see the module docs). Tensors are copied to
/// the CPU.
///
/// # Shapes
/// Each tensor keeps its variable's shape; `num_batches_tracked` is 0-dimensional, `fc.weight`
/// is `(1000, C_block4)` and `fc.bias` `(1000,)`.
pub fn torchvision_state_dict(vs: &nn::VarStore, prefix: &str) -> Vec<(String, Tensor)> {
    let prefix = prefix.trim_end_matches('.');
    let mut state: BTreeMap<String, Tensor> = BTreeMap::new();
    for (name, t) in vs.variables() {
        let stripped = if prefix.is_empty() {
            Some(name.as_str())
        } else {
            name.strip_prefix(prefix).and_then(|rest| rest.strip_prefix('.'))
        };
        if let Some(stripped) = stripped {
            let cpu = tch::no_grad(|| t.detach().to_device(Device::Cpu).copy());
            state.insert(stripped.to_string(), cpu);
        }
    }
    let bns: Vec<String> =
        state.keys().filter_map(|k| k.strip_suffix(".running_var").map(str::to_string)).collect();
    for bn in bns {
        state.insert(
            format!("{bn}.num_batches_tracked"),
            Tensor::scalar_tensor(0, (Kind::Int64, Device::Cpu)),
        );
    }
    if let Some(c) = resnet_feature_channels(&state) {
        let (w, b) = torchvision_fc(c);
        state.insert("fc.weight".into(), w);
        state.insert("fc.bias".into(), b);
    }
    state.into_iter().collect()
}

/// Metadata to store with a [`torchvision_state_dict`] export: `format` = `pt`, what the
/// layout is, how `num_batches_tracked` was filled, and under [`FC_METADATA_KEY`] whether the
/// `fc` is an untrained addition. Callers add their own keys (run, config, checksum).
pub fn torchvision_metadata(state: &[(String, Tensor)]) -> BTreeMap<String, String> {
    let mut m = BTreeMap::new();
    m.insert("format".into(), "pt".into());
    m.insert("selfsup.layout".into(), "torch state_dict (torchvision names for ResNets)".into());
    m.insert(
        "selfsup.num_batches_tracked".into(),
        "0: not counted by selfsup (unused by BatchNorm with momentum 0.1)".into(),
    );
    let fc = if state.iter().any(|(n, _)| n == "fc.weight") {
        format!(
            "untrained: torch.nn.Linear default init (uniform in +-1/sqrt(in_features)), ChaCha8 \
             seed {FC_SEED}; replace model.fc before use"
        )
    } else {
        "none".to_string()
    };
    m.insert(FC_METADATA_KEY.into(), fc);
    m
}

/// Writes `tensors` with `metadata` as a safetensors file at `path`, atomically (a temporary
/// file in the same folder, then a rename). Tensors may live on any device; names must be
/// unique.
pub fn write_safetensors(
    path: &Path,
    tensors: &[(String, Tensor)],
    metadata: &BTreeMap<String, String>,
) -> Result<()> {
    let mut seen = std::collections::HashSet::new();
    let mut raw = Vec::with_capacity(tensors.len());
    for (name, t) in tensors {
        if !seen.insert(name.as_str()) {
            return Err(CoreError::checkpoint(path, format!("duplicate tensor name `{name}`")));
        }
        let kind = t.kind();
        let dtype = dtype_of(kind).ok_or_else(|| {
            CoreError::checkpoint(path, format!("tensor `{name}` has unsupported kind {kind:?}"))
        })?;
        let t = t.detach().to_device(Device::Cpu).contiguous();
        let numel = t.numel();
        let mut bytes = vec![0u8; numel * kind.elt_size_in_bytes()];
        t.f_copy_data_u8(&mut bytes, numel)?;
        let shape: Vec<usize> = t.size().iter().map(|&d| d as usize).collect();
        raw.push((name.as_str(), dtype, shape, bytes));
    }
    let views = raw
        .iter()
        .map(|(name, dtype, shape, bytes)| {
            TensorView::new(*dtype, shape.clone(), bytes)
                .map(|v| (*name, v))
                .map_err(|e| CoreError::checkpoint(path, format!("tensor `{name}`: {e}")))
        })
        .collect::<Result<Vec<_>>>()?;
    let meta: HashMap<String, String> =
        metadata.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    let bytes = safetensors::tensor::serialize(views, Some(meta))
        .map_err(|e| CoreError::checkpoint(path, format!("cannot serialize: {e}")))?;
    write_atomic(path, &bytes)
}

fn dtype_of(kind: Kind) -> Option<Dtype> {
    Some(match kind {
        Kind::Float => Dtype::F32,
        Kind::Double => Dtype::F64,
        Kind::Half => Dtype::F16,
        Kind::BFloat16 => Dtype::BF16,
        Kind::Int64 => Dtype::I64,
        Kind::Int => Dtype::I32,
        Kind::Int16 => Dtype::I16,
        Kind::Int8 => Dtype::I8,
        Kind::Uint8 => Dtype::U8,
        Kind::Bool => Dtype::BOOL,
        _ => return None,
    })
}

/// The channels of `layer4`'s output when `state` is a torchvision ResNet without an `fc`.
fn resnet_feature_channels(state: &BTreeMap<String, Tensor>) -> Option<i64> {
    if state.contains_key("fc.weight")
        || !state.contains_key("conv1.weight")
        || !state.contains_key("bn1.weight")
    {
        return None;
    }
    // Bottleneck blocks end with bn3, basic blocks with bn2.
    let last_bn = state.get("layer4.0.bn3.weight").or_else(|| state.get("layer4.0.bn2.weight"))?;
    last_bn.size().first().copied()
}

/// `nn.Linear(c, 1000)` as PyTorch initialises it: weight and bias uniform in ±1/√c
/// (`kaiming_uniform_(a=√5)` for the weight), drawn from ChaCha8 seeded with [`FC_SEED`].
fn torchvision_fc(c: i64) -> (Tensor, Tensor) {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(FC_SEED);
    let bound = 1.0 / (c as f32).sqrt();
    let mut draw =
        |n: i64| -> Vec<f32> { (0..n).map(|_| rng.random_range(-bound..bound)).collect() };
    let n = TORCHVISION_NUM_CLASSES;
    let w = Tensor::from_slice(&draw(n * c)).view([n, c]);
    let b = Tensor::from_slice(&draw(n));
    (w, b)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::encoders::{build_encoder, EncoderConfig, ResnetStem};

    fn names(state: &[(String, Tensor)]) -> Vec<&str> {
        state.iter().map(|(n, _)| n.as_str()).collect()
    }

    #[test]
    fn resnet18_state_dict_matches_torchvision_keys() {
        let vs = nn::VarStore::new(Device::Cpu);
        let root = vs.root();
        build_encoder(
            &(&root / "encoder"),
            &EncoderConfig::Resnet18 { stem: ResnetStem::Cifar },
            3,
        );
        let _head = nn::linear(&root / "head", 512, 4, Default::default());
        let state = torchvision_state_dict(&vs, "encoder");
        let n = names(&state);
        // torchvision's resnet18().state_dict() has 122 entries: 20 convs, 20 BNs × 5, fc × 2.
        assert_eq!(n.len(), 122);
        assert!(n.iter().all(|k| !k.starts_with("encoder.") && !k.starts_with("head")));
        assert!(n.contains(&"layer2.0.downsample.1.num_batches_tracked"));
        assert!(n.contains(&"bn1.num_batches_tracked"));
        let get = |k: &str| &state.iter().find(|(n, _)| n == k).unwrap().1;
        let nbt = get("layer1.1.bn2.num_batches_tracked");
        assert_eq!((nbt.kind(), nbt.dim(), nbt.int64_value(&[])), (Kind::Int64, 0, 0));
        assert_eq!(get("fc.weight").size(), [1000, 512]);
        assert_eq!(get("fc.bias").size(), [1000]);
        let bound = 1.0 / 512f64.sqrt();
        let w = get("fc.weight");
        assert!(w.abs().max().double_value(&[]) <= bound);
        assert!(w.abs().max().double_value(&[]) > 0.99 * bound);
        // Same prefix with a trailing dot, same fc every time.
        let again = torchvision_state_dict(&vs, "encoder.");
        assert_eq!(names(&again), n);
        assert_eq!(&again.iter().find(|(n, _)| n == "fc.weight").unwrap().1, w);
        assert_eq!(
            torchvision_metadata(&state)[FC_METADATA_KEY].split(':').next(),
            Some("untrained")
        );
    }

    #[test]
    fn nin_gets_no_fc() {
        let vs = nn::VarStore::new(Device::Cpu);
        build_encoder(&(vs.root() / "encoder"), &EncoderConfig::Nin { blocks: 3, width: 16 }, 3);
        let state = torchvision_state_dict(&vs, "encoder");
        // 9 convs + 9 BNs with 5 tensors each.
        assert_eq!(state.len(), 9 + 9 * 5);
        assert!(!names(&state).contains(&"fc.weight"));
        assert_eq!(torchvision_metadata(&state)[FC_METADATA_KEY], "none");
    }

    #[test]
    fn write_safetensors_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("enc.safetensors");
        let tensors = vec![
            ("a".to_string(), Tensor::from_slice(&[1.5f32, -2.0, 3.25]).view([3, 1])),
            (
                "b.num_batches_tracked".to_string(),
                Tensor::scalar_tensor(7, (Kind::Int64, Device::Cpu)),
            ),
            ("c".to_string(), Tensor::from_slice(&[1.0f64, 2.0, 3.0, 4.0]).view([2, 2]).tr()),
        ];
        let mut meta = BTreeMap::new();
        meta.insert("k".to_string(), "v".to_string());
        write_safetensors(&path, &tensors, &meta).unwrap();
        let back = Tensor::read_safetensors(&path).unwrap();
        assert_eq!(back.len(), 3);
        for (name, t) in &tensors {
            let b = &back.iter().find(|(n, _)| n == name).unwrap().1;
            assert_eq!((b.kind(), b.size()), (t.kind(), t.size()), "{name}");
            assert_eq!(b, t, "{name}");
        }
        let bytes = std::fs::read(&path).unwrap();
        let (_, header) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
        assert_eq!(header.metadata().as_ref().unwrap()["k"], "v");
        // Only the final file is left behind.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
        let dup =
            vec![("a".to_string(), Tensor::from(1.0f32)), ("a".to_string(), Tensor::from(2.0f32))];
        let e = write_safetensors(&path, &dup, &meta).unwrap_err().to_string();
        assert!(e.contains("enc.safetensors") && e.contains("duplicate tensor name `a`"), "{e}");
    }

    /// Non-default BN statistics and affine parameters, so the parity test checks them too.
    fn perturb_batch_norms(vs: &nn::VarStore) {
        let vars = vs.variables();
        let opts = (Kind::Float, Device::Cpu);
        tch::no_grad(|| {
            for bn in vars.keys().filter_map(|k| k.strip_suffix(".running_var")) {
                let n = vars[&format!("{bn}.running_var")].size()[0];
                for (field, value) in [
                    ("weight", Tensor::rand([n], opts) + 0.5),
                    ("bias", Tensor::randn([n], opts) * 0.1),
                    ("running_mean", Tensor::randn([n], opts) * 0.1),
                    ("running_var", Tensor::rand([n], opts) + 0.5),
                ] {
                    vars[&format!("{bn}.{field}")].shallow_clone().copy_(&value);
                }
            }
        });
    }

    const PARITY_PY: &str = r#"
import sys, torch, torchvision
from safetensors.torch import load_file
d = sys.argv[1]
torch.set_num_threads(2)
for arch in ["resnet18", "resnet50"]:
    m = getattr(torchvision.models, arch)()
    m.load_state_dict(load_file(f"{d}/{arch}.safetensors"), strict=True)
    m.eval()
    io = load_file(f"{d}/{arch}_io.safetensors")
    body = torch.nn.Sequential(*list(m.children())[:-2])
    with torch.no_grad():
        y = body(io["input"])
        logits = m(io["input"])
    ref = io["block4"]
    diff = (y - ref).abs().max().item()
    print(f"{arch}: strict load ok, layer4 {tuple(y.shape)}, max |torchvision - selfsup| = {diff:.3e}, max |ref| = {ref.abs().max().item():.3f}, logits {tuple(logits.shape)}")
    assert y.shape == ref.shape, (y.shape, ref.shape)
    # fp32 at another thread count or conv algorithm moves ResNet-50's layer4 (values in the
    # thousands) by about 1e-6 of its scale: the bound is relative to it.
    assert diff < 1e-5 * max(1.0, ref.abs().max().item()), diff
"#;

    /// Exports ResNet-18 and ResNet-50 (ImageNet stem, as torchvision) and our `block4` on a
    /// fixed input; with `SELFSUP_PYTHON` set, loads them into torchvision with `strict=True`
    /// and compares `layer4` outputs to 1e-5 of their largest magnitude.
    #[test]
    fn torchvision_parity() {
        let dir = tempfile::tempdir().unwrap();
        tch::manual_seed(7);
        let x = Tensor::randn([1, 3, 224, 224], (Kind::Float, Device::Cpu));
        for (arch, cfg) in [
            ("resnet18", EncoderConfig::Resnet18 { stem: ResnetStem::Imagenet }),
            ("resnet50", EncoderConfig::Resnet50 { stem: ResnetStem::Imagenet }),
        ] {
            let vs = nn::VarStore::new(Device::Cpu);
            let enc = build_encoder(&(vs.root() / "encoder"), &cfg, 3);
            perturb_batch_norms(&vs);
            let f = tch::no_grad(|| enc.features_t(&x, false));
            let e = if arch == "resnet18" { 1 } else { 4 };
            let sizes: Vec<_> = f.iter().map(|(n, t)| (n.as_str(), t.size())).collect();
            assert_eq!(
                sizes,
                [
                    ("block1", vec![1, 64 * e, 56, 56]),
                    ("block2", vec![1, 128 * e, 28, 28]),
                    ("block3", vec![1, 256 * e, 14, 14]),
                    ("block4", vec![1, 512 * e, 7, 7]),
                ]
            );
            let y = &f[3].1;
            let state = torchvision_state_dict(&vs, "encoder");
            let meta = torchvision_metadata(&state);
            write_safetensors(&dir.path().join(format!("{arch}.safetensors")), &state, &meta)
                .unwrap();
            let io = vec![
                ("input".to_string(), x.shallow_clone()),
                ("block4".to_string(), y.shallow_clone()),
            ];
            write_safetensors(
                &dir.path().join(format!("{arch}_io.safetensors")),
                &io,
                &BTreeMap::new(),
            )
            .unwrap();
        }
        let Some(python) = std::env::var_os("SELFSUP_PYTHON") else {
            eprintln!("skipping the torchvision load test: SELFSUP_PYTHON is not set");
            return;
        };
        let (ok, text) = crate::test_python::run_script(&python, PARITY_PY, dir.path());
        assert!(ok, "torchvision parity failed:\n{text}");
        assert_eq!(text.matches("strict load ok").count(), 2, "{text}");
    }
}
