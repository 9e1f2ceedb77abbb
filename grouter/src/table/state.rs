//! The table's side of [`grouter_protocol::seal`]: the digests of its own entry and record
//! types, so that what the table hashes is exactly what the protocol signs.
//!
//! Owns: nothing but the mapping of fields. Must never: hash a field the protocol does not
//! define, or leave one out.

use grouter_protocol::seal::{ConfigFields, EntryFields, RecordFields};
pub use grouter_protocol::seal::{EntryDigest, StateHash, Statement};

use super::{ConfigValue, NodeRecord, RouteEntry, RouteKey};

/// The digest of one live entry.
pub fn entry_digest(key: &RouteKey, version: u64, value: &RouteEntry) -> EntryDigest {
    grouter_protocol::seal::entry_digest(&EntryFields {
        host: &key.host,
        path: &key.path,
        version,
        app_id: value.app.id(),
        app_name: value.app.name(),
        org: value.app.org(),
        space: value.app.space(),
        segment: value.app.segment(),
        endpoints: value.endpoints,
        instances: value.instances,
        updated_at_ms: value.updated_at_ms,
    })
}

/// The digest of one config entry.
pub fn config_digest(key: &str, version: u64, value: &ConfigValue) -> EntryDigest {
    grouter_protocol::seal::config_digest(&ConfigFields {
        key,
        version,
        hlc_ms: value.hlc.ms,
        hlc_counter: value.hlc.counter,
        hlc_node: &value.hlc.node,
        deleted: value.is_deleted(),
        value: value.value.as_deref().unwrap_or_default(),
    })
}

/// The digest of a node record (zeros for none).
pub fn record_digest(record: Option<&NodeRecord>) -> [u8; 32] {
    grouter_protocol::seal::record_digest(
        record
            .map(|r| RecordFields {
                version: r.version,
                region: &r.region,
                advertise: &r.advertise,
                heartbeat: r.heartbeat,
                healthy: r.healthy,
                site_addresses: &r.site_addresses,
                proxy_address: &r.proxy_address,
            })
            .as_ref(),
    )
}
