//! The registry of every method this build knows, in table order: the one place methods are
//! registered (as cargo's `builtin_exec` or clippy's `register_lints`). The `selfsup` binary
//! (`train`, `methods`, `eval`) and the reproductions receive this registry; a new method crate
//! adds its `register` call here and nowhere else.
#![deny(missing_docs)]

use selfsup_core::Registry;

/// Every method, in table order: the pretext methods, then the supervised baseline.
pub fn registry() -> Registry {
    let mut r = Registry::new();
    selfsup_relative_patch::register(&mut r);
    selfsup_jigsaw::register(&mut r);
    selfsup_rotnet::register(&mut r);
    selfsup_simclr::register(&mut r);
    selfsup_moco::register(&mut r);
    selfsup_instance_discrimination::register(&mut r);
    selfsup_cpc::register(&mut r);
    selfsup_autoencoder::register(&mut r);
    selfsup_context_encoder::register(&mut r);
    selfsup_colorization::register(&mut r);
    selfsup_split_brain::register(&mut r);
    selfsup_supervised::register(&mut r);
    r
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_method_once_in_table_order() {
        let names = super::registry().names();
        assert_eq!(
            names,
            [
                "relative-patch",
                "jigsaw",
                "rotnet",
                "simclr",
                "moco",
                "instance-discrimination",
                "cpc",
                "autoencoder",
                "context-encoder",
                "colorization",
                "split-brain",
                "supervised"
            ]
        );
    }
}
