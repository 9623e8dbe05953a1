//! The job a process belongs to, read from the variables every launcher sets: `torchrun`'s
//! (`RANK`, `WORLD_SIZE`, `LOCAL_RANK`, `MASTER_ADDR`, `MASTER_PORT`), which Slurm and
//! Kubernetes launchers also set, and `selfsup launch`.
use crate::{DistError, Result};

/// One process's place in a data-parallel job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct World {
    /// This process's rank, `0..world_size` (`RANK`).
    pub rank: usize,
    /// Processes in the job (`WORLD_SIZE`).
    pub world_size: usize,
    /// Rank on this machine, which picks the GPU (`LOCAL_RANK`; `RANK` when unset).
    pub local_rank: usize,
    /// Host of rank 0's store (`MASTER_ADDR`).
    pub master_addr: String,
    /// Port of rank 0's store (`MASTER_PORT`).
    pub master_port: u16,
}

impl World {
    /// The job from this process's environment: `None` when `WORLD_SIZE` is unset (a plain
    /// single process); an error naming the variable when one is missing or malformed.
    pub fn from_env() -> Result<Option<World>> {
        Self::from_lookup(|k| std::env::var(k).ok())
    }

    /// [`World::from_env`] over any variable lookup (for tests and launchers).
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Option<World>> {
        let Some(world_size) = get("WORLD_SIZE") else {
            return Ok(None);
        };
        let number = |name: &str, v: &str| -> Result<usize> {
            v.trim().parse::<usize>().map_err(|_| {
                DistError::Env(format!("{name} = `{v}` is not a non-negative integer"))
            })
        };
        let world_size = number("WORLD_SIZE", &world_size)?;
        if world_size == 0 {
            return Err(DistError::Env("WORLD_SIZE = 0: a job has at least one process".into()));
        }
        let required = |name: &str| {
            get(name).ok_or_else(|| {
                DistError::Env(format!(
                    "WORLD_SIZE is set but {name} is not (a launcher sets both)"
                ))
            })
        };
        let rank = number("RANK", &required("RANK")?)?;
        if rank >= world_size {
            return Err(DistError::Env(format!(
                "RANK = {rank} is not below WORLD_SIZE = {world_size}"
            )));
        }
        let local_rank = match get("LOCAL_RANK") {
            Some(v) => number("LOCAL_RANK", &v)?,
            None => rank,
        };
        let master_addr = required("MASTER_ADDR")?;
        if master_addr.trim().is_empty() {
            return Err(DistError::Env("MASTER_ADDR is empty".into()));
        }
        let port = required("MASTER_PORT")?;
        let master_port = port.trim().parse::<u16>().ok().filter(|p| *p > 0).ok_or_else(|| {
            DistError::Env(format!("MASTER_PORT = `{port}` is not a port (1..65535)"))
        })?;
        Ok(Some(World { rank, world_size, local_rank, master_addr, master_port }))
    }

    /// The variables that describe this process to a child (what `selfsup launch` sets).
    pub fn vars(&self) -> Vec<(&'static str, String)> {
        vec![
            ("RANK", self.rank.to_string()),
            ("WORLD_SIZE", self.world_size.to_string()),
            ("LOCAL_RANK", self.local_rank.to_string()),
            ("LOCAL_WORLD_SIZE", self.world_size.to_string()),
            ("MASTER_ADDR", self.master_addr.clone()),
            ("MASTER_PORT", self.master_port.to_string()),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn world(vars: &[(&str, &str)]) -> Result<Option<World>> {
        let m: HashMap<String, String> =
            vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        World::from_lookup(|k| m.get(k).cloned())
    }

    const JOB: [(&str, &str); 5] = [
        ("RANK", "1"),
        ("WORLD_SIZE", "4"),
        ("LOCAL_RANK", "1"),
        ("MASTER_ADDR", "10.0.0.1"),
        ("MASTER_PORT", "29500"),
    ];

    #[test]
    fn no_world_size_is_a_single_process() {
        assert_eq!(world(&[("RANK", "3")]).unwrap(), None);
    }

    #[test]
    fn torchrun_s_variables_give_the_world_and_round_trip() {
        let w = world(&JOB).unwrap().unwrap();
        assert_eq!(
            w,
            World {
                rank: 1,
                world_size: 4,
                local_rank: 1,
                master_addr: "10.0.0.1".into(),
                master_port: 29500
            }
        );
        let vars: Vec<(String, String)> =
            w.vars().into_iter().map(|(k, v)| (k.to_string(), v)).collect();
        let back: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        assert_eq!(world(&back).unwrap().unwrap(), w);
    }

    #[test]
    fn bad_or_missing_variables_are_named() {
        let with = |k: &str, v: Option<&str>| {
            let mut vars: Vec<(&str, &str)> =
                JOB.iter().copied().filter(|(n, _)| *n != k).collect();
            if let Some(v) = v {
                vars.push((k, v));
            }
            world(&vars).unwrap_err().to_string()
        };
        assert!(with("RANK", None).contains("RANK is not"), "{}", with("RANK", None));
        assert!(with("RANK", Some("4")).contains("RANK = 4 is not below WORLD_SIZE = 4"));
        assert!(with("RANK", Some("x")).contains("RANK = `x`"));
        assert!(with("WORLD_SIZE", Some("0")).contains("WORLD_SIZE = 0"));
        assert!(with("MASTER_ADDR", None).contains("MASTER_ADDR is not"));
        assert!(with("MASTER_PORT", Some("70000")).contains("MASTER_PORT = `70000`"));
        assert!(with("MASTER_PORT", Some("0")).contains("MASTER_PORT = `0`"));
        assert!(with("LOCAL_RANK", Some("-1")).contains("LOCAL_RANK = `-1`"));
        // LOCAL_RANK defaults to RANK.
        let vars: Vec<(&str, &str)> =
            JOB.iter().copied().filter(|(n, _)| *n != "LOCAL_RANK").collect();
        assert_eq!(world(&vars).unwrap().unwrap().local_rank, 1);
    }
}
