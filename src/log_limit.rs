//! Logs about what peers send are limited, so that a flood of bad input cannot fill a disk
//! with log lines: at most a few lines a second pass, and the next line that passes says how
//! many were left out. The node program also passes chitchat's own log lines through one (it
//! logs a warning for every datagram it cannot read).

use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// Lets at most `per_second` events a second through.
#[derive(Debug)]
pub struct Limiter {
    per_second: u32,
    state: Mutex<Window>,
}

#[derive(Debug)]
struct Window {
    /// The start of the current one-second window.
    window: Option<Instant>,
    /// Events let through in it.
    passed: u32,
    /// Events left out since the last one let through.
    left_out: u64,
}

impl Limiter {
    /// A limiter letting `per_second` events a second through.
    pub const fn new(per_second: u32) -> Limiter {
        Limiter {
            per_second,
            state: Mutex::new(Window {
                window: None,
                passed: 0,
                left_out: 0,
            }),
        }
    }

    /// Whether an event at `now` may be logged: `Some(n)` with the `n` events left out since
    /// the last one that was, or `None` to leave it out.
    pub fn check(&self, now: Instant) -> Option<u64> {
        let mut s = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if s.window
            .is_none_or(|w| now.duration_since(w) >= Duration::from_secs(1))
        {
            s.window = Some(now);
            s.passed = 0;
        }
        if s.passed >= self.per_second {
            s.left_out += 1;
            return None;
        }
        s.passed += 1;
        Some(std::mem::take(&mut s.left_out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_few_a_second_pass_and_the_next_says_how_many_were_left_out() {
        let limiter = Limiter::new(3);
        let start = Instant::now();
        let passed: Vec<_> = (0..1000)
            .map(|i| limiter.check(start + Duration::from_micros(i)))
            .collect();
        assert_eq!(passed.iter().flatten().count(), 3);
        assert_eq!(passed[..3], [Some(0), Some(0), Some(0)]);
        let later = start + Duration::from_secs(1);
        assert_eq!(limiter.check(later), Some(997));
        assert_eq!(limiter.check(later), Some(0));
    }
}
