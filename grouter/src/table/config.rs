//! Config keys as partitions hold them: the control plane's values (`policy/route/<host>`,
//! `policy/site/<site>`, `cert/<host>`, …), each stamped with the hybrid logical clock of
//! its write (docs/CONTROL.md).
//!
//! Owns: the clock type and its order (the merge rule: last writer wins on
//! `(ms, counter, node)`), and the value as the mesh carries it. Must never: interpret a
//! value (its bytes are the control plane's), or order two writes by anything but their
//! clocks.

use std::cmp::Ordering;
use std::fmt;
use std::sync::Arc;

/// A hybrid logical clock reading: physical milliseconds since the Unix epoch, a logical
/// counter for writes within one millisecond (or after seeing a clock ahead of ours), and
/// the writer's node id as the final tie-break. Totally ordered, the same at every node.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Hlc {
    /// Physical part: Unix milliseconds.
    pub ms: u64,
    /// Logical part.
    pub counter: u32,
    /// The node that made the write.
    pub node: Arc<str>,
}

impl Ord for Hlc {
    fn cmp(&self, other: &Self) -> Ordering {
        (self.ms, self.counter, &*self.node).cmp(&(other.ms, other.counter, &*other.node))
    }
}

impl PartialOrd for Hlc {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl fmt::Display for Hlc {
    /// `<ms>.<counter>@<node>`, as the admin API shows it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}@{}", self.ms, self.counter, self.node)
    }
}

/// One write of a config key: its clock, and the value (`None`: the write deleted the key;
/// the deletion is kept, with its clock, so that an older write elsewhere cannot win).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigValue {
    /// When and by whom.
    pub hlc: Hlc,
    /// The value's JSON bytes; `None` for a deletion.
    pub value: Option<Arc<[u8]>>,
}

impl ConfigValue {
    /// Whether the write deleted the key.
    pub fn is_deleted(&self) -> bool {
        self.value.is_none()
    }
}

/// One config key of a partition on its way to or from a replica.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicatedConfig {
    /// The key.
    pub key: Arc<str>,
    /// Its version in the owner's partition.
    pub version: u64,
    /// The write.
    pub value: Arc<ConfigValue>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hlc(ms: u64, counter: u32, node: &str) -> Hlc {
        Hlc {
            ms,
            counter,
            node: node.into(),
        }
    }

    #[test]
    fn clocks_order_by_time_then_counter_then_node() {
        let mut v = [
            hlc(2, 0, "a"),
            hlc(1, 5, "z"),
            hlc(1, 5, "b"),
            hlc(1, 6, "a"),
        ];
        v.sort();
        assert_eq!(
            v.map(|h| h.to_string()),
            ["1.5@b", "1.5@z", "1.6@a", "2.0@a"]
        );
    }
}
