//! The unit-test binary's allocator: the system one, plus the largest
//! single allocation made on the current thread since `measure` started, so
//! the fuzz harness can check that no length field made a parser reserve
//! more than its input can back. An allocation past `ABORT_AT` while
//! measuring would be an out-of-memory abort anyway: it prints the input
//! first, so the crash can be reproduced.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::io::Write;

struct Tracking;

/// A single allocation this large while a fuzz case runs is a failure.
const ABORT_AT: usize = 512 << 20;

thread_local! {
    static PEAK: Cell<usize> = const { Cell::new(0) };
    static INPUT: Cell<(*const u8, usize)> = const { Cell::new((std::ptr::null(), 0)) };
}

fn note(size: usize) {
    let _ = PEAK.try_with(|p| {
        if size > p.get() {
            p.set(size);
        }
    });
    if size >= ABORT_AT {
        let _ = INPUT.try_with(|i| {
            let (ptr, len) = i.get();
            if ptr.is_null() {
                return;
            }
            // SAFETY: `measure` keeps the input borrowed while the pointer is set.
            let input = unsafe { std::slice::from_raw_parts(ptr, len) };
            report(size, input);
            std::process::abort();
        });
    }
}

/// Hex-dumps the input without allocating (we are inside the allocator).
fn report(size: usize, input: &[u8]) {
    let mut err = std::io::stderr();
    let _ = writeln!(
        err,
        "fuzz case tried to allocate {size} bytes; input (hex):"
    );
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for chunk in input.chunks(64) {
        let mut line = [0u8; 129];
        for (k, b) in chunk.iter().enumerate() {
            line[2 * k] = HEX[(b >> 4) as usize];
            line[2 * k + 1] = HEX[(b & 15) as usize];
        }
        line[2 * chunk.len()] = b'\n';
        let _ = err.write_all(&line[..2 * chunk.len() + 1]);
    }
}

unsafe impl GlobalAlloc for Tracking {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note(new_size);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Tracking = Tracking;

/// Run `f` on `input`; the largest single allocation it made.
pub fn measure(input: &[u8], f: impl FnOnce(&[u8])) -> usize {
    PEAK.with(|p| p.set(0));
    INPUT.with(|i| i.set((input.as_ptr(), input.len())));
    // Unset on unwind too: a panicking case must not leave a dangling pointer.
    struct Unset;
    impl Drop for Unset {
        fn drop(&mut self) {
            INPUT.with(|i| i.set((std::ptr::null(), 0)));
        }
    }
    let _unset = Unset;
    f(input);
    PEAK.with(|p| p.get())
}
