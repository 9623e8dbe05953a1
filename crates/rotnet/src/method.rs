//! The RotNet pretext method (Gidaris, Singh, Komodakis, "Unsupervised Representation Learning
//! by Predicting Image Rotations", ICLR 2018), after the official code
//! (gidariss/FeatureLearningRotNet, `algorithms/ClassificationModel.py`,
//! `architectures/NetworkInNetwork.py`).
//!
//! Each image of a batch is augmented once (random crop with padding and horizontal flip, as the
//! official CIFAR-10 loader does), then fed in every rotation of the set within the same batch;
//! the network predicts the rotation's index with a cross-entropy loss. The head is the
//! official NIN classifier: global average pooling of the encoder's last block and one linear
//! layer to the number of rotations (for AlexNet and ResNet encoders likewise on the pooled
//! last feature map).
use crate::config::RotNetConfig;
use crate::rotate::rotation_batch;
use crate::RotNetError;
use selfsup_core::encoders::{linear, try_build_encoder, Encoder, Linear, LinearBias};
use selfsup_core::method::classification_loss;
use selfsup_core::{BuildContext, PretextMethod, StepOutput};
use selfsup_data::{Batch, Op, Pipeline};
use tch::nn::{self, Module};
use tch::Tensor;

/// RotNet: an encoder plus a linear rotation classifier on its pooled last feature map.
#[derive(Debug)]
pub struct RotNet {
    encoder: Box<dyn Encoder>,
    head: Linear,
    cfg: RotNetConfig,
    image_size: i64,
}

impl RotNet {
    /// Builds the encoder on `root / "encoder"` and the head (`head.weight`, `head.bias`;
    /// bias zero-initialised as in the official `weight_initialization`) on `root / "head"`.
    pub fn new(
        root: &nn::Path,
        cfg: RotNetConfig,
        ctx: &BuildContext,
    ) -> Result<Self, RotNetError> {
        let channels = ctx.image_channels as usize;
        if cfg.mean.len() != channels || cfg.std.len() != channels {
            return Err(RotNetError::Config(format!(
                "mean has {} and std {} entries but the images have {channels} channels; \
                 set method_config.mean and method_config.std",
                cfg.mean.len(),
                cfg.std.len()
            )));
        }
        if let Some(s) = cfg.std.iter().find(|s| s.is_nan() || **s <= 0.0) {
            return Err(RotNetError::Config(format!("std entry {s} is not positive")));
        }
        let encoder = try_build_encoder(&(root / "encoder"), &ctx.encoder, ctx.image_channels)
            .map_err(|e| RotNetError::Encoder(Box::new(e)))?;
        // Official `NetworkInNetwork.weight_initialization`: `nn.Linear`'s default weights
        // (uniform in ±1/√fan_in), bias zeroed.
        let head = linear(
            root / "head",
            encoder.out_channels(),
            cfg.rotations.angles().len() as i64,
            LinearBias::Zero,
        );
        Ok(RotNet { encoder, head, cfg, image_size: ctx.image_size })
    }

    /// The config it was built with.
    pub fn config(&self) -> &RotNetConfig {
        &self.cfg
    }

    /// Rotation logits of already-rotated inputs.
    ///
    /// # Shapes
    /// `xs`: `(N, C, H, W)`; returns `(N, R)` with `R` the size of the rotation set.
    pub fn logits_t(&self, xs: &Tensor, train: bool) -> Tensor {
        let feats = nn::ModuleT::forward_t(&*self.encoder, xs, train);
        self.head.forward(&feats.mean_dim([2i64, 3].as_slice(), false, feats.kind()))
    }

    /// Inputs, labels and logits for one batch of (augmented, unrotated) images.
    ///
    /// # Shapes
    /// `images`: `(B, C, H, W)`; returns `(B·R, C, H, W)`, `(B·R,)` i64, `(B·R, R)`.
    pub fn forward_batch(
        &self,
        images: &Tensor,
        train: bool,
    ) -> Result<(Tensor, Tensor, Tensor), RotNetError> {
        let (inputs, labels) =
            rotation_batch(images, self.cfg.rotations.angles(), self.cfg.corner_fill)?;
        let logits = self.logits_t(&inputs, train);
        Ok((inputs, labels, logits))
    }

    /// The data pipeline of the single view: random crop with padding and horizontal flip (as
    /// configured), then normalisation with the configured mean and std.
    pub fn view_pipeline(&self) -> Pipeline {
        let mut ops = Vec::new();
        if self.cfg.crop_padding > 0 {
            ops.push(Op::RandomCrop {
                size: self.image_size as usize,
                padding: self.cfg.crop_padding,
            });
        }
        if self.cfg.horizontal_flip {
            ops.push(Op::HorizontalFlip { p: 0.5 });
        }
        ops.push(Op::Normalize { mean: self.cfg.mean.clone(), std: self.cfg.std.clone() });
        Pipeline { ops }
    }
}

impl PretextMethod for RotNet {
    fn name(&self) -> &str {
        "rotnet"
    }

    fn views(&self) -> Vec<Pipeline> {
        vec![self.view_pipeline()]
    }

    fn encoder(&self) -> &dyn Encoder {
        &*self.encoder
    }

