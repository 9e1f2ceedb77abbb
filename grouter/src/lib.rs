//! GRouter: a global router for multi-datacentre Cloud Foundry.
//!
//! # Layout
//!
//! ```text
//!  site NATS ──► learn ──► table ◄── mesh ◄──► other sites' nodes (TLS 1.3, mutual auth)
//!                           │  ▲        ▲ requests peers forward (h2 on the mesh port)
//!                           │  └ admin  │
//!  clients ──► tls (SNI) ──► proxy ─────┴──► local GoRouters | another site's node | 307
//! ```
//!
//! - [`config`]: the TOML schema, defaults and validation (`grouter check`).
//! - [`learn`]: the site's NATS bus → endpoint registry → this node's partition of the table.
//!   One task owns the registry; it alone writes this node's partition.
//! - [`table`]: partitions (one per node incarnation, versioned, with tombstones) merged into
//!   one lookup index; gorouter-compatible host/path/wildcard lookup; local-wins selection;
//!   each partition's set hash (`table::state`), which its owner's seal covers. No I/O.
//! - [`control`]: the control plane without a leader: config writes (policies, certificates)
//!   stamped by a hybrid logical clock, kept in this node's partition and in `state_dir`,
//!   merged by last writer wins across every partition into what the data plane reads.
//! - [`mesh`]: peers over mutual TLS; anti-entropy (`mesh::sync`, pure functions over the
//!   table) replicates every partition to every node, applying only what the partition's
//!   owner sealed (`mesh::trust` seals and checks); the failure detector and the sync
//!   state (`mesh::liveness`); the membership rules without I/O (`mesh::membership`). It
//!   never writes this node's own partition.
//! - [`proxy`]: the data plane, one way through: listener and codec → request head → the
//!   routing decision (`proxy::decide`, pure) → one forwarder (targets, retries, ejection,
//!   access log) → a codec per upstream protocol. It reads the table and never holds a lock
//!   across an `.await`.
//! - [`tls`]: per-app certificates by SNI from `tls.cert_dir`, hot-reloaded, and from the
//!   control plane (uploads, ACME: `tls::upload` checks them; a file beats them).
//! - [`admin`]: `/healthz`, `/metrics`, `/v1/*` (bearer token); reads table, health, mesh,
//!   metrics.
//! - [`health`] (leaf): the sync state, the drain flag and GoRouter health, which the mesh,
//!   the probes and shutdown write and the proxy, DNS and admin read.
//! - [`metrics`]: the Prometheus registry and the gauges set at scrape time; each subsystem
//!   owns its counters and registers them.
//! - [`placement`]: apps across foundations: the desired placement (a config key), the
//!   deterministic choice of sites, this site's reconciler (its own Cloud Controller only)
//!   and droplets streamed between sites' nodes over the mesh.
//! - [`history`]: the last hour for `/v1/history` and the dashboard (samples and events in
//!   fixed-size rings; `history::Recorder` is the sans-IO core).
//! - [`traffic`] (leaf): requests and 5xx per answering site, counted by the proxy.
//! - [`names`] (leaf): what a node id, a site and a region may be, for the config and the
//!   mesh certificates alike, and what a request's Host may be.
//! - [`policy`] (leaf): route and site policies after the merge, and what is known of the
//!   sites' regions and health: the one view `proxy::decide`, `dns` and `/healthz` read,
//!   with the rules that apply it to a route (`policy::Steering`: admitted and eligible
//!   sites, the weighted order, the verdict), so the proxy and DNS steer alike.
//! - [`limits`] (leaf): connection limits and timeouts of every listener (proxy, admin,
//!   mesh), the counters of what they cut, and the defaults derived from the open-file limit.
//! - [`node`]: wiring only. [`node::NodeState`] holds the handles, and [`node::run`] hands
//!   each subsystem the ones it uses, runs them under one cancellation token and drains them
//!   on shutdown. Nothing but the binary and the test fixtures imports it.
//!
//! Dependencies point one way (docs/MODULES.md lists who imports whom; no cycles):
//! `node` → `admin`, `dns`, `proxy`, `mesh`, `learn`, `tls` → `metrics`, `table`, `health`,
//! `config`.
//!
//! The DNS front, [`dns`], answers for `dns.zones` from the same merged view (table, site
//! health, sync state); see docs/DNS.md for what it does not do yet.
//!
//! [`fuzzing`] (hidden) holds the bodies of the fuzz targets (`fuzz/`), which the ordinary
//! test suite also replays over their corpus; nothing in the library imports it.
//!
//! Only the product lives here. `grouter demo` is part of the `grouter` binary (`main.rs`'s
//! `demo` module), not of this library; the GoRouter stand-in (`grouter-standin`) and the
//! benchmarks (`grouter-bench`) are crates of their own that depend on this one, never the
//! other way round.

#![forbid(unsafe_code)]

pub mod acme;
pub mod admin;
pub mod cc;
pub mod config;
pub mod control;
pub mod dns;
#[doc(hidden)]
pub mod fuzzing;
pub mod health;
pub mod history;
pub mod learn;
pub mod limits;
pub mod mesh;
pub mod metrics;
pub mod names;
pub mod node;
pub mod placement;
pub mod policy;
pub mod proxy;
pub mod table;
pub mod tls;
pub mod traffic;
