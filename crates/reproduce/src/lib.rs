//! Paper-table reproductions, run as `selfsup reproduce <plan> [--profile smoke|cpu|paper]`
//! (and by `cargo xtask reproduce <plan>`, which installs libtorch and builds the binary first).
//!
//! - [`engine`]: runs any plan (trainings, probes, report), skipping finished stages after
//!   checking their saved settings; it holds no method-specific control flow.
//! - [`plans`]: the plans, each a function from a profile to declarations: what to train,
//!   which encoders to probe with which protocols and seeds, and the tables and findings to
//!   print.
//! - [`cli`]: the command line.
//!
//! The code lives here rather than in xtask because it links libtorch, which xtask installs.
//! The methods come from the registry the caller passes (`selfsup_methods::registry()`, the
//! binary's), so a method registered there is known here.

pub mod cli;
pub mod engine;
pub mod plans;

use anyhow::Result;

/// Runs `selfsup reproduce <plan> [options]`; `args[0]` is the plan. `registry` holds the
/// methods the plan trains.
pub fn run(args: &[String], registry: &selfsup_core::Registry) -> Result<()> {
    let Some(name) = args.first() else {
        let names: Vec<&str> = plans::catalogue().iter().map(|e| e.name).collect();
        anyhow::bail!("{} (plans: {})", cli::usage("<plan>"), names.join(", "));
    };
    let entry = plans::find(name)?;
    let Some(args) = cli::parse_args(&args[1..], &cli::usage(name))? else {
        return Ok(());
    };
    let (profile, profile_why) = cli::choose_profile(&args);
    let device = selfsup_core::device::parse_device(&args.device)?;
    if !args.configs_only {
        cli::refuse_paper_on_cpu(&profile, &args.device, device)?;
    }
    let (data_dir, data_why) = cli::data_dir(args.data_dir.as_deref());
    let input = plans::PlanInput {
        name: name.clone(),
        profile,
        sets: args.sets.clone(),
        dataset: args.dataset.clone(),
        data_dir: data_dir.clone(),
        device: selfsup_core::device::device_name(device),
        registered: registry.names().iter().map(|n| n.to_string()).collect(),
    };
    let mut plan = (entry.build)(&input)?;
    plan.apply_train_sets(&args.train_sets)?;
    if args.configs_only {
        // What `cargo xtask gpu-check` trains a few epochs of, and what a user reads before a
        // long run: the plan and each training's run config, nothing trained.
        for path in engine::write_configs(&plan, &args.results_dir)? {
            println!("{}", path.display());
        }
        return Ok(());
    }
    let env = engine::Env {
        dataset: args.dataset,
        data_dir,
        data_why,
        device,
        profile_why,
        runs_dir: args.runs_dir,
        results_dir: args.results_dir,
        force: args.force,
        command: std::env::args().collect::<Vec<_>>().join(" "),
    };
    engine::run(&plan, &env, registry)
}
