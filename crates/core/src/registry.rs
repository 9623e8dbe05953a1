//! The method registry. Each method crate exports `pub fn register(r: &mut Registry)`; the
//! binary calls them all in one place (as cargo's `builtin_exec` or clippy's `register_lints`).
//! Order of registration is the order of listings and tables.
use crate::method::{BuildContext, BuildFn, PretextMethod};
use crate::{CoreError, Result};
use tch::nn;

/// One registered method.
#[derive(Clone)]
pub struct MethodEntry {
    /// Registry name, e.g. `rotnet`.
    pub name: &'static str,
    /// One-line description with the paper.
    pub description: &'static str,
    /// The method's default config (a JSON object whose keys are the method's settings).
    pub default_config: fn() -> serde_json::Value,
    /// Builds the method.
    pub build: BuildFn,
}

impl std::fmt::Debug for MethodEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MethodEntry").field("name", &self.name).finish()
    }
}

/// Methods by name, in registration order.
#[derive(Debug, Default, Clone)]
pub struct Registry {
    entries: Vec<MethodEntry>,
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a method. Panics if the name is already taken: that is a programming error in the
    /// binary's registration list, caught by its tests.
    pub fn register(&mut self, entry: MethodEntry) {
        assert!(self.get(entry.name).is_err(), "method `{}` registered twice", entry.name);
        self.entries.push(entry);
    }

    /// All entries in registration order.
    pub fn entries(&self) -> &[MethodEntry] {
        &self.entries
    }

    /// Registered names in order.
    pub fn names(&self) -> Vec<&'static str> {
        self.entries.iter().map(|e| e.name).collect()
    }

    /// The entry called `name`, or an error listing the known names.
    pub fn get(&self, name: &str) -> Result<&MethodEntry> {
        self.entries.iter().find(|e| e.name == name).ok_or_else(|| CoreError::UnknownMethod {
            name: name.to_string(),
            known: if self.entries.is_empty() { "none".into() } else { self.names().join(", ") },
        })
    }

    /// Builds the method `name` on `root` with `config` (already merged over its defaults).
    pub fn build(
        &self,
        name: &str,
        root: &nn::Path,
        config: &serde_json::Value,
        ctx: &BuildContext,
    ) -> Result<Box<dyn PretextMethod>> {
        (self.get(name)?.build)(root, config, ctx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dummy_build(
        _: &nn::Path,
        _: &serde_json::Value,
        _: &BuildContext,
    ) -> Result<Box<dyn PretextMethod>> {
        Err(CoreError::Config("not buildable".into()))
    }

    #[test]
    fn unknown_name_lists_known_ones() {
        let mut r = Registry::new();
        for name in ["alpha", "beta"] {
            r.register(MethodEntry {
                name,
                description: "test",
                default_config: || serde_json::json!({}),
                build: dummy_build,
            });
        }
        assert_eq!(r.names(), vec!["alpha", "beta"]);
        let err = r.get("gamma").unwrap_err().to_string();
        assert_eq!(err, "unknown method `gamma` (known: alpha, beta)");
    }
}
