//! Device selection: `auto` (the first CUDA device when there is one, else the CPU), `cpu`, or
//! `cuda:N`.
use crate::{CoreError, Result};
use tch::Device;

/// Parses `auto`, `cpu`, `cuda` or `cuda:N` into a [`tch::Device`], checking that a CUDA device
/// exists.
pub fn parse_device(s: &str) -> Result<Device> {
    match s.trim() {
        "auto" => Ok(Device::cuda_if_available()),
        "cpu" => Ok(Device::Cpu),
        "cuda" => parse_device("cuda:0"),
        other => {
            let idx =
                other.strip_prefix("cuda:").and_then(|n| n.parse::<usize>().ok()).ok_or_else(
                    || CoreError::Device(format!("`{other}` is not one of auto, cpu, cuda:N")),
                )?;
            let count = tch::Cuda::device_count() as usize;
            if idx >= count {
                return Err(CoreError::Device(format!(
                    "`{other}` asked for, but {count} CUDA device(s) are visible"
                )));
            }
            Ok(Device::Cuda(idx))
        }
    }
}

/// The canonical string of a device: `cpu` or `cuda:N`.
pub fn device_name(d: Device) -> String {
    match d {
        Device::Cuda(i) => format!("cuda:{i}"),
        _ => "cpu".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_cpu_and_rejects_garbage() {
        assert_eq!(parse_device("cpu").unwrap(), Device::Cpu);
        let err = parse_device("gpu0").unwrap_err().to_string();
        assert!(err.contains("gpu0"), "{err}");
        if !tch::Cuda::is_available() {
            assert!(parse_device("cuda:0").unwrap_err().to_string().contains("cuda:0"));
            assert_eq!(parse_device("auto").unwrap(), Device::Cpu);
        }
    }
}