    fn step(&mut self, batch: &Batch, train: bool) -> selfsup_core::Result<StepOutput> {
        let images = match batch.views.as_slice() {
            [x] => x,
            other => return Err(RotNetError::Views { got: other.len() }.into()),
        };
        let (inputs, labels, logits) = self.forward_batch(images, train)?;
        // Cross-entropy in f32 whatever the autocast kind of the logits.
        let (loss, acc) = classification_loss(&logits, &labels)?;
        Ok(StepOutput {
            loss,
            metrics: vec![("rotation_acc".to_string(), acc)],
            inputs: inputs.size()[0],
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::RotationSet;
    use selfsup_core::EncoderConfig;
    use tch::nn::OptimizerConfig;
    use tch::{Device, Kind};

    fn ctx(channels: i64) -> BuildContext {
        BuildContext {
            device: Device::Cpu,
            seed: 0,
            num_train_images: 16,
            image_channels: channels,
            image_size: 16,
            encoder: EncoderConfig::Tiny { width: 8, batch_norm: true },
            group: None,
        }
    }

    /// Images with an asymmetric structure (a bright bar along one edge plus a corner blob),
    /// randomly placed, so that rotations are distinguishable.
    fn structured_images(b: i64) -> Tensor {
        tch::manual_seed(3);
        let noise = Tensor::rand([b, 3, 16, 16], (Kind::Float, Device::Cpu)) * 0.3;
        let _ = noise.narrow(2, 0, 3).narrow(3, 2, 12).g_add_scalar_(1.0);
        let _ = noise.narrow(2, 10, 4).narrow(3, 10, 4).g_add_scalar_(-1.0);
        noise
    }

    #[test]
    fn builds_through_the_registry_with_named_variables() {
        let mut r = selfsup_core::Registry::new();
        crate::register(&mut r);
        let vs = nn::VarStore::new(Device::Cpu);
        let cfg = serde_json::json!({"rotations": "eight"});
        let m = r.build("rotnet", &vs.root(), &cfg, &ctx(3)).unwrap();
        assert_eq!(m.name(), "rotnet");
        let vars = vs.variables();
        assert_eq!(vars["head.weight"].size(), [8, 16]);
        assert!(vars.contains_key("encoder.conv1.weight"));
        assert_eq!(vars["head.bias"].abs().sum(Kind::Float).double_value(&[]), 0.0);
        let bad = serde_json::json!({"rotations": "four", "colour": true});
        let err = r.build("rotnet", &vs.root(), &bad, &ctx(3)).err().unwrap().to_string();
        assert!(err.contains("unknown field `colour`"), "{err}");
        let err = r.build("rotnet", &vs.root(), &serde_json::json!({}), &ctx(1));
        let err = err.err().unwrap().to_string();
        assert!(err.contains("images have 1 channels"), "{err}");
        let mut bad_encoder = ctx(3);
        bad_encoder.encoder = EncoderConfig::Nin { blocks: 2, width: 16 };
        let err = r.build("rotnet", &vs.root(), &serde_json::json!({}), &bad_encoder);
        assert!(err.err().unwrap().to_string().contains("blocks"));
    }

    #[test]
    fn views_follow_the_official_cifar_transform() {
        let vs = nn::VarStore::new(Device::Cpu);
        let m = RotNet::new(&vs.root(), RotNetConfig::default(), &ctx(3)).unwrap();
        let views = m.views();
        assert_eq!(views.len(), 1);
        assert_eq!(
            views[0].ops,
            vec![
                Op::RandomCrop { size: 16, padding: 4 },
                Op::HorizontalFlip { p: 0.5 },
                Op::Normalize {
                    mean: crate::config::CIFAR10_MEAN.to_vec(),
                    std: crate::config::CIFAR10_STD.to_vec()
                },
            ]
        );
    }

    #[test]
    fn step_reports_inputs_labels_and_accuracy() {
        let vs = nn::VarStore::new(Device::Cpu);
        let cfg = RotNetConfig::with_rotations(RotationSet::Two90And270);
        let mut m = RotNet::new(&vs.root(), cfg, &ctx(3)).unwrap();
        let batch = Batch {
            views: vec![structured_images(5)],
            labels: Tensor::full([5], -1, (Kind::Int64, Device::Cpu)),
            indices: Tensor::arange(5, (Kind::Int64, Device::Cpu)),
        };
        let out = m.step(&batch, false).unwrap();
        assert_eq!(out.inputs, 10);
        assert_eq!(out.loss.size(), Vec::<i64>::new());
        let (name, acc) = &out.metrics[0];
        assert_eq!(name, "rotation_acc");
        assert!((0.0..=1.0).contains(&acc.double_value(&[])));
        let two = Batch { views: vec![structured_images(2), structured_images(2)], ..batch };
        let err = m.step(&two, false).unwrap_err().to_string();
        assert!(err.contains("batch has 2 views"), "{err}");
    }

    #[test]
    fn loss_falls_on_a_fixed_batch_with_the_tiny_encoder() {
        tch::manual_seed(11);
        let vs = nn::VarStore::new(Device::Cpu);
        let mut m = RotNet::new(&vs.root(), RotNetConfig::default(), &ctx(3)).unwrap();
        let mut opt = nn::Sgd { momentum: 0.9, dampening: 0.0, wd: 5e-4, nesterov: true }
            .build(&vs, 0.1)
            .unwrap();
        let batch = Batch {
            views: vec![structured_images(8)],
            labels: Tensor::full([8], -1, (Kind::Int64, Device::Cpu)),
            indices: Tensor::arange(8, (Kind::Int64, Device::Cpu)),
        };
        let mut losses = Vec::new();
        for _ in 0..20 {
            let out = m.step(&batch, true).unwrap();
            losses.push(out.loss.double_value(&[]));
            opt.backward_step(&out.loss);
        }
        let first = losses[0];
        let last = *losses.last().unwrap();
        // Chance level for four classes is ln 4 = 1.386.
        assert!((first - 4f64.ln()).abs() < 0.3, "initial loss {first}");
        assert!(last < 0.6 * first, "losses {losses:?}");
        let rising = losses.windows(2).filter(|w| w[1] > w[0]).count();
        assert!(rising <= 3, "losses {losses:?}");
    }
}
