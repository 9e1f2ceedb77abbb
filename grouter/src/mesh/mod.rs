//! The mesh: this node's connections to the nodes of every site.
//!
//! - [`identity`]: the mesh CA, node certificates (node id and site in the SAN) and the
//!   TLS 1.3 mutual-auth configurations; a peer's identity comes from its certificate only.
//! - [`sync`]: anti-entropy as pure functions over the table (digest, delta, apply), with the
//!   rule of who may speak for which partition.

pub mod identity;
pub mod sync;
