//! The three profiles of `selfsup reproduce rotnet`: `paper` (the published CIFAR-10 protocol of
//! Gidaris et al. 2018, official configs `CIFAR10_RotNet_NIN4blocks.py`,
//! `CIFAR10_supervised_NIN.py`, `CIFAR10_{MultLayer,Conv}Classifier_on_RotNet_NIN4blocks_*`),
//! `cpu` (the same protocol scaled to about half an hour on two CPU cores) and `smoke` (seconds;
//! checks the pipeline, not the accuracy).
use anyhow::{bail, Result};
use selfsup_core::schedule::ScheduleConfig;
use selfsup_core::EncoderConfig;
use selfsup_eval::features::Normalization;
use selfsup_eval::fewshot::FineTuneConfig;
use selfsup_eval::{LinearProbeConfig, NonLinearProbeConfig};
use selfsup_rotnet::RotationSet;
use serde::{Deserialize, Serialize};

/// Everything a profile fixes. Serialized into `results.json`; `--set key=value` overrides a
/// field (`--set epochs=2`, `--set mlp.epochs=5`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    /// `paper`, `cpu` or `smoke`.
    pub name: String,
    /// One line on what the profile is for.
    pub summary: String,
    /// The encoder of every RotNet pretraining and of the random baselines.
    pub encoder: EncoderConfig,
    /// The encoder of the supervised NIN and of the few-label table's NIN trained from scratch:
    /// the official `CIFAR10_supervised_NIN.py` has 3 blocks (`num_stages = 3`), the RotNet 4.
    pub supervised_encoder: EncoderConfig,
    /// Probe seeds of the headline probes (Table 1's non-linear probes, Table 2, Table 3's conv
    /// probes): each draws its own labeled subset and the probe's random choices, and the
    /// tables give mean ± standard deviation over them. The other probes use the first.
    pub probe_seeds: Vec<u64>,
    /// Pretraining seeds of the runs that decide a finding: Table 1's RotNet and Table 2's
    /// `four` and two-rotation sets train once per seed (weights, data order, augmentation),
    /// and every difference behind a finding is paired per pretraining seed and probe seed,
    /// so its spread covers both. The first seed's runs keep the plain names
    /// (`rotnet_four`, `sets_four`), the others add `_seed<s>`; the eight-rotation set, in no
    /// finding, trains at the first seed only.
    pub pretrain_seeds: Vec<u64>,
    /// Pretrain (and train the supervised baseline) on this many training images (a seeded
    /// subset); `None` is all.
    pub train_images: Option<usize>,
    /// RotNet pretraining epochs.
    pub epochs: u64,
    /// Epochs at which the rate is multiplied by 0.2.
    pub milestones: Vec<u64>,
    /// Table 2's rotation sets, in the paper's row order; `four` and both two-rotation sets
    /// decide a finding and are required. The cpu profile leaves out `eight` (in no finding,
    /// and at twice the inputs of `four` the dearest run of the table).
    pub rotation_sets: Vec<RotationSet>,
    /// The budget of Table 2's rotation-set pretrainings when it differs from Table 1's: then
    /// every set, `four` included, trains apart from the Table 1 run (runs `sets_<set>`).
    /// `None` (the paper): the sets train with `epochs` and `milestones`, and Table 2's `four`
    /// row is the Table 1 run (`rotnet_four`; the others are `rotnet_<set>`).
    pub rotation_sets_budget: Option<Budget>,
    /// Source images per step (each becomes one input per rotation).
    pub batch_size: usize,
    /// SGD base rate (momentum 0.9, Nesterov, weight decay 5e-4).
    pub lr: f64,
    /// Epochs of the supervised baseline.
    pub supervised_epochs: u64,
    /// Its rate milestones (×0.2).
    pub supervised_milestones: Vec<u64>,
    /// Labeled training images of the probes (a seeded subset of the training split); `None`
    /// is all.
    pub probe_train_images: Option<usize>,
    /// Test images scored (a seeded subset of the test split); `None` is all 10,000.
    pub test_images: Option<usize>,
    /// The non-linear (MultLayer, 3 fully connected layers) probe of RotNet Tables 1 and 2.
    pub mlp: NonLinearProbeConfig,
    /// The conv-block (`NIN_ConvBlock3`) probe of RotNet Table 3.
    pub conv: NonLinearProbeConfig,
    /// The linear probe per block.
    pub linear: LinearProbeConfig,
    /// The few-label table (RotNet §4.1 semi-supervised CIFAR-10, official configs
    /// `*_K20` .. `*_K1000`): labeled images per class, a stratified seeded draw from the whole
    /// training split (as the official `num_imgs_per_cat`); empty skips the table.
    pub few_labels: Vec<usize>,
    /// Probe seeds of the few-label table: each draws its own K images per class and the
    /// trainings' random choices; the frozen side runs on every pretraining seed's RotNet.
    pub few_label_seeds: Vec<u64>,
    /// Its frozen side: the conv-block probe on block 2 of the RotNet (official: 100 epochs of
    /// 50,000 samples whatever the budget, ×0.2 at 35, 70, 85).
    pub few_conv: NonLinearProbeConfig,
    /// Its supervised side: the NIN trained from scratch on the same labels, i.e. a random-init
    /// encoder fine-tuned end to end with a linear head on its pooled output (official: 200
    /// epochs of 50,000 samples, ×0.2 at 60, 120, 160).
    pub few_supervised: FineTuneConfig,
    /// Bit-for-bit CPU determinism (oneDNN off but for the convolutions, which run it
    /// on fixed pieces of the batch: `selfsup_core::encoders::conv::conv_det`).
    pub deterministic: bool,
    /// Channels-last memory format in training.
    pub channels_last: bool,
    /// The seed of every run and probe.
    pub seed: u64,
    /// Write a training-metrics line every this many steps.
    pub log_every: u64,
}

