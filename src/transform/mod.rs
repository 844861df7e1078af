//! The transform layer: a pure function from a `Change` and a mapping to
//! bulk operations.
//!
//! It keeps DESIGN invariant 6: an unchanged TOAST value never becomes a null
//! or a placeholder in a document.

pub mod op;

pub use op::{BulkOp, OpAction, OpOrigin};
