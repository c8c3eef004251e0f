//! Python `re` syntax to Rust regex syntax (placeholder).