/// A pretraining length: epochs, and the epochs at which the rate is multiplied by 0.2.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Budget {
    /// Epochs.
    pub epochs: u64,
    /// Rate ×0.2 at each of these epochs.
    pub milestones: Vec<u64>,
}

/// SGD with Nesterov momentum 0.9 and weight decay 5e-4, as every official CIFAR-10 config.
pub fn official_sgd(lr: f64) -> selfsup_core::optim::OptimizerConfig {
    selfsup_core::optim::OptimizerConfig::Sgd {
        lr,
        momentum: 0.9,
        nesterov: true,
        weight_decay: 5e-4,
        exclude_bias_and_norm: false,
    }
}

/// Rate ×0.2 at each milestone.
pub fn steps(milestones: &[u64]) -> ScheduleConfig {
    ScheduleConfig::Steps { milestones: milestones.to_vec(), gamma: 0.2 }
}

/// `milestones` of a `total`-epoch schedule moved to one of `epochs` epochs (rounded, kept
/// strictly inside the run, duplicates dropped).
pub fn scale_milestones(milestones: &[u64], total: u64, epochs: u64) -> Vec<u64> {
    let mut out: Vec<u64> = milestones
        .iter()
        .map(|&m| ((m as f64 * epochs as f64 / total as f64).round() as u64).max(1))
        .filter(|&m| m < epochs)
        .collect();
    out.dedup();
    out
}

fn probes(
    epochs: usize,
    conv_width: i64,
    augment: bool,
) -> (NonLinearProbeConfig, NonLinearProbeConfig, LinearProbeConfig) {
    let norm = Some(Normalization::cifar10());
    let mut mlp = NonLinearProbeConfig::mlp_official();
    mlp.epochs = epochs;
    mlp.schedule = steps(&scale_milestones(&[20, 40, 45], 100, epochs as u64));
    mlp.augment = augment;
    mlp.normalization = norm.clone();
    // The official code reports the best test epoch; it is kept beside the last.
    mlp.eval_every_epoch = true;
    let conv = NonLinearProbeConfig {
        epochs,
        width: conv_width,
        augment,
        schedule: steps(&scale_milestones(&[35, 70, 85], 100, epochs as u64)),
        normalization: norm.clone(),
        eval_every_epoch: true,
        ..Default::default()
    };
    let linear = LinearProbeConfig {
        epochs,
        schedule: steps(&scale_milestones(&[35, 70, 85], 100, epochs as u64)),
        normalization: norm,
        ..Default::default()
    };
    (mlp, conv, linear)
}

