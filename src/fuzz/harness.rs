//! The bounded fuzz run inside the unit suite: each target gets its seeds
//! unchanged, then `SLUICE_FUZZ_CASES` (default: `DEFAULT_CASES`) mutated
//! or arbitrary inputs from proptest. A case fails if the target panics,
//! runs longer than `HANG`, or makes one allocation larger than its input
//! can justify; proptest then shrinks it to the fewest mutations and
//! prints it. `./dev fuzz` runs the same with a large case count.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use proptest::test_runner::{Config, TestCaseError, TestError, TestRunner};

use super::alloc::measure;
use super::mutate::inputs;
use super::seeds::seeds;

/// Cases per target in the default suite: ten targets in a few seconds each.
const DEFAULT_CASES: u32 = 3000;

/// One case taking this long is a hang (the slowest real one takes
/// milliseconds); the watchdog prints the input and aborts.
const HANG: Duration = Duration::from_secs(20);

/// The largest single allocation an input of `len` bytes may cause: the
/// fixed buffers (the replication connection reads into 128 KiB, a numeric
/// with weight 32767 prints 128 Ki digits) plus a generous factor of the
/// input. A length field claiming gigabytes exceeds it.
pub fn alloc_bound(len: usize) -> usize {
    (4 << 20) + 64 * len
}

/// The case running now and since when, for the watchdog.
type Current = Mutex<Option<(Instant, Vec<u8>)>>;

pub fn cases() -> u32 {
    std::env::var("SLUICE_FUZZ_CASES")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(DEFAULT_CASES)
}

/// Run one target: its seeds, then `cases()` generated inputs. Returns the
/// number of cases run.
pub fn run(name: &str, target: fn(&[u8])) -> u64 {
    let seeds = seeds(name);
    assert!(!seeds.is_empty(), "target {name} has no seeds");
    let current: Arc<Current> = Arc::new(Mutex::new(None));
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watchdog = {
        let (current, done, name) = (current.clone(), done.clone(), name.to_string());
        std::thread::spawn(move || {
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(200));
                if let Some((started, input)) = &*current.lock().unwrap()
                    && started.elapsed() > HANG
                {
                    eprintln!("fuzz target {name} hangs (> {HANG:?}) on input {input:02x?}");
                    std::process::abort();
                }
            }
        })
    };
    let one = |input: &[u8]| -> Result<(), TestCaseError> {
        // Cleared on unwind too: proptest catches a panicking case and
        // goes on shrinking, which the watchdog must not take for a hang.
        struct Clear<'a>(&'a Current);
        impl Drop for Clear<'_> {
            fn drop(&mut self) {
                *self.0.lock().unwrap_or_else(|e| e.into_inner()) = None;
            }
        }
        *current.lock().unwrap() = Some((Instant::now(), input.to_vec()));
        let _clear = Clear(&current);
        let peak = measure(input, target);
        if peak > alloc_bound(input.len()) {
            return Err(TestCaseError::fail(format!(
                "{name}: one allocation of {peak} bytes for a {}-byte input",
                input.len()
            )));
        }
        Ok(())
    };
    for s in &seeds {
        if let Err(e) = one(s) {
            panic!("seed of {name} fails: {e}");
        }
    }
    // With SLUICE_FUZZ_SECONDS (./dev fuzz without cargo-fuzz), batches of
    // `cases()` run until that much time has passed.
    let deadline = std::env::var("SLUICE_FUZZ_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .map(|s| Instant::now() + Duration::from_secs(s));
    let strategy = inputs(seeds.clone());
    let mut total = seeds.len() as u64;
    loop {
        let mut runner = TestRunner::new(Config {
            cases: cases(),
            failure_persistence: None,
            // Shrinking a found case is worth a while; it only runs on failure.
            max_shrink_iters: 4096,
            ..Config::default()
        });
        let result = runner.run(&strategy, |input| one(&input));
        total += cases() as u64;
        if result.is_err() {
            done.store(true, std::sync::atomic::Ordering::Relaxed);
        }
        match result {
            Ok(()) => {}
            Err(TestError::Fail(reason, input)) => {
                panic!("fuzz target {name} failed: {reason}\nminimal input: {input:02x?}")
            }
            Err(e) => panic!("fuzz target {name}: {e}"),
        }
        if deadline.is_none_or(|d| Instant::now() >= d) {
            break;
        }
    }
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    let _ = watchdog.join();
    // `./dev fuzz` reads this line for its table.
    eprintln!("fuzz target {name}: {total} cases, no failure");
    total
}

