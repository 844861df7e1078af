//! Wiring: source → transform → sink with bounded channels, and shutdown.
//! Keeps DESIGN invariant 7 (bounded memory).
