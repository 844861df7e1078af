//! Batching for the bulk workers: when a batch closes (document count, byte
//! size, linger time, channel closed). Ops arrive in chunks (one wake-up of a
//! worker per chunk); a batch may close in the middle of one, and the rest
//! starts the next batch, so order is kept.

use std::time::Duration;

use tokio::sync::mpsc;

/// When a batch closes.
#[derive(Debug, Clone, Copy)]
pub(super) struct BatchLimits {
    pub(super) docs: usize,
    pub(super) bytes: usize,
    pub(super) linger: Duration,
}

pub(super) struct Batch<T> {
    pub(super) items: Vec<T>,
    pub(super) bytes: usize,
    /// The channel closed: this is the last batch.
    pub(super) closed: bool,
}

/// A worker's end of its channel: items arrive in chunks and are taken one
/// by one, so a batch can close in the middle of a chunk.
pub(super) struct Inbox<T> {
    rx: mpsc::UnboundedReceiver<Vec<T>>,
    carry: std::vec::IntoIter<T>,
}

impl<T> Inbox<T> {
    pub(super) fn new(rx: mpsc::UnboundedReceiver<Vec<T>>) -> Self {
        Inbox {
            rx,
            carry: Vec::new().into_iter(),
        }
    }

    /// The next item; `None` once the channel is closed and drained.
    /// Cancel-safe: an item is only taken when it is returned.
    async fn recv(&mut self) -> Option<T> {
        loop {
            if let Some(item) = self.carry.next() {
                return Some(item);
            }
            self.carry = self.rx.recv().await?.into_iter();
        }
    }

    /// Whether more items are waiting right now.
    fn has_queued(&self) -> bool {
        self.carry.len() > 0 || !self.rx.is_empty()
    }

    fn try_recv(&mut self) -> Result<T, mpsc::error::TryRecvError> {
        loop {
            if let Some(item) = self.carry.next() {
                return Ok(item);
            }
            self.carry = self.rx.try_recv()?.into_iter();
        }
    }
}

/// Wait for a first item, then gather more until the batch holds `docs`
/// items or `bytes` bytes, or `linger` has passed since the first one, or the
/// channel closes. `None`: closed and empty.
pub(super) async fn collect_batch<T>(
    rx: &mut Inbox<T>,
    size: impl Fn(&T) -> usize,
    limits: BatchLimits,
) -> Option<Batch<T>> {
    let first = rx.recv().await?;
    let mut batch = Batch {
        bytes: size(&first),
        items: {
            // With a backlog, sized for a full batch up front: growing a
            // vector of thousands of ops by doubling copied each batch
            // about twice over.
            let cap = if rx.has_queued() { limits.docs } else { 16 };
            let mut v = Vec::with_capacity(cap.min(limits.docs));
            v.push(first);
            v
        },
        closed: false,
    };
    let deadline = tokio::time::Instant::now() + limits.linger;
    while batch.items.len() < limits.docs && batch.bytes < limits.bytes {
        let next = match rx.try_recv() {
            Ok(item) => Some(item),
            Err(mpsc::error::TryRecvError::Disconnected) => None,
            Err(mpsc::error::TryRecvError::Empty) => {
                match tokio::time::timeout_at(deadline, rx.recv()).await {
                    Ok(item) => item,
                    Err(_) => break,
                }
            }
        };
        match next {
            Some(item) => {
                batch.bytes += size(&item);
                batch.items.push(item);
            }
            None => {
                batch.closed = true;
                break;
            }
        }
    }
    Some(batch)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(docs: usize, bytes: usize, linger_ms: u64) -> BatchLimits {
        BatchLimits {
            docs,
            bytes,
            linger: Duration::from_millis(linger_ms),
        }
    }

    #[tokio::test]
    async fn a_batch_closes_at_its_document_count() {
        let (tx, rx) = mpsc::unbounded_channel();
        let mut rx = Inbox::new(rx);
        for i in 0..10usize {
            tx.send(vec![i]).unwrap();
        }
        let b = collect_batch(&mut rx, |_| 1, limits(4, 1000, 10_000))
            .await
            .unwrap();
        assert_eq!(b.items, vec![0, 1, 2, 3]);
        assert!(!b.closed);
    }

    #[tokio::test]
    async fn a_batch_closes_once_it_reaches_its_byte_size() {
        let (tx, rx) = mpsc::unbounded_channel();
        let mut rx = Inbox::new(rx);
        for s in [300usize, 300, 300, 300] {
            tx.send(vec![s]).unwrap();
        }
        let b = collect_batch(&mut rx, |s| *s, limits(100, 800, 10_000))
            .await
            .unwrap();
        assert_eq!(b.items.len(), 3);
        assert_eq!(b.bytes, 900);
    }

    #[tokio::test]
    async fn a_batch_closes_after_the_linger_time_with_what_it_has() {
        let (tx, rx) = mpsc::unbounded_channel();
        let mut rx = Inbox::new(rx);
        tx.send(vec![1usize]).unwrap();
        let started = tokio::time::Instant::now();
        let b = collect_batch(&mut rx, |_| 1, limits(100, 1000, 25))
            .await
            .unwrap();
        assert_eq!(b.items, vec![1]);
        assert!(started.elapsed() >= Duration::from_millis(25));
        assert!(started.elapsed() < Duration::from_secs(5));
        drop(tx);
    }

    #[tokio::test]
    async fn a_closed_channel_ends_the_last_batch_and_then_the_worker() {
        let (tx, rx) = mpsc::unbounded_channel();
        let mut rx = Inbox::new(rx);
        tx.send(vec![1usize]).unwrap();
        tx.send(vec![2]).unwrap();
        drop(tx);
        let b = collect_batch(&mut rx, |_| 1, limits(100, 1000, 10_000))
            .await
            .unwrap();
        assert_eq!(b.items, vec![1, 2]);
        assert!(b.closed);
        assert!(
            collect_batch(&mut rx, |_| 1, limits(100, 1000, 10))
                .await
                .is_none()
        );
    }

    #[tokio::test]
    async fn a_batch_closing_inside_a_chunk_leaves_the_rest_for_the_next_in_order() {
        let (tx, rx) = mpsc::unbounded_channel();
        let mut rx = Inbox::new(rx);
        tx.send(vec![1usize, 2, 3, 4, 5]).unwrap();
        tx.send(vec![6, 7]).unwrap();
        drop(tx);
        let b = collect_batch(&mut rx, |_| 1, limits(3, 1000, 10_000))
            .await
            .unwrap();
        assert_eq!(b.items, vec![1, 2, 3]);
        let b = collect_batch(&mut rx, |_| 1, limits(3, 1000, 10_000))
            .await
            .unwrap();
        assert_eq!(b.items, vec![4, 5, 6]);
        let b = collect_batch(&mut rx, |_| 1, limits(3, 1000, 10_000))
            .await
            .unwrap();
        assert_eq!(b.items, vec![7]);
        assert!(b.closed);
    }
}
