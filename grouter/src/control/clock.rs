//! The hybrid logical clock of this node's config writes (Kulkarni et al., "Logical
//! Physical Clocks", 2014), without I/O: the caller passes the wall clock in.
//!
//! Owns: the next clock reading. Must never: go backwards, or stamp a write lower than a
//! clock this node has seen (so a write made after reading another site's value wins over
//! it, even when this node's wall clock is behind).

use std::sync::Arc;

use parking_lot::Mutex;

use crate::table::Hlc;

/// This node's clock.
#[derive(Debug)]
pub struct Clock {
    node: Arc<str>,
    last: Mutex<(u64, u32)>,
}

impl Clock {
    /// A clock for writes by `node`.
    pub fn new(node: &str) -> Clock {
        Clock {
            node: Arc::from(node),
            last: Mutex::new((0, 0)),
        }
    }

    /// The reading for a write now (`wall_ms`: Unix milliseconds).
    pub fn tick(&self, wall_ms: u64) -> Hlc {
        let mut last = self.last.lock();
        *last = if wall_ms > last.0 {
            (wall_ms, 0)
        } else if last.1 == u32::MAX {
            // The logical part ran out within one millisecond: borrow the next one.
            (last.0 + 1, 0)
        } else {
            (last.0, last.1 + 1)
        };
        Hlc {
            ms: last.0,
            counter: last.1,
            node: self.node.clone(),
        }
    }

    /// Take in a clock read from elsewhere (a merged value, a persisted write): later
    /// readings are above it.
    pub fn observe(&self, seen: &Hlc) {
        let mut last = self.last.lock();
        if (seen.ms, seen.counter) > *last {
            *last = (seen.ms, seen.counter);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readings_rise_with_a_stuck_or_lagging_wall_clock_and_after_what_was_seen() {
        let c = Clock::new("lon-1");
        let a = c.tick(100);
        let b = c.tick(100);
        let d = c.tick(90);
        assert!(a < b && b < d, "{a} {b} {d}");
        assert_eq!(d.ms, 100);
        c.observe(&Hlc {
            ms: 500,
            counter: 7,
            node: "nyc-1".into(),
        });
        let e = c.tick(200);
        assert_eq!((e.ms, e.counter, &*e.node), (500, 8, "lon-1"));
        assert_eq!(c.tick(600).counter, 0);
    }
}
