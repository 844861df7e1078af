//! The streaming loop, in one room: source events in, transformed bulk
//! operations out to the sink, acknowledgements back into the checkpoint,
//! and the slot's confirmed LSN only ever moved past what Elasticsearch
//! has made durable (DESIGN invariant 1).
//!
//! - `pipeline`: the apply loop (events → transform step → sink → acks).
//! - `checkpoint`: pure bookkeeping of which transactions are durable.
//! - `transform_step`: one change → bulk ops, dead letters for rows the
//!   mapping refuses, re-reads for unchanged TOAST values.
//! - `dual_write`: while a re-index runs, every change goes to both indices.
//!
//! Rules this layer keeps:
//!
//! - The pipeline confirms only what the sink acknowledged: an op is
//!   registered with the checkpoint before it is handed over, and the
//!   confirmed LSN moves only when every op of every transaction up to it
//!   came back acknowledged (invariant 1). Its in-memory tests
//!   (`pipeline/tests.rs`) hold it to that.
//! - The sink is reached only through the [`crate::sink::Sink`] seam: the
//!   stream never calls Elasticsearch itself (Elasticsearch calls live in
//!   `sink/`), and it hands the sink `BulkOp`s and tags, never a source
//!   type.
//! - Every retry loop here uses [`crate::model::RetryPolicy`].

pub mod checkpoint;
pub mod dual_write;
pub mod nested;
pub mod pipeline;
pub mod transform_step;

/// The rules above, read off the code.
#[cfg(test)]
mod rules {
    use std::path::{Path, PathBuf};

    /// Every `.rs` file under `src/<dir>`, with its text.
    fn sources(dir: &str) -> Vec<(PathBuf, String)> {
        fn walk(p: &Path, out: &mut Vec<(PathBuf, String)>) {
            for e in std::fs::read_dir(p).expect("a source folder") {
                let path = e.expect("an entry").path();
                if path.is_dir() {
                    walk(&path, out);
                } else if path.extension().is_some_and(|x| x == "rs") {
                    let text = std::fs::read_to_string(&path).expect("a source file");
                    out.push((path, text));
                }
            }
        }
        let mut out = Vec::new();
        walk(
            &Path::new(env!("CARGO_MANIFEST_DIR")).join("src").join(dir),
            &mut out,
        );
        assert!(!out.is_empty(), "no sources under src/{dir}");
        out
    }

    /// Lines of code (not comments) of `text` that mention `needle`.
    fn code_mentions(text: &str, needle: &str) -> Vec<String> {
        text.lines()
            .filter(|l| !l.trim_start().starts_with("//") && l.contains(needle))
            .map(str::to_string)
            .collect()
    }

    #[test]
    fn the_stream_makes_no_elasticsearch_call_of_its_own() {
        for (path, text) in sources("stream") {
            // Spelled in two halves, so this test does not find itself.
            for needle in [concat!("elastic", "search::"), concat!("Elastic", "search")] {
                let hits = code_mentions(&text, needle);
                assert!(hits.is_empty(), "{}: {hits:?}", path.display());
            }
        }
    }

    #[test]
    fn the_sink_never_sees_source_or_stream_types() {
        for (path, text) in sources("sink") {
            for needle in ["crate::source", "crate::stream"] {
                let hits = code_mentions(&text, needle);
                assert!(hits.is_empty(), "{}: {hits:?}", path.display());
            }
        }
    }
}
