//! A circuit breaker, so a dead partner is not hammered.
//!
//! Closed: calls go through; `threshold` failures in a row open it. Open: calls fail at once
//! until `cool_down` passes. Half-open: one probe goes through; its success closes the
//! breaker, its failure opens it again. Small enough to own rather than take a crate for: the
//! maintained tower and backon crates retry but do not break circuits.

use std::sync::Mutex;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Closed { failures: u32 },
    Open { until: Instant },
    HalfOpen { probe_started: Instant },
}

/// The breaker's state as a word, for metrics and tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    /// Calls go through.
    Closed,
    /// Calls are refused until the cool-down passes.
    Open,
    /// One probe is being let through.
    HalfOpen,
}

/// A circuit breaker for one partner.
#[derive(Debug)]
pub struct Breaker {
    state: Mutex<State>,
    threshold: u32,
    cool_down: Duration,
}

impl Breaker {
    /// Opens after `threshold` consecutive failures, for `cool_down`.
    pub fn new(threshold: u32, cool_down: Duration) -> Self {
        Self {
            state: Mutex::new(State::Closed { failures: 0 }),
            threshold: threshold.max(1),
            cool_down,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding this lock cannot leave the state half-written (it is Copy),
        // so a poisoned lock is still safe to use.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Whether a call may go out now.
    pub fn allow(&self) -> bool {
        self.allow_at(Instant::now())
    }

    fn allow_at(&self, now: Instant) -> bool {
        let mut state = self.lock();
        match *state {
            State::Closed { .. } => true,
            State::Open { until } if now >= until => {
                *state = State::HalfOpen { probe_started: now };
                true
            }
            State::Open { .. } => false,
            // A probe that never reported back (its caller gave up) does not wedge the breaker.
            State::HalfOpen { probe_started } if now >= probe_started + self.cool_down => {
                *state = State::HalfOpen { probe_started: now };
                true
            }
            State::HalfOpen { .. } => false,
        }
    }

    /// Records a successful call.
    pub fn success(&self) {
        *self.lock() = State::Closed { failures: 0 };
    }

    /// Records a failed call.
    pub fn failure(&self) {
        self.failure_at(Instant::now());
    }

    fn failure_at(&self, now: Instant) {
        let mut state = self.lock();
        *state = match *state {
            State::Closed { failures } if failures + 1 < self.threshold => State::Closed {
                failures: failures + 1,
            },
            _ => State::Open {
                until: now + self.cool_down,
            },
        };
    }

    /// The current state.
    pub fn state(&self) -> BreakerState {
        match *self.lock() {
            State::Closed { .. } => BreakerState::Closed,
            State::Open { .. } => BreakerState::Open,
            State::HalfOpen { .. } => BreakerState::HalfOpen,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn it_opens_after_the_threshold_and_refuses_until_the_cool_down() {
        let b = Breaker::new(3, Duration::from_secs(10));
        let t0 = Instant::now();
        b.failure_at(t0);
        b.failure_at(t0);
        assert!(b.allow_at(t0));
        b.failure_at(t0);
        assert_eq!(b.state(), BreakerState::Open);
        assert!(!b.allow_at(t0 + Duration::from_secs(9)));
        // After the cool-down one probe goes through, and only one.
        assert!(b.allow_at(t0 + Duration::from_secs(10)));
        assert_eq!(b.state(), BreakerState::HalfOpen);
        assert!(!b.allow_at(t0 + Duration::from_secs(11)));
    }

    #[test]
    fn a_successful_probe_closes_it_and_a_failed_one_reopens_it() {
        let b = Breaker::new(1, Duration::from_secs(5));
        let t0 = Instant::now();
        b.failure_at(t0);
        assert!(b.allow_at(t0 + Duration::from_secs(5)));
        b.failure_at(t0 + Duration::from_secs(5));
        assert_eq!(b.state(), BreakerState::Open);
        assert!(!b.allow_at(t0 + Duration::from_secs(6)));
        assert!(b.allow_at(t0 + Duration::from_secs(10)));
        b.success();
        assert_eq!(b.state(), BreakerState::Closed);
        assert!(b.allow_at(t0 + Duration::from_secs(10)));
    }

    #[test]
    fn a_success_resets_the_failure_count() {
        let b = Breaker::new(2, Duration::from_secs(5));
        b.failure();
        b.success();
        b.failure();
        assert_eq!(b.state(), BreakerState::Closed);
    }

    #[test]
    fn an_abandoned_probe_does_not_wedge_it() {
        let b = Breaker::new(1, Duration::from_secs(5));
        let t0 = Instant::now();
        b.failure_at(t0);
        assert!(b.allow_at(t0 + Duration::from_secs(5)));
        assert!(!b.allow_at(t0 + Duration::from_secs(6)));
        assert!(b.allow_at(t0 + Duration::from_secs(10)));
    }
}