/// The run of Table 1 (four rotations, `epochs` long), also probed for Table 3 and the
/// few-label table.
pub const TABLE1_RUN: &str = "rotnet_four";

/// Epochs of the cpu profile's few-label trainings (both sides; the NIN from scratch sees
/// twice the samples per epoch, as the official configs give it twice the epochs).
const FEW_EPOCHS: usize = 10;

/// Training-metrics interval of the paper and cpu profiles.
const LOG_EVERY: u64 = 10;

impl Profile {
    /// Table 1's pretraining length (`epochs`, `milestones`).
    pub fn blocks_budget(&self) -> Budget {
        Budget { epochs: self.epochs, milestones: self.milestones.clone() }
    }

    /// Table 2's pretraining length: `rotation_sets_budget`, or Table 1's.
    pub fn rotation_sets(&self) -> Budget {
        self.rotation_sets_budget.clone().unwrap_or_else(|| self.blocks_budget())
    }

    /// The name of run `base` at pretraining seed `seed`: `base` for the first of
    /// `pretrain_seeds`, `<base>_seed<seed>` for the others.
    pub fn seeded(&self, base: &str, seed: u64) -> String {
        if self.pretrain_seeds.first() == Some(&seed) {
            base.to_string()
        } else {
            format!("{base}_seed{seed}")
        }
    }

    /// Table 1's runs, one per pretraining seed: `(name, seed)`.
    pub fn table1_runs(&self) -> Vec<(String, u64)> {
        self.pretrain_seeds.iter().map(|&s| (self.seeded(TABLE1_RUN, s), s)).collect()
    }

    /// The runs behind Table 2's row for `set`, one per pretraining seed (the eight-rotation
    /// set, in no finding, at the first only): `rotnet_<set>` when the sets share Table 1's
    /// budget (so `four` is the Table 1 run `rotnet_four`), `sets_<set>` when they have their
    /// own.
    pub fn rotation_set_runs(&self, set: RotationSet) -> Vec<(String, u64)> {
        if !self.rotation_sets.contains(&set) {
            return Vec::new();
        }
        let base = match self.rotation_sets_budget {
            None => format!("rotnet_{}", set.name()),
            Some(_) => format!("sets_{}", set.name()),
        };
        let seeds = match set {
            RotationSet::Eight => &self.pretrain_seeds[..self.pretrain_seeds.len().min(1)],
            _ => &self.pretrain_seeds[..],
        };
        seeds.iter().map(|&s| (self.seeded(&base, s), s)).collect()
    }

    /// Table 2's runs other than Table 1's (all four sets' runs when they have a budget of
    /// their own), in the order of `RotationSet::ALL`, then of the pretraining seeds.
    pub fn other_set_runs(&self) -> Vec<(String, u64)> {
        let table1: Vec<String> = self.table1_runs().into_iter().map(|r| r.0).collect();
        RotationSet::ALL
            .into_iter()
            .flat_map(|set| self.rotation_set_runs(set))
            .filter(|(name, _)| !table1.contains(name))
            .collect()
    }

    /// The encoder config behind an encoder name of the probes: the supervised NIN and the
    /// few-label NIN from scratch (`supervised`, `scratch`) have `supervised_encoder`, every
    /// other (the RotNet runs, `random`, `random_legacy`) `encoder`.
    pub fn encoder_of(&self, name: &str) -> &EncoderConfig {
        match name {
            "supervised" | "scratch" => &self.supervised_encoder,
            _ => &self.encoder,
        }
    }

    /// Every training of the profile, in training order: Table 1's RotNets, Table 2's other
    /// runs, the supervised NIN.
    pub fn runs(&self) -> Vec<String> {
        let mut out: Vec<String> = self.table1_runs().into_iter().map(|r| r.0).collect();
        out.extend(self.other_set_runs().into_iter().map(|r| r.0));
        out.push("supervised".into());
        out
    }

