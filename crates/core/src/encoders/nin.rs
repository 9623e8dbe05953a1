//! The Network-In-Network of RotNet (Gidaris et al., "Unsupervised Representation Learning by
//! Predicting Image Rotations", ICLR 2018), as `NetworkInNetwork` in the official code
//! (gidariss/FeatureLearningRotNet, `architectures/NetworkInNetwork.py`), without its global
//! average pooling and linear classifier (methods add their own heads).
//!
//! Every conv is a [`BasicBlock`]: conv (stride 1, padding `(k-1)/2`, no bias) + BatchNorm +
//! ReLU. With `w = width` (192 in the paper), `w2 = round(5w/6)` (160) and `w3 = round(w/2)`
//! (96):
//!
//! | tap | layers |
//! |---|---|
//! | `block1` | 5×5 in→w, 1×1 w→w2, 1×1 w2→w3, max-pool 3×3 stride 2 pad 1 |
//! | `block2` | 5×5 w3→w, 1×1 w→w, 1×1 w→w, avg-pool 3×3 stride 2 pad 1 |
//! | `block3`..`blockK` | 3×3 w→w, 1×1 w→w, 1×1 w→w |
//!
//! The official code has an option `use_avg_on_conv3` (an extra avg-pool after block 3 when
//! there are more than 3 blocks); every official RotNet CIFAR config sets it to `False`
//! (`config/CIFAR10_RotNet_NIN4blocks.py`, `CIFAR10_ConvClassifier_on_RotNet_NIN4blocks_*`),
//! so it is left out here. The avg-pool counts the zero padding, as PyTorch's default does.
//!
//! Initialisation follows the official `weight_initialization()`: conv weights normal with
//! std `sqrt(2 / n)`, `n = k·k·out_channels`; BN weight 1, bias 0. (The official repository
//! defines that method but never calls it, so its published runs used PyTorch's default init
//! of the day; its `NonLinearClassifier` does call the same init.)
//!
//! Variables: `block{s}.convb{j}.conv.weight` and `block{s}.convb{j}.bn.{weight, bias,
//! running_mean, running_var}` (`Block{s}_ConvB{j}` in the official code), `j` in 1..=3.
//!
//! Parameter counts at width 192 (3 input channels), computed with a Python replica of the
//! official class (`sum(p.numel() for p in m.parameters())`, classifier removed) and
//! checked by the tests: 3 blocks 1,003,712; 4 blocks 1,410,368; 5 blocks 1,817,024.
//!
//! # Shapes
//! For a `(N, 3, 32, 32)` input: `block1` `(N, w3, 16, 16)`, `block2` `(N, w, 8, 8)`,
//! `block3..blockK` `(N, w, 8, 8)`; in general `H/2` after block 1 and `H/4` after block 2
//! (with `ceil` rounding for odd sizes).
use super::{batch_norm2d, conv2d, push_tap, BatchNorm, Conv2d, Encoder};
use crate::{CoreError, Result};
use tch::{nn, nn::ModuleT, Tensor};

/// Default number of blocks (the RotNet CIFAR-10 model).
pub fn default_blocks() -> usize {
    4
}

/// Default width (the paper's 192).
pub fn default_width() -> i64 {
    192
}

/// Checks `blocks >= 3` and `width >= 2`; the error names the field.
pub fn check(blocks: usize, width: i64) -> Result<()> {
    if blocks < 3 {
        return Err(CoreError::Config(format!(
            "encoder.blocks must be at least 3 for nin, got {blocks}"
        )));
    }
    if width < 2 {
        return Err(CoreError::Config(format!(
            "encoder.width must be at least 2 for nin, got {width}"
        )));
    }
    Ok(())
}

/// The three channel counts `(w, w2, w3)` of block 1 for a width `w`: `(192, 160, 96)` scaled
/// by `w / 192` and rounded half up.
pub fn channels(width: i64) -> (i64, i64, i64) {
    (width, (width * 5 + 3) / 6, (width + 1) / 2)
}

/// The official `BasicBlock`: `k×k` conv (stride 1, padding `(k-1)/2`, no bias) + BatchNorm +
/// ReLU, with the official init. Also the piece of the `NIN_ConvBlock3` probe classifier.
///
/// # Shapes
/// `(N, c_in, H, W)` → `(N, c_out, H, W)` for odd `k`.
#[derive(Debug)]
pub struct BasicBlock {
    conv: Conv2d,
    bn: BatchNorm,
}

impl BasicBlock {
    /// Builds it on `p` (variables `conv.weight`, `bn.*`).
    pub fn new(p: &nn::Path, c_in: i64, c_out: i64, k: i64) -> Self {
        BasicBlock {
            conv: conv2d(p / "conv", c_in, c_out, k, 1, (k - 1) / 2),
            bn: batch_norm2d(p / "bn", c_out),
        }
    }
}