/// One test per target, named `fuzz_<target>` so `cargo test --lib fuzz_`
/// selects them all.
macro_rules! fuzz_tests {
    ($($name:ident),* $(,)?) => {
        $(
            #[test]
            fn $name() {
                let target = stringify!($name).strip_prefix("fuzz_").unwrap();
                let (_, f) = super::TARGETS
                    .iter()
                    .find(|(n, _)| *n == target)
                    .expect("a target of that name");
                run(target, *f);
            }
        )*
    };
}

fuzz_tests!(
    fuzz_pgoutput,
    fuzz_decoder,
    fuzz_text_value,
    fuzz_binary_value,
    fuzz_replication,
    fuzz_auth_scan,
    fuzz_copy_text,
    fuzz_bulk_response,
    fuzz_config_file,
    fuzz_mapping_file,
);

/// Every target has a test above (a new target without one fails here).
#[test]
fn fuzz_every_target_is_run() {
    let tested = [
        "pgoutput",
        "decoder",
        "text_value",
        "binary_value",
        "replication",
        "auth_scan",
        "copy_text",
        "bulk_response",
        "config_file",
        "mapping_file",
    ];
    let names: Vec<&str> = super::TARGETS.iter().map(|(n, _)| *n).collect();
    assert_eq!(names, tested);
}

/// Write the seeds as the libFuzzer corpus (`fuzz/corpus/<target>/`), which
/// `./dev fuzz` does before `cargo fuzz run`.
#[test]
#[ignore = "run by ./dev fuzz"]
fn fuzz_write_corpus() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus");
    for (name, _) in super::TARGETS {
        let dir = root.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        for (i, s) in seeds(name).iter().enumerate() {
            std::fs::write(dir.join(format!("seed-{i:03}")), s).unwrap();
        }
    }
}

/// The seeds are valid inputs (so mutations start deep in each parser, not
/// at its first error): each parses, decodes or loads without an error.
#[test]
fn fuzz_seeds_are_valid_inputs() {
    use super::*;
    for s in seeds("pgoutput") {
        crate::source::pgoutput::parse(&s).unwrap_or_else(|e| panic!("{e}: {s:02x?}"));
    }
    for (i, s) in seeds("decoder").iter().enumerate() {
        let mut d = Decoder::new(options(s[0]), catalog());
        let mut out = Vec::new();
        for m in frames(&s[1..]) {
            d.decode(m, &mut out)
                .unwrap_or_else(|e| panic!("decoder seed {i}: {e}"));
        }
        assert!(out.len() >= 3, "decoder seed {i} yields changes");
    }
    let types = value_types();
    for s in seeds("text_value") {
        let (_, conv) = &types[s[0] as usize];
        let text = std::str::from_utf8(&s[2..]).unwrap();
        convert(conv, text, &options(s[1])).unwrap_or_else(|e| panic!("{conv:?} {text}: {e}"));
    }
    for s in seeds("binary_value") {
        let (oid, conv) = &types[s[0] as usize];
        convert_binary(*oid, conv, &s[2..], &options(s[1]))
            .unwrap_or_else(|e| panic!("{oid} {conv:?}: {e}"));
    }
    let sessions = seeds("replication");
    for s in &sessions[..2] {
        assert!(replication_changes(s) >= 8, "the session streams changes");
    }
    for s in seeds("copy_text") {
        let mut out = Vec::new();
        let line = s[1..].split_inclusive(|&b| b == b'\n').next().unwrap();
        crate::snapshot::copy_text::parse_row(line, s[0] as usize, &mut out)
            .unwrap_or_else(|e| panic!("{e}: {s:02x?}"));
    }
    for s in seeds("bulk_response") {
        if s[0] > 0 {
            assert_eq!(
                crate::sink::bulk::parse_response(&s[1..]).unwrap().len(),
                s[0] as usize
            );
        }
    }
    for s in seeds("config_file") {
        let text = std::str::from_utf8(&s).unwrap();
        crate::config::parse_settings(Path::new("/etc/sluice/sluice.toml"), text, &FuzzEnv)
            .unwrap_or_else(|e| panic!("{e}\n{text}"));
    }
    for s in seeds("mapping_file") {
        let text = String::from_utf8(s).unwrap();
        let files: Vec<(&Path, &str)> = text
            .split('\0')
            .map(|t| {
                (
                    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/mappings/m.toml")),
                    t,
                )
            })
            .collect();
        crate::config::Mappings::from_texts(&files).unwrap_or_else(|e| panic!("{e}\n{text}"));
    }
}
