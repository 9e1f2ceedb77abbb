//! Wire types of GRouter.
//!
//! - [`nats`]: gorouter's `router.register` / `router.unregister` / `router.start` JSON, and
//!   the validator that turns a message into route registrations or a typed error.
//!
//! - [`mesh`]: the protobuf frames nodes exchange over mutual TLS, and their size cap.
//!
//! - [`seal`]: what an owner signs for its partition (the set hash of its live entries and
//!   the statement around it), byte for byte.
//!
//! This crate owns formats only: it does no I/O and keeps no state. Every decoder here takes
//! untrusted bytes and must return an error, never panic.

pub mod mesh;
pub mod nats;
pub mod seal;