impl ModuleT for BasicBlock {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        self.bn.forward_relu_t(&xs.apply(&self.conv), train)
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Pool {
    None,
    Max,
    Avg,
}

#[derive(Debug)]
struct Stage {
    convs: Vec<BasicBlock>,
    pool: Pool,
}

impl Stage {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        let mut x = xs.shallow_clone();
        for c in &self.convs {
            x = c.forward_t(&x, train);
        }
        match self.pool {
            Pool::None => x,
            Pool::Max => crate::ops::max_pool2d(&x, 3, 2, 1),
            Pool::Avg => crate::ops::avg_pool2d(&x, 3, 2, 1, true),
        }
    }
}

/// The RotNet NIN encoder; see the module docs for the layers.
///
/// # Shapes
/// Input `(N, C_in, 32, 32)`: `block1` `(N, w3, 16, 16)`, `block2..blockK` `(N, w, 8, 8)`
/// (`w3 = 96`, `w = 192` by default).
#[derive(Debug)]
pub struct Nin {
    stages: Vec<Stage>,
    width: i64,
}

impl Nin {
    /// Builds a `blocks`-block NIN of width `width` on `p` for `in_channels`-channel images.
    pub fn new(p: &nn::Path, in_channels: i64, blocks: usize, width: i64) -> Result<Self> {
        check(blocks, width)?;
        let (w, w2, w3) = channels(width);
        let spec: [(i64, i64, i64); 3] = [(in_channels, w, 5), (w, w2, 1), (w2, w3, 1)];
        let mut stages = Vec::with_capacity(blocks);
        for s in 1..=blocks {
            let layers = match s {
                1 => spec,
                2 => [(w3, w, 5), (w, w, 1), (w, w, 1)],
                _ => [(w, w, 3), (w, w, 1), (w, w, 1)],
            };
            let bp = p / format!("block{s}");
            let convs = layers
                .iter()
                .enumerate()
                .map(|(j, &(ci, co, k))| {
                    BasicBlock::new(&(&bp / format!("convb{}", j + 1)), ci, co, k)
                })
                .collect();
            let pool = match s {
                1 => Pool::Max,
                2 => Pool::Avg,
                _ => Pool::None,
            };
            stages.push(Stage { convs, pool });
        }
        Ok(Nin { stages, width })
    }

    fn run(&self, xs: &Tensor, train: bool, stop: Option<&str>) -> Vec<(String, Tensor)> {
        let mut out = Vec::with_capacity(self.stages.len());
        let mut x = xs.shallow_clone();
        for (i, stage) in self.stages.iter().enumerate() {
            x = stage.forward_t(&x, train);
            if push_tap(&mut out, &format!("block{}", i + 1), &x, stop) {
                break;
            }
        }
        out
    }
}

impl ModuleT for Nin {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        self.stages.iter().fold(xs.shallow_clone(), |x, s| s.forward_t(&x, train))
    }
}

impl Encoder for Nin {
    fn tap_names(&self) -> Vec<String> {
        (1..=self.stages.len()).map(|s| format!("block{s}")).collect()
    }

    fn features_t(&self, xs: &Tensor, train: bool) -> Vec<(String, Tensor)> {
        self.run(xs, train, None)
    }

    fn features_upto_t(&self, xs: &Tensor, tap: &str, train: bool) -> Vec<(String, Tensor)> {
        self.run(xs, train, Some(tap))
    }

    fn out_channels(&self) -> i64 {
        self.width
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind};

    fn params(vs: &nn::VarStore) -> i64 {
        vs.trainable_variables().iter().map(|t| t.numel() as i64).sum()
    }

    #[test]
    fn taps_and_shapes_at_32px() {
        let x = Tensor::randn([2, 3, 32, 32], (Kind::Float, Device::Cpu));
        for blocks in [3usize, 4, 5] {
            let vs = nn::VarStore::new(Device::Cpu);
            let net = Nin::new(&vs.root(), 3, blocks, 192).unwrap();
            let names: Vec<String> = (1..=blocks).map(|b| format!("block{b}")).collect();
            assert_eq!(net.tap_names(), names);
            let f = tch::no_grad(|| net.features_t(&x, false));
            assert_eq!(f.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>(), names);
            assert_eq!(f[0].1.size(), [2, 96, 16, 16]);
            for (_, t) in &f[1..] {
                assert_eq!(t.size(), [2, 192, 8, 8]);
            }
            let last = tch::no_grad(|| net.forward_t(&x, false));
            assert_eq!(f.last().unwrap().1, last);
            let upto = tch::no_grad(|| net.features_upto_t(&x, "block2", false));
            assert_eq!(upto.len(), 2);
            assert_eq!(upto[1].1, f[1].1);
            assert_eq!(net.out_channels(), 192);
        }
    }

