//! The streaming loop, in one room: source events in, transformed bulk
//! operations out to the sink, acknowledgements back into the checkpoint,
//! and the slot's confirmed LSN only ever moved past what Elasticsearch
//! has made durable (DESIGN invariant 1).
//!
//! - `pipeline`: the apply loop (events → transform step → indexer → acks).
//! - `checkpoint`: pure bookkeeping of which transactions are durable.
//! - `transform_step`: one change → bulk ops, dead letters for rows the
//!   mapping refuses, re-reads for unchanged TOAST values.
//! - `dual_write`: while a re-index runs, every change goes to both indices.

pub mod checkpoint;
pub mod dual_write;
pub mod pipeline;
pub mod transform_step;
