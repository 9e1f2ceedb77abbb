//! The node's health as every subsystem sees it: the sync state, the drain flag and whether
//! any local GoRouter is healthy.
//!
//! Owns: [`SyncState`] and [`Health`], three atomics that the mesh, the GoRouter probes and
//! the shutdown sequence write and the proxy, DNS and admin read.
//!
//! Must never: import anything of this crate (it is the leaf the subsystems share), block,
//! or lock.

use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};

use tracing::{info, warn};

/// Whether this node is in contact with the other sites (DESIGN.md, "Sync state").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SyncState {
    /// Recent contact with at least one node of every other known site (or no mesh at all).
    InSync,
    /// Some sites unreachable.
    Degraded,
    /// No contact with any other site: fail open.
    #[default]
    Lost,
}

impl SyncState {
    /// Every state, in the order of their numbers.
    pub const ALL: [SyncState; 3] = [SyncState::InSync, SyncState::Degraded, SyncState::Lost];

    /// The contract's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            SyncState::InSync => "in_sync",
            SyncState::Degraded => "degraded",
            SyncState::Lost => "lost",
        }
    }
}

/// The node's health flags, shared by `Arc`.
#[derive(Debug)]
pub struct Health {
    draining: AtomicBool,
    gorouters_healthy: AtomicBool,
    sync: AtomicU8,
}

impl Default for Health {
    fn default() -> Self {
        Self::new()
    }
}

impl Health {
    /// A healthy node, not draining, in sync: a node without a mesh runs alone and is always
    /// in sync; with one, the mesh sets the state as it learns.
    pub fn new() -> Health {
        Health {
            draining: AtomicBool::new(false),
            gorouters_healthy: AtomicBool::new(true),
            sync: AtomicU8::new(SyncState::InSync as u8),
        }
    }

    /// A node with a mesh, before it has heard from any other site: `lost` (it holds no
    /// other site's routes, so failing open to the local GoRouters is the honest answer)
    /// until the mesh counts its first verified contact. Never `in_sync` before that.
    pub fn meshed() -> Health {
        let h = Health::new();
        h.sync.store(SyncState::Lost as u8, Ordering::Release);
        h
    }

    /// Whether the node is shutting down (health checks then say 503).
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    /// Mark the node as shutting down; it never serves again.
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::Release);
    }

    /// Whether any of this site's GoRouters passes its health check.
    pub fn gorouters_healthy(&self) -> bool {
        self.gorouters_healthy.load(Ordering::Acquire)
    }

    /// Whether the node can serve: not draining and some local GoRouter healthy (what
    /// `/healthz` and this node's record in the mesh say).
    pub fn can_serve(&self) -> bool {
        !self.is_draining() && self.gorouters_healthy()
    }

    /// Record the GoRouter probes' verdict; transitions are logged.
    pub fn set_gorouters_healthy(&self, healthy: bool) {
        if self.gorouters_healthy.swap(healthy, Ordering::AcqRel) != healthy {
            if healthy {
                info!("a local gorouter is healthy again");
            } else {
                warn!("no local gorouter is healthy: /healthz answers 503");
            }
        }
    }

    /// The node's sync state.
    pub fn sync(&self) -> SyncState {
        match self.sync.load(Ordering::Acquire) {
            0 => SyncState::InSync,
            1 => SyncState::Degraded,
            _ => SyncState::Lost,
        }
    }

    /// Record a new sync state; transitions are logged.
    pub fn set_sync(&self, new: SyncState) {
        let old = self.sync.swap(new as u8, Ordering::AcqRel);
        if old != new as u8 {
            info!(sync = new.as_str(), "sync state changed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serves_only_when_not_draining_and_a_gorouter_is_healthy() {
        let h = Health::new();
        assert!(h.can_serve());
        assert_eq!(h.sync(), SyncState::InSync);
        h.set_gorouters_healthy(false);
        assert!(!h.can_serve());
        h.set_gorouters_healthy(true);
        assert!(h.can_serve());
        h.start_draining();
        assert!(!h.can_serve() && h.is_draining());
    }

    #[test]
    fn sync_state_round_trips_through_its_atomic() {
        let h = Health::new();
        for s in SyncState::ALL {
            h.set_sync(s);
            assert_eq!(h.sync(), s);
        }
    }
}