    #[test]
    fn official_parameter_counts() {
        // Counted with a Python replica of the official NetworkInNetwork (classifier removed).
        for (blocks, expected) in [(3, 1_003_712), (4, 1_410_368), (5, 1_817_024)] {
            let vs = nn::VarStore::new(Device::Cpu);
            Nin::new(&vs.root(), 3, blocks, 192).unwrap();
            assert_eq!(params(&vs), expected, "{blocks} blocks");
        }
    }

    #[test]
    fn width_scales_all_layers() {
        assert_eq!(channels(192), (192, 160, 96));
        assert_eq!(channels(96), (96, 80, 48));
        assert_eq!(channels(64), (64, 53, 32));
        let vs = nn::VarStore::new(Device::Cpu);
        let net = Nin::new(&(vs.root() / "encoder"), 1, 4, 96).unwrap();
        let v = vs.variables();
        assert_eq!(v["encoder.block1.convb1.conv.weight"].size(), [96, 1, 5, 5]);
        assert_eq!(v["encoder.block1.convb2.conv.weight"].size(), [80, 96, 1, 1]);
        assert_eq!(v["encoder.block1.convb3.bn.running_var"].size(), [48]);
        assert_eq!(v["encoder.block2.convb1.conv.weight"].size(), [96, 48, 5, 5]);
        assert_eq!(v["encoder.block4.convb1.conv.weight"].size(), [96, 96, 3, 3]);
        // 4 blocks × 3 convs × (conv weight + 4 BN tensors).
        assert_eq!(v.len(), 4 * 3 * 5);
        let x = Tensor::zeros([1, 1, 32, 32], (Kind::Float, Device::Cpu));
        let f = tch::no_grad(|| net.features_t(&x, false));
        assert_eq!(f[0].1.size(), [1, 48, 16, 16]);
        assert_eq!(f[3].1.size(), [1, 96, 8, 8]);
    }

    #[test]
    fn official_init() {
        tch::manual_seed(0);
        let vs = nn::VarStore::new(Device::Cpu);
        Nin::new(&vs.root(), 3, 3, 192).unwrap();
        let v = vs.variables();
        // normal(0, sqrt(2 / (k·k·out))): for the 1×1 192→192 conv, std = sqrt(2/192).
        let w = &v["block2.convb2.conv.weight"];
        let std = w.std(true).double_value(&[]);
        let want = (2.0f64 / 192.0).sqrt();
        assert!((std / want - 1.0).abs() < 0.02, "std {std} want {want}");
        assert!(w.mean(Kind::Float).double_value(&[]).abs() < 0.01 * want);
        // 5×5 conv of block 1: n = 25·192.
        let std = v["block1.convb1.conv.weight"].std(true).double_value(&[]);
        let want = (2.0f64 / (25.0 * 192.0)).sqrt();
        assert!((std / want - 1.0).abs() < 0.05, "std {std} want {want}");
        assert_eq!(v["block1.convb1.bn.weight"], Tensor::ones([192], (Kind::Float, Device::Cpu)));
        assert_eq!(v["block1.convb1.bn.bias"], Tensor::zeros([192], (Kind::Float, Device::Cpu)));
    }

