//! The byte budget: how many bytes of request bodies the server holds at once
//! (`ingest.max_buffered_bytes`), over all requests.
//!
//! A request takes its share before it reads its body (the declared `Content-Length`), grows
//! it as a chunked body arrives, as a compressed body is decompressed and by
//! [`ess_core::config::BYTES_PER_EVENT`] per parsed event, and gives it back when it is
//! answered. A request whose share does not fit gets 503 `overloaded`.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Bytes held by all requests, and the most there may be.
#[derive(Debug)]
pub struct Budget {
    limit: usize,
    used: AtomicUsize,
}

/// One request's share of the budget; given back on drop.
#[derive(Debug)]
pub struct Held {
    budget: Arc<Budget>,
    bytes: usize,
}

impl Budget {
    /// A budget of `limit` bytes.
    pub fn new(limit: usize) -> Arc<Self> {
        Arc::new(Self {
            limit,
            used: AtomicUsize::new(0),
        })
    }

    /// Bytes held right now.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    /// Takes `bytes`, or `None` when they do not fit.
    pub fn hold(self: &Arc<Self>, bytes: usize) -> Option<Held> {
        self.take(bytes).then(|| Held {
            budget: Arc::clone(self),
            bytes,
        })
    }

    fn take(&self, bytes: usize) -> bool {
        let mut used = self.used.load(Ordering::Relaxed);
        loop {
            let Some(next) = used.checked_add(bytes).filter(|n| *n <= self.limit) else {
                return false;
            };
            match self
                .used
                .compare_exchange_weak(used, next, Ordering::AcqRel, Ordering::Relaxed)
            {
                Ok(_) => return true,
                Err(now) => used = now,
            }
        }
    }
}

impl Held {
    /// Takes `more` bytes on top; `false` (and nothing taken) when they do not fit.
    pub fn grow(&mut self, more: usize) -> bool {
        if !self.budget.take(more) {
            return false;
        }
        self.bytes += more;
        true
    }

    /// Bytes this share holds.
    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.budget.used.fetch_sub(self.bytes, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_fit_within_the_limit_and_come_back_on_drop() {
        let budget = Budget::new(100);
        let mut a = budget.hold(60).expect("fits");
        assert!(budget.hold(41).is_none());
        let b = budget.hold(40).expect("fits exactly");
        assert_eq!(budget.used(), 100);
        assert!(!a.grow(1));
        assert_eq!((a.bytes(), budget.used()), (60, 100));
        drop(b);
        assert!(a.grow(40));
        assert_eq!((a.bytes(), budget.used()), (100, 100));
        drop(a);
        assert_eq!(budget.used(), 0);
        assert!(budget.hold(usize::MAX).is_none());
        assert_eq!(budget.used(), 0);
    }

    #[test]
    fn concurrent_shares_never_exceed_the_limit() {
        let budget = Budget::new(1000);
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let budget = Arc::clone(&budget);
                std::thread::spawn(move || {
                    for _ in 0..10_000 {
                        if let Some(mut held) = budget.hold(300) {
                            assert!(budget.used() <= 1000);
                            let _ = held.grow(200);
                            assert!(budget.used() <= 1000);
                        }
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().expect("thread");
        }
        assert_eq!(budget.used(), 0);
    }
}
