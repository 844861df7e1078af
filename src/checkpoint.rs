//! The LSN watermark: what is durably in Elasticsearch.
//!
//! Keeps DESIGN invariant 1: a flush LSN is confirmed to the slot only when
//! every change of every transaction committed at or before it is acknowledged.
