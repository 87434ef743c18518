//! Test-only support for Weir's sans-IO cores: a virtual clock that tests jump
//! instead of sleeping, and a seeded pseudo-random source for deterministic loss.
//!
//! The cores never read the time themselves; a test hands them `clock.now()`.

use std::time::{Duration, Instant};

/// A clock that only moves when told to.
#[derive(Debug, Clone)]
pub struct Clock {
    start: Instant,
    now: Instant,
}

impl Default for Clock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock {
    pub fn new() -> Self {
        let start = Instant::now();
        Clock { start, now: start }
    }

    pub fn now(&self) -> Instant {
        self.now
    }

    pub fn start(&self) -> Instant {
        self.start
    }

    /// Virtual time since the clock was made.
    pub fn elapsed(&self) -> Duration {
        self.now - self.start
    }

    pub fn advance(&mut self, by: Duration) {
        self.now += by;
    }

    /// Moves to `at`; never backwards.
    pub fn set(&mut self, at: Instant) {
        if at > self.now {
            self.now = at;
        }
    }
}

/// A small deterministic generator (xorshift64*) for loss and jitter decisions.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed.max(1))
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// True with probability `p` (0.0..=1.0).
    pub fn chance(&mut self, p: f64) -> bool {
        ((self.next_u64() >> 11) as f64 / (1u64 << 53) as f64) < p
    }

    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n.max(1) as u64) as usize
    }
}

pub mod corpus;