    /// The profile called `name` with the `key=value` overrides of `sets` applied.
    pub fn resolve(name: &str, sets: &[String]) -> Result<Profile> {
        let base = Self::named(name)?;
        let p: Profile = crate::plans::apply_sets(base, sets)?;
        for set in [RotationSet::Four, RotationSet::Two0And180, RotationSet::Two90And270] {
            if !p.rotation_sets.contains(&set) {
                bail!(
                    "`rotation_sets` must include `{}`: Table 2's finding compares four \
                     rotations with both two-rotation sets",
                    set.name()
                );
            }
        }
        Ok(p)
    }

    /// The profile called `name`.
    pub fn named(name: &str) -> Result<Profile> {
        Ok(match name {
            "paper" => Self::paper(),
            "cpu" => Self::cpu(),
            "smoke" => Self::smoke(),
            other => bail!("unknown profile `{other}` (known: smoke, cpu, paper)"),
        })
    }

    /// The published protocol: NIN with 4 blocks of width 192, 200 epochs, SGD 0.1 Nesterov,
    /// weight decay 5e-4, ×0.2 at 60, 120, 160, batch 128, all of CIFAR-10; probes of 100
    /// epochs with the official schedules and augmentation.
    pub fn paper() -> Profile {
        let (mlp, conv, linear) = probes(100, 192, true);
        Profile {
            name: "paper".into(),
            summary: "the published CIFAR-10 protocol (a GPU job)".into(),
            encoder: EncoderConfig::Nin { blocks: 4, width: 192 },
            supervised_encoder: EncoderConfig::Nin { blocks: 3, width: 192 },
            probe_seeds: vec![0],
            pretrain_seeds: vec![0],
            train_images: None,
            epochs: 200,
            milestones: vec![60, 120, 160],
            rotation_sets: RotationSet::ALL.to_vec(),
            rotation_sets_budget: None,
            batch_size: 128,
            lr: 0.1,
            supervised_epochs: 200,
            supervised_milestones: vec![60, 120, 160],
            probe_train_images: None,
            test_images: None,
            few_labels: vec![20, 100, 400, 1000, 5000],
            few_label_seeds: vec![0],
            few_conv: NonLinearProbeConfig { epoch_size: Some(50_000), ..conv.clone() },
            few_supervised: FineTuneConfig {
                epochs: 200,
                epoch_size: Some(50_000),
                schedule: steps(&[60, 120, 160]),
                ..FineTuneConfig::default()
            },
            mlp,
            conv,
            linear,
            deterministic: true,
            channels_last: false,
            seed: 0,
            log_every: LOG_EVERY,
        }
    }

    /// The paper's protocol scaled to two CPU cores (about 45 minutes; the module docs of
    /// `rotnet` hold the measured figure): NIN-4 of width 16 on all 50,000 images, batch 64
    /// (the paper: 128; half the activations fit this machine's cache), Table 1's RotNet at
    /// pretraining seeds 0 and 1 and the supervised NIN 4 epochs with the paper's milestones
    /// scaled (×0.2 at 1, 2, 3), Table 2's four and two-rotation sets 1 epoch each at both
    /// pretraining seeds (eight rotations left out), probes 15 epochs on 10,000 labels without
    /// augmentation at probe seeds 0–2, the few-label table at 20 and 5,000 per class and
    /// probe seeds 0 and 1, the NIN from scratch seeing twice the frozen side's samples. fp32,
    /// oneDNN on. The module docs of `rotnet` hold the measurements behind the numbers.
    pub fn cpu() -> Profile {
        let epochs = 4;
        let sets_epochs = 1;
        let (mut mlp, mut conv, mut linear) = probes(15, 32, false);
        mlp.batch_size = 128;
        conv.batch_size = 128;
        linear.batch_size = 256;
        Profile {
            name: "cpu".into(),
            summary: "the paper's protocol scaled to 2 CPU cores, two pretraining seeds".into(),
            encoder: EncoderConfig::Nin { blocks: 4, width: 16 },
            supervised_encoder: EncoderConfig::Nin { blocks: 3, width: 16 },
            probe_seeds: vec![0, 1, 2],
            pretrain_seeds: vec![0, 1],
            train_images: None,
            epochs,
            milestones: scale_milestones(&[60, 120, 160], 200, epochs),
            rotation_sets: vec![
                RotationSet::Four,
                RotationSet::Two0And180,
                RotationSet::Two90And270,
            ],
            rotation_sets_budget: Some(Budget {
                epochs: sets_epochs,
                milestones: scale_milestones(&[60, 120, 160], 200, sets_epochs),
            }),
            batch_size: 64,
            lr: 0.1,
            supervised_epochs: epochs,
            supervised_milestones: scale_milestones(&[60, 120, 160], 200, epochs),
            probe_train_images: Some(10_000),
            test_images: None,
            few_labels: vec![20, 5000],
            few_label_seeds: vec![0, 1],
            few_conv: NonLinearProbeConfig {
                epochs: FEW_EPOCHS,
                epoch_size: Some(10_000),
                schedule: steps(&scale_milestones(&[35, 70, 85], 100, FEW_EPOCHS as u64)),
                ..conv.clone()
            },
            few_supervised: FineTuneConfig {
                epochs: FEW_EPOCHS,
                epoch_size: Some(20_000),
                schedule: steps(&scale_milestones(&[60, 120, 160], 200, FEW_EPOCHS as u64)),
                ..FineTuneConfig::default()
            },
            mlp,
            conv,
            linear,
            deterministic: false,
            channels_last: false,
            seed: 0,
            log_every: LOG_EVERY,
        }
    }

