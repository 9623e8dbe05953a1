//! One entry point for the CLI (`selfsup eval --protocol linear|nonlinear|knn|fewshot --taps
//! all`): the protocol by name, its config from JSON (unknown fields rejected, missing ones at
//! their documented defaults), an optional tap override, and the run.
use crate::{
    fewshot, knn_probe, linear_probe, nonlinear_probe, EvalError, EvalReport, FewShotConfig,
    KnnConfig, LinearProbeConfig, NonLinearProbeConfig, Result,
};
use selfsup_core::Encoder;
use selfsup_data::ImageDataset;
use tch::nn;

/// An evaluation protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// Layer-wise linear probe ([`linear_probe`]).
    Linear,
    /// RotNet's non-linear probe ([`nonlinear_probe`]).
    Nonlinear,
    /// Weighted kNN ([`knn_probe`]).
    Knn,
    /// Few labels, frozen and fine-tuned ([`fewshot()`]).
    Fewshot,
}

impl Protocol {
    /// All protocols in table order.
    pub const ALL: [Protocol; 4] =
        [Protocol::Linear, Protocol::Nonlinear, Protocol::Knn, Protocol::Fewshot];

    /// The name used on the command line and in report file names.
    pub fn name(self) -> &'static str {
        match self {
            Protocol::Linear => "linear",
            Protocol::Nonlinear => "nonlinear",
            Protocol::Knn => "knn",
            Protocol::Fewshot => "fewshot",
        }
    }

    /// The protocol's default config as JSON.
    pub fn default_config(self) -> serde_json::Value {
        let v = match self {
            Protocol::Linear => serde_json::to_value(LinearProbeConfig::default()),
            Protocol::Nonlinear => serde_json::to_value(NonLinearProbeConfig::default()),
            Protocol::Knn => serde_json::to_value(KnnConfig::default()),
            Protocol::Fewshot => serde_json::to_value(FewShotConfig::default()),
        };
        v.expect("configs serialize")
    }
}

impl std::str::FromStr for Protocol {
    type Err = EvalError;

    fn from_str(s: &str) -> Result<Self> {
        Protocol::ALL.into_iter().find(|p| p.name() == s).ok_or_else(|| {
            EvalError::Config(format!(
                "unknown protocol `{s}` (known: linear, nonlinear, knn, fewshot)"
            ))
        })
    }
}

fn parse<T: serde::de::DeserializeOwned>(p: Protocol, v: &serde_json::Value) -> Result<T> {
    serde_json::from_value(v.clone())
        .map_err(|e| EvalError::Config(format!("{} protocol config: {e}", p.name())))
}

/// Runs `protocol` on `encoder` (its variables in `vs`, which also gives the device) with the
/// config `config` (a JSON object; `{}` for the defaults). `taps`, when given, replaces the
/// config's taps (for `fewshot`, its single `tap`: the first entry).
#[allow(clippy::too_many_arguments)]
pub fn run_protocol(
    protocol: Protocol,
    encoder: &dyn Encoder,
    vs: &nn::VarStore,
    train: &ImageDataset,
    test: &ImageDataset,
    config: &serde_json::Value,
    taps: Option<&[String]>,
    seed: u64,
) -> Result<EvalReport> {
    let device = vs.device();
    let taps = taps.map(|t| t.to_vec());
    match protocol {
        Protocol::Linear => {
            let mut c: LinearProbeConfig = parse(protocol, config)?;
            if let Some(t) = taps {
                c.taps = t;
            }
            linear_probe(encoder, device, train, test, &c, seed)
        }
        Protocol::Nonlinear => {
            let mut c: NonLinearProbeConfig = parse(protocol, config)?;
            if let Some(t) = taps {
                c.taps = t;
            }
            nonlinear_probe(encoder, device, train, test, &c, seed)
        }
        Protocol::Knn => {
            let mut c: KnnConfig = parse(protocol, config)?;
            if let Some(t) = taps {
                c.taps = t;
            }
            knn_probe(encoder, device, train, test, &c, seed)
        }
        Protocol::Fewshot => {
            let mut c: FewShotConfig = parse(protocol, config)?;
            if let Some(t) = taps.and_then(|t| t.into_iter().next()) {
                c.tap = if t == "all" { "last".into() } else { t };
            }
            fewshot(encoder, vs, train, test, &c, seed)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_default_configs_round_trip() {
        for p in Protocol::ALL {
            assert_eq!(p.name().parse::<Protocol>().unwrap(), p);
            let v = p.default_config();
            assert!(v.is_object(), "{v}");
        }
        let lin: LinearProbeConfig =
            parse(Protocol::Linear, &Protocol::Linear.default_config()).unwrap();
        assert_eq!(lin, LinearProbeConfig::default());
        let few: FewShotConfig =
            parse(Protocol::Fewshot, &Protocol::Fewshot.default_config()).unwrap();
        assert_eq!(few, FewShotConfig::default());
        let err = "svm".parse::<Protocol>().unwrap_err().to_string();
        assert!(err.contains("unknown protocol `svm`"), "{err}");
        let err = parse::<KnnConfig>(Protocol::Knn, &serde_json::json!({"kk": 1})).unwrap_err();
        assert!(err.to_string().contains("knn protocol config: unknown field `kk`"), "{err}");
    }
}
