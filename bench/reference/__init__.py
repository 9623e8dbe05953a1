"""PyTorch reference steps of selfsup's methods, one module a method, for `cargo xtask bench train`."""
