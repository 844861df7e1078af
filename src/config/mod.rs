//! Configuration: `sluice.toml` and `mappings/*.toml` into validated, typed
//! config. Errors name the file, line and key (DESIGN invariant 8).
