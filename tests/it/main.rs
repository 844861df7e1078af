//! Integration tests against the real PostgreSQL and Elasticsearch started by
//! `./dev services up`. One test binary (one link step) with a module per area.

mod support;

mod foundation;
mod source;
mod source_manage;
mod source_restart;
