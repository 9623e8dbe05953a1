//! The plan `CONTRIBUTING.md` shows for a new method, built through the public API and run end
//! to end on synthetic data: one training, the trained and a random-init encoder, a linear
//! probe of every tap at two probe seeds, a table and a finding. Keep the two in step.
use selfsup_core::config::{DataConfig, RunConfig, TrainConfig};
use selfsup_core::EncoderConfig;
use selfsup_data::Split;
use selfsup_eval::LinearProbeConfig;
use selfsup_reproduce::engine::report::{num_col, text_col};
use selfsup_reproduce::engine::scores::at;
use selfsup_reproduce::engine::{
    self, Cell, EncoderSpec, Finding, Labeled, Plan, ProbeSpec, Protocol, Report, Section, Source,
    Table, Test, Training,
};
use selfsup_reproduce::plans::PlanInput;

/// The plan: pretrain `input.name` (here `rotnet`) briefly, then probe every block of the
/// trained and a random-init NIN with a linear classifier at probe seeds 0 and 1.
fn plan(input: &PlanInput) -> anyhow::Result<Plan> {
    let encoder = EncoderConfig::Nin { blocks: 3, width: 8 };
    let taps = ["block1", "block2", "block3"];
    let config = RunConfig {
        method: input.name.clone(),
        device: input.device.clone(),
        data: DataConfig {
            dataset: input.dataset.clone(),
            split: Split::Train,
            data_dir: Some(input.data_dir.clone()),
            max_images: Some(64),
        },
        encoder: encoder.clone(),
        train: TrainConfig { epochs: 1, batch_size: 16, ..TrainConfig::default() },
        ..RunConfig::default()
    };
    let linear = LinearProbeConfig { epochs: 1, batch_size: 16, ..LinearProbeConfig::default() };
    let encoders = vec![
        EncoderSpec {
            name: "trained".into(),
            config: encoder.clone(),
            source: Source::Encoder { run: "pretrain".into() },
        },
        EncoderSpec {
            name: "random".into(),
            config: encoder.clone(),
            source: Source::Random { seed: 0, pytorch_legacy: false },
        },
    ];
    let probes = ["trained", "random"]
        .map(|enc| ProbeSpec {
            encoder: enc.into(),
            name: "linear".into(),
            protocol: Protocol::Linear(linear.clone()),
            seeds: vec![0, 1],
            labeled: Labeled::Subset { images: Some(64) },
        })
        .to_vec();
    let table = Table {
        key: "per_tap".into(),
        columns: vec![
            text_col("Tap", "tap"),
            num_col("Trained", "trained"),
            num_col("Random init", "random"),
            num_col("Trained − random", "gain"),
        ],
        rows: taps
            .iter()
            .map(|t| {
                let (ours, random) = (at("trained", "linear", t), at("random", "linear", t));
                vec![
                    Cell::Text(t.to_string()),
                    Cell::Spread(vec![ours.clone()]),
                    Cell::Spread(vec![random.clone()]),
                    Cell::PairedDiff(vec![(ours, random)]),
                ]
            })
            .collect(),
    };
    let finding = Finding {
        claim: "Pretraining ahead of random init at every tap (linear probe)".into(),
        paper: "yes".into(),
        test: Test::AllAhead(
            taps.iter()
                .map(|t| {
                    (t.to_string(), vec![(at("trained", "linear", t), at("random", "linear", t))])
                })
                .collect(),
        ),
    };
    Ok(Plan {
        name: input.name.clone(),
        profile: input.profile.clone(),
        summary: "a linear probe per tap".into(),
        settings: serde_json::json!({"encoder": encoder}),
        deterministic: true,
        test_images: Some(32),
        seed: 0,
        trainings: vec![Training {
            name: "pretrain".into(),
            config,
            headline_metric: None,
            optional: false,
        }],
        encoders,
        probes,
        report: Report {
            title: format!("{} on {}", input.name, input.dataset),
            sections: vec![
                Section::Text("Linear probe per tap, mean ± std over probe seeds 0, 1.".into()),
                Section::Table(table),
                Section::Findings(vec![finding]),
            ],
        },
        charts: Vec::new(),
        probe_commands: "The probes: `selfsup eval --protocol linear`.".into(),
        scatters: Vec::new(),
        artifacts: Vec::new(),
    })
}

#[test]
fn a_new_plan_runs_through_the_engine() {
    let dir = tempfile::tempdir().unwrap();
    let input = PlanInput {
        name: "rotnet".into(),
        profile: "example".into(),
        sets: Vec::new(),
        dataset: "synthetic:96:32".into(),
        data_dir: "datasets".into(),
        device: "cpu".into(),
        registered: Vec::new(),
    };
    let plan = plan(&input).unwrap();
    let env = engine::Env {
        dataset: input.dataset.clone(),
        data_dir: input.data_dir.clone(),
        data_why: "test".into(),
        device: tch::Device::Cpu,
        profile_why: "test".into(),
        runs_dir: dir.path().join("runs"),
        results_dir: dir.path().join("results"),
        force: false,
        command: "test".into(),
    };
    engine::run(&plan, &env, &selfsup_methods::registry()).unwrap();
    let md = std::fs::read_to_string(dir.path().join("results/rotnet/example/table.md")).unwrap();
    assert!(md.starts_with("# rotnet on synthetic:96:32\n"), "{md}");
    assert!(
        md.contains(
            "| Tap | Trained | Random init | Trained − random |\n|---|---:|---:|---:|\n| block1 | "
        ),
        "{md}"
    );
    assert!(
        md.contains("- Pretraining ahead of random init at every tap (linear probe): **"),
        "{md}"
    );

    // A plan citing a probe it does not define is refused before anything runs.
    let mut broken = plan.clone();
    broken.probes.pop();
    let err = engine::run(&broken, &env, &selfsup_methods::registry()).unwrap_err().to_string();
    assert!(err.contains("probe `linear` of `random`, which the plan lacks"), "{err}");
    // So is a training with a method the registry lacks.
    let mut unknown = plan;
    unknown.trainings[0].config.method = "byol".into();
    let err = engine::run(&unknown, &env, &selfsup_methods::registry()).unwrap_err().to_string();
    assert!(err.contains("method `byol`, which this build does not register"), "{err}");
}