    /// Seconds: a width-8 NIN, 256 images, one epoch of everything.
    pub fn smoke() -> Profile {
        let (mut mlp, mut conv, mut linear) = probes(1, 8, false);
        mlp.batch_size = 64;
        conv.batch_size = 64;
        linear.batch_size = 64;
        Profile {
            name: "smoke".into(),
            summary: "pipeline check in seconds (numbers mean nothing)".into(),
            encoder: EncoderConfig::Nin { blocks: 4, width: 8 },
            supervised_encoder: EncoderConfig::Nin { blocks: 3, width: 8 },
            probe_seeds: vec![0, 1],
            pretrain_seeds: vec![0],
            train_images: Some(256),
            epochs: 1,
            milestones: vec![],
            rotation_sets: RotationSet::ALL.to_vec(),
            rotation_sets_budget: Some(Budget { epochs: 1, milestones: vec![] }),
            batch_size: 32,
            lr: 0.1,
            supervised_epochs: 1,
            supervised_milestones: vec![],
            probe_train_images: Some(256),
            test_images: Some(128),
            few_labels: vec![2],
            few_label_seeds: vec![0],
            few_conv: conv.clone(),
            few_supervised: FineTuneConfig {
                epochs: 1,
                batch_size: 16,
                schedule: steps(&[]),
                ..FineTuneConfig::default()
            },
            mlp,
            conv,
            linear,
            deterministic: false,
            channels_last: false,
            seed: 0,
            log_every: 1,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn milestones_scale_with_the_run() {
        assert_eq!(scale_milestones(&[60, 120, 160], 200, 200), vec![60, 120, 160]);
        assert_eq!(scale_milestones(&[60, 120, 160], 200, 10), vec![3, 6, 8]);
        assert_eq!(scale_milestones(&[60, 120, 160], 200, 4), vec![1, 2, 3]);
        assert_eq!(scale_milestones(&[60, 120, 160], 200, 1), Vec::<u64>::new());
        assert_eq!(scale_milestones(&[35, 70, 85], 100, 15), vec![5, 11, 13]);
    }

    #[test]
    fn rotation_sets_share_the_table1_run_only_without_a_budget_of_their_own() {
        let paper = Profile::paper();
        assert_eq!(paper.rotation_sets(), paper.blocks_budget());
        assert_eq!(paper.rotation_set_runs(RotationSet::Four), [(TABLE1_RUN.to_string(), 0)]);
        assert_eq!(
            paper.runs(),
            ["rotnet_four", "rotnet_eight", "rotnet_two_0_180", "rotnet_two_90_270", "supervised"]
        );
        // The cpu profile: two pretraining seeds, Table 2's sets with their own short budget,
        // without the eight-rotation set (in no finding).
        let cpu = Profile::cpu();
        let b = cpu.rotation_sets();
        assert!(b.epochs < cpu.epochs, "{b:?}");
        assert_eq!(cpu.pretrain_seeds, [0, 1]);
        assert!(cpu.rotation_set_runs(RotationSet::Eight).is_empty());
        assert_eq!(
            cpu.runs(),
            [
                "rotnet_four",
                "rotnet_four_seed1",
                "sets_four",
                "sets_four_seed1",
                "sets_two_0_180",
                "sets_two_0_180_seed1",
                "sets_two_90_270",
                "sets_two_90_270_seed1",
                "supervised"
            ]
        );
        // Other seeds name every run after its seed but the first.
        let other = Profile::resolve("cpu", &["pretrain_seeds=[2,3]".into()]).unwrap();
        assert_eq!(
            other.table1_runs(),
            [("rotnet_four".to_string(), 2), ("rotnet_four_seed3".to_string(), 3)]
        );
        // The eight-rotation set, when asked for, trains at the first seed only.
        let eight = Profile::resolve(
            "cpu",
            &[r#"rotation_sets=["four","eight","two_0_180","two_90_270"]"#.into()],
        )
        .unwrap();
        assert_eq!(eight.rotation_set_runs(RotationSet::Eight), [("sets_eight".to_string(), 0)]);
        let err = Profile::resolve("cpu", &[r#"rotation_sets=["four","eight"]"#.into()])
            .unwrap_err()
            .to_string();
        assert!(err.contains("two_0_180"), "{err}");
        let shared = Profile::resolve("cpu", &["rotation_sets_budget=null".into()]).unwrap();
        assert_eq!(shared.runs()[2], "rotnet_two_0_180");
        assert_eq!(shared.rotation_set_runs(RotationSet::Four), shared.table1_runs());
        let err = Profile::resolve("cpu", &["rotation_sets_budget.epoch=2".into()])
            .unwrap_err()
            .to_string();
        assert!(err.contains("epoch"), "{err}");
    }

    #[test]
    fn paper_profile_is_the_published_protocol() {
        let p = Profile::named("paper").unwrap();
        assert_eq!(p.encoder, EncoderConfig::Nin { blocks: 4, width: 192 });
        // The official supervised NIN has 3 blocks, the RotNet 4.
        assert_eq!(p.supervised_encoder, EncoderConfig::Nin { blocks: 3, width: 192 });
        assert_eq!(p.encoder_of("supervised"), &p.supervised_encoder);
        assert_eq!(p.encoder_of("scratch"), &p.supervised_encoder);
        assert_eq!(p.encoder_of("random_legacy"), &p.encoder);
        assert!(p.mlp.eval_every_epoch && p.conv.eval_every_epoch);
        assert!(Profile::cpu().probe_seeds.len() >= 3);
        assert_eq!((p.epochs, p.batch_size, p.lr), (200, 128, 0.1));
        assert_eq!(p.milestones, vec![60, 120, 160]);
        assert_eq!(p.train_images, None);
        assert_eq!(p.mlp.epochs, 100);
        assert_eq!(p.mlp.schedule, steps(&[20, 40, 45]));
        assert_eq!(p.conv.schedule, steps(&[35, 70, 85]));
        assert!(p.mlp.augment && p.conv.augment);
        assert_eq!(p.few_labels, vec![20, 100, 400, 1000, 5000]);
        assert_eq!(p.few_conv.epoch_size, Some(50_000));
        assert_eq!(p.few_conv.schedule, steps(&[35, 70, 85]));
        assert_eq!((p.few_supervised.epochs, p.few_supervised.epoch_size), (200, Some(50_000)));
        assert_eq!(p.few_supervised.schedule, steps(&[60, 120, 160]));
        assert!(Profile::named("gpu").is_err());
        let q = Profile::resolve("cpu", &["epochs=2".into(), "mlp.epochs=3".into()]).unwrap();
        assert_eq!((q.epochs, q.mlp.epochs), (2, 3));
        let err = Profile::resolve("cpu", &["epoch=2".into()]).unwrap_err().to_string();
        assert!(err.contains("epoch"), "{err}");
    }
}
