//! A ring buffer of fixed capacity: the oldest item goes when a new one arrives at capacity.
//! Pure; allocates its whole capacity once.

use std::collections::VecDeque;

/// At most `capacity` items, oldest first.
#[derive(Debug, Clone)]
pub struct Ring<T> {
    items: VecDeque<T>,
    capacity: usize,
}

impl<T> Ring<T> {
    /// An empty ring of `capacity` (at least 1).
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

    /// Items held, oldest first.
    pub fn iter(&self) -> impl DoubleEndedIterator<Item = &T> + ExactSizeIterator {
        self.items.iter()
    }

    /// Items held.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// Whether none is held.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Most items held at once.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// The newest item.
    pub fn last(&self) -> Option<&T> {
        self.items.back()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_holds_more_than_its_capacity_and_keeps_the_newest() {
        let mut r = Ring::new(720);
        for i in 0..10_000u32 {
            r.push(i);
            assert!(r.len() <= 720);
        }
        assert_eq!(r.len(), 720);
        assert_eq!(r.iter().next(), Some(&(10_000 - 720)));
        assert_eq!(r.last(), Some(&9_999));
        // The buffer never grew past what it allocated at the start.
        assert!(r.items.capacity() < 2 * 720);
        let mut one = Ring::new(0);
        one.push('a');
        one.push('b');
        assert_eq!(one.iter().collect::<Vec<_>>(), [&'b']);
    }
}
