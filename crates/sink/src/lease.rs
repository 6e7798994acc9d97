//! Whether this process may still write for its partitions: a process that did not run for a
//! while (SIGSTOP, a VM pause, a long stall of the whole machine) may have been expelled from
//! the group, its partitions given to another member that reconciled and is writing them. It
//! must not insert what it held before the pause.
//!
//! A watch thread ticks every [`TICK`]. A gap between two ticks of at least `stall` means the
//! process did not run: before anything else may see the lease as fresh again, the watch sets
//! the stall flag and bumps the assignment generation, so every batch read before the pause is
//! abandoned by the writer, which checks [`Lease::fresh`] and the generation before each insert
//! attempt and each chunk it sends. The poll loop then throws away what it read and
//! reconciles its partitions again (see [`crate::consumer`]).
//!
//! `stall` is half of what the member can miss before the broker expires it
//! (`session.timeout.ms` minus one `heartbeat.interval.ms`), so a pause the broker could have
//! noticed is always one the sink notices. A network cut from the broker (the process keeps
//! running) is librdkafka's to see: it reports the assignment lost once its own session times
//! out, and the sink abandons, not flushes, a lost assignment.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// How often the watch thread ticks.
pub const TICK: Duration = Duration::from_millis(50);

/// The lease, shared by the watch thread, the poll loop and the insert tasks.
#[derive(Debug)]
pub struct Lease {
    origin: Instant,
    /// Last tick, in ms since `origin`.
    alive: AtomicU64,
    stall: Duration,
    stalled: AtomicBool,
    generation: Arc<AtomicU64>,
    stop: AtomicBool,
}

impl Lease {
    /// A fresh lease whose stalls bump `generation`.
    pub fn new(stall: Duration, generation: Arc<AtomicU64>) -> Arc<Self> {
        Arc::new(Self {
            origin: Instant::now(),
            alive: AtomicU64::new(0),
            stall,
            stalled: AtomicBool::new(false),
            generation,
            stop: AtomicBool::new(false),
        })
    }

    /// `stall` for a consumer with these settings (see the module docs).
    pub fn stall_for(session_timeout_ms: u32, heartbeat_interval_ms: u32) -> Duration {
        let missable = session_timeout_ms.saturating_sub(heartbeat_interval_ms);
        Duration::from_millis(u64::from(missable / 2)).max(TICK * 4)
    }

    fn now(&self) -> u64 {
        self.origin.elapsed().as_millis() as u64
    }

    /// One tick: after a gap of at least `stall` marks the stall and bumps the generation
    /// first, then renews. Returns the gap when it was a stall.
    pub fn tick(&self) -> Option<Duration> {
        let now = self.now();
        let gap = Duration::from_millis(now.saturating_sub(self.alive.load(Ordering::SeqCst)));
        let stalled = gap >= self.stall;
        if stalled {
            self.stalled.store(true, Ordering::SeqCst);
            self.generation.fetch_add(1, Ordering::SeqCst);
        }
        self.alive.store(now, Ordering::SeqCst);
        stalled.then_some(gap)
    }

    /// Whether the process ran within the last `stall` (checked before every insert attempt).
    pub fn fresh(&self) -> bool {
        self.now().saturating_sub(self.alive.load(Ordering::SeqCst)) < self.stall.as_millis() as u64
    }

    /// Takes the stall flag (the poll loop, which then starts over from ClickHouse).
    pub fn take_stall(&self) -> bool {
        self.stalled.swap(false, Ordering::SeqCst)
    }

    /// Starts the watch thread; it ends when [`Lease::stop`] is called.
    pub fn watch(self: &Arc<Self>) -> std::io::Result<std::thread::JoinHandle<()>> {
        self.tick();
        let lease = self.clone();
        std::thread::Builder::new()
            .name("ess-sink-lease".into())
            .spawn(move || {
                while !lease.stop.load(Ordering::SeqCst) {
                    std::thread::sleep(TICK);
                    if let Some(gap) = lease.tick() {
                        metrics::counter!("ess_sink_stalls_total").increment(1);
                        tracing::warn!(
                            ?gap,
                            "the process did not run for {gap:?}: the group may have given its \
                             partitions away; abandoning what it read and reconciling again"
                        );
                    }
                }
            })
    }

    /// Ends the watch thread.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_gap_marks_a_stall_and_bumps_the_generation_before_renewing() {
        let generation = Arc::new(AtomicU64::new(1));
        let lease = Lease::new(Duration::from_millis(200), generation.clone());
        assert_eq!(lease.tick(), None, "first tick right after creation");
        assert!(lease.fresh());
        std::thread::sleep(Duration::from_millis(250));
        assert!(!lease.fresh(), "no tick for longer than the stall");
        assert!(lease.tick().is_some());
        assert_eq!(generation.load(Ordering::SeqCst), 2);
        assert!(lease.fresh());
        assert!(lease.take_stall());
        assert!(!lease.take_stall(), "taken once");
        assert_eq!(lease.tick(), None);
        assert_eq!(generation.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn the_stall_is_half_of_what_the_broker_tolerates() {
        assert_eq!(
            Lease::stall_for(10_000, 1_000),
            Duration::from_millis(4_500)
        );
        assert_eq!(Lease::stall_for(2_000, 500), Duration::from_millis(750));
        assert_eq!(Lease::stall_for(100, 90), TICK * 4);
    }
}
