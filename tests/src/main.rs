//! GRouter's cross-crate integration tests, built into one binary. Each module starts real
//! processes (`nats-server`, `grouter`) on ephemeral loopback ports.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod acme;
mod attack;
mod blackhole;
mod bosh;
mod certs;
mod chaos;
mod churn;
mod control;
mod dashboard;
mod demo;
mod dns;
mod dns_dnsviz;
mod dns_resolver;
mod edge;
mod gcf;
mod http1;
mod learn;
mod mesh;
mod packaging;
mod parity;
mod partition;
mod placement;
mod policies;
mod proxy;
mod segments;
mod soak;