    /// The official `NetworkInNetwork` (5 stages, `use_avg_on_conv3=False`, classifier block
    /// dropped), transcribed from gidariss/FeatureLearningRotNet with `//` for Python 3.
    const OFFICIAL_NIN_PY: &str = r#"
import sys, torch, torch.nn as nn
from safetensors.torch import load_file
class BasicBlock(nn.Module):
    def __init__(self, in_planes, out_planes, kernel_size):
        super().__init__()
        padding = (kernel_size - 1) // 2
        self.layers = nn.Sequential()
        self.layers.add_module('Conv', nn.Conv2d(in_planes, out_planes, kernel_size=kernel_size, stride=1, padding=padding, bias=False))
        self.layers.add_module('BatchNorm', nn.BatchNorm2d(out_planes))
        self.layers.add_module('ReLU', nn.ReLU(inplace=True))
    def forward(self, x):
        return self.layers(x)
class NetworkInNetwork(nn.Module):
    def __init__(self, num_stages, use_avg_on_conv3=False, num_inchannels=3):
        super().__init__()
        nChannels, nChannels2, nChannels3 = 192, 160, 96
        blocks = [nn.Sequential() for i in range(num_stages)]
        blocks[0].add_module('Block1_ConvB1', BasicBlock(num_inchannels, nChannels, 5))
        blocks[0].add_module('Block1_ConvB2', BasicBlock(nChannels, nChannels2, 1))
        blocks[0].add_module('Block1_ConvB3', BasicBlock(nChannels2, nChannels3, 1))
        blocks[0].add_module('Block1_MaxPool', nn.MaxPool2d(kernel_size=3, stride=2, padding=1))
        blocks[1].add_module('Block2_ConvB1', BasicBlock(nChannels3, nChannels, 5))
        blocks[1].add_module('Block2_ConvB2', BasicBlock(nChannels, nChannels, 1))
        blocks[1].add_module('Block2_ConvB3', BasicBlock(nChannels, nChannels, 1))
        blocks[1].add_module('Block2_AvgPool', nn.AvgPool2d(kernel_size=3, stride=2, padding=1))
        blocks[2].add_module('Block3_ConvB1', BasicBlock(nChannels, nChannels, 3))
        blocks[2].add_module('Block3_ConvB2', BasicBlock(nChannels, nChannels, 1))
        blocks[2].add_module('Block3_ConvB3', BasicBlock(nChannels, nChannels, 1))
        if num_stages > 3 and use_avg_on_conv3:
            blocks[2].add_module('Block3_AvgPool', nn.AvgPool2d(kernel_size=3, stride=2, padding=1))
        for s in range(3, num_stages):
            blocks[s].add_module('Block'+str(s+1)+'_ConvB1', BasicBlock(nChannels, nChannels, 3))
            blocks[s].add_module('Block'+str(s+1)+'_ConvB2', BasicBlock(nChannels, nChannels, 1))
            blocks[s].add_module('Block'+str(s+1)+'_ConvB3', BasicBlock(nChannels, nChannels, 1))
        self._feature_blocks = nn.ModuleList(blocks)
d = sys.argv[1]
m = NetworkInNetwork(5)
ours = load_file(f"{d}/nin.safetensors")
official = {}
for k, v in ours.items():
    s, j, layer, field = k.split(".")
    s, j = int(s[len("block"):]), int(j[len("convb"):])
    official[f"_feature_blocks.{s-1}.Block{s}_ConvB{j}.layers.{dict(conv='Conv', bn='BatchNorm')[layer]}.{field}"] = v
m.load_state_dict(official, strict=True)
m.eval()
io = load_file(f"{d}/nin_io.safetensors")
x = io["input"]
with torch.no_grad():
    for s, block in enumerate(m._feature_blocks):
        x = block(x)
        ref = io[f"block{s+1}"]
        diff = (x - ref).abs().max().item()
        print(f"block{s+1}: {tuple(x.shape)} max |official - selfsup| = {diff:.3e}")
        assert x.shape == ref.shape and diff < 1e-4, diff
print("official NIN parity ok")
"#;

    /// Our 5-block NIN against the official code on the same weights (needs
    /// `SELFSUP_PYTHON`, a Python with torch and safetensors; prints a skip note otherwise).
    #[test]
    fn matches_official_code() {
        use crate::export::{torchvision_state_dict, write_safetensors};
        let Some(python) = std::env::var_os("SELFSUP_PYTHON") else {
            eprintln!("skipping the official NIN comparison: SELFSUP_PYTHON is not set");
            return;
        };
        tch::manual_seed(3);
        let vs = nn::VarStore::new(Device::Cpu);
        let net = Nin::new(&vs.root(), 3, 5, 192).unwrap();
        // Non-default BN statistics so eval-mode BN is compared too.
        tch::no_grad(|| {
            for (name, t) in vs.variables() {
                let n = t.size()[0];
                let opts = (Kind::Float, Device::Cpu);
                if name.ends_with("running_var") || name.ends_with("bn.weight") {
                    t.shallow_clone().copy_(&(Tensor::rand([n], opts) + 0.5));
                } else if name.ends_with("running_mean") || name.ends_with("bn.bias") {
                    t.shallow_clone().copy_(&(Tensor::randn([n], opts) * 0.1));
                }
            }
        });
        let x = Tensor::randn([2, 3, 32, 32], (Kind::Float, Device::Cpu));
        let mut io = tch::no_grad(|| net.features_t(&x, false));
        io.push(("input".into(), x));
        let dir = tempfile::tempdir().unwrap();
        let meta = Default::default();
        // Includes `num_batches_tracked`, which the official BatchNorm2d has as well.
        let state = torchvision_state_dict(&vs, "");
        write_safetensors(&dir.path().join("nin.safetensors"), &state, &meta).unwrap();
        write_safetensors(&dir.path().join("nin_io.safetensors"), &io, &meta).unwrap();
        let (ok, text) = crate::test_python::run_script(&python, OFFICIAL_NIN_PY, dir.path());
        assert!(ok && text.contains("official NIN parity ok"), "{text}");
    }
}
