//! A ring buffer of fixed capacity: the status page's history.
//!
//! Its memory is reserved once, at creation, and never grows: a push into a
//! full ring drops the oldest entry. The page's history is
//! [`HISTORY_SAMPLES`] samples of [`HISTORY_EVERY`] each (one hour), of
//! fixed-size `Copy` types, so the bound is `HISTORY_SAMPLES ×
//! size_of::<T>()` per ring whatever runs how long.

use std::collections::VecDeque;
use std::time::Duration;

/// Samples kept per chart: one hour at one sample per [`HISTORY_EVERY`].
pub const HISTORY_SAMPLES: usize = 360;
/// How often a history sample is taken.
pub const HISTORY_EVERY: Duration = Duration::from_secs(10);

#[derive(Debug, Clone)]
pub struct Ring<T> {
    items: VecDeque<T>,
    capacity: usize,
}

impl<T: Copy> Ring<T> {
    /// An empty ring holding at most `capacity` items (at least one).
    pub fn new(capacity: usize) -> Ring<T> {
        let capacity = capacity.max(1);
        Ring {
            items: VecDeque::with_capacity(capacity),
            capacity,
        }
    }

    /// Append `item`, dropping the oldest when full.
    pub fn push(&mut self, item: T) {
        if self.items.len() == self.capacity {
            self.items.pop_front();
        }
        self.items.push_back(item);
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Oldest first.
    pub fn iter(&self) -> impl Iterator<Item = &T> {
        self.items.iter()
    }

    pub fn last(&self) -> Option<&T> {
        self.items.back()
    }

    /// Bytes reserved for the items (what the bound is about).
    pub fn reserved_bytes(&self) -> usize {
        self.items.capacity() * std::mem::size_of::<T>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::app::ui::view::{Sample, TableSample};

    #[test]
    fn a_ring_never_grows_past_its_capacity_and_keeps_the_newest() {
        let mut r: Ring<Sample> = Ring::new(HISTORY_SAMPLES);
        let reserved = r.reserved_bytes();
        for i in 0..(HISTORY_SAMPLES * 10 + 7) {
            r.push(Sample {
                t: i as i64,
                ..Sample::default()
            });
            assert!(r.len() <= HISTORY_SAMPLES);
            assert_eq!(r.reserved_bytes(), reserved, "reallocated at push {i}");
        }
        assert_eq!(r.len(), HISTORY_SAMPLES);
        assert_eq!(r.iter().next().unwrap().t, (HISTORY_SAMPLES * 9 + 7) as i64);
        assert_eq!(r.last().unwrap().t, (HISTORY_SAMPLES * 10 + 6) as i64);
    }

    #[test]
    fn the_stated_memory_bound_holds() {
        // The bound docs/operations.md states: under 20 KiB for the
        // pipeline's history and under 4 KiB per table.
        let pipeline: Ring<Sample> = Ring::new(HISTORY_SAMPLES);
        let table: Ring<TableSample> = Ring::new(HISTORY_SAMPLES);
        assert!(std::mem::size_of::<Sample>() <= 48);
        assert!(
            pipeline.reserved_bytes() <= 20 * 1024,
            "{}",
            pipeline.reserved_bytes()
        );
        assert!(
            table.reserved_bytes() <= 4 * 1024,
            "{}",
            table.reserved_bytes()
        );
        assert_eq!(HISTORY_SAMPLES as u64 * HISTORY_EVERY.as_secs(), 3600);
    }
}
