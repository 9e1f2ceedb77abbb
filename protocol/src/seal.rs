//! What an owner signs for its partition: a **homomorphic hash of the live entries** and the
//! **statement** that binds it to the partition's identity, version and record. Part of the
//! mesh protocol: every node must compute these bytes identically.
//!
//! Owns: the canonical encoding of an entry and of a node record, the set hash
//! ([`StateHash`], LtHash16: 1,024 lanes of 16 bits, the sum of each live entry's 2 KiB
//! expansion), and the statement bytes. Must never: depend on the order entries arrive in,
//! or on anything but the live entries (tombstones are not hashed, so purging them leaves
//! the hash unchanged).
//!
//! Because the hash is a sum, a replica updates it per change (subtract the old entry, add
//! the new) and a receiver can compute the hash of the state it *would* hold after a delta
//! without applying it; if that does not match what the owner signed, nothing is applied.
//! The construction is Lewi et al.'s LtHash ("Securing Update Propagation with Homomorphic
//! Hashing", 2019), with BLAKE3 as the expansion function.

use std::sync::LazyLock;

/// Lanes of the set hash.
const LANES: usize = 1024;
/// Bytes of one entry's expansion (one `u16` per lane).
const EXPANSION: usize = LANES * 2;

/// Hashers with their derive-key context already absorbed (deriving it costs a hash).
static ENTRY_HASHER: LazyLock<blake3::Hasher> =
    LazyLock::new(|| blake3::Hasher::new_derive_key("grouter mesh entry v2"));
static CONFIG_HASHER: LazyLock<blake3::Hasher> =
    LazyLock::new(|| blake3::Hasher::new_derive_key("grouter mesh config entry v1"));
static RECORD_HASHER: LazyLock<blake3::Hasher> =
    LazyLock::new(|| blake3::Hasher::new_derive_key("grouter mesh record v1"));
static ROOT_HASHER: LazyLock<blake3::Hasher> =
    LazyLock::new(|| blake3::Hasher::new_derive_key("grouter mesh lthash16 digest v1"));
/// Cores to sum large sets on (asking the OS costs system calls; once is enough).
static CORES: LazyLock<usize> =
    LazyLock::new(|| std::thread::available_parallelism().map_or(1, |n| n.get()));

/// A 32-byte digest of one entry (its canonical encoding), the unit the set hash adds.
pub type EntryDigest = [u8; 32];

/// The fields of one live entry that are signed.
#[derive(Debug, Clone, Copy)]
pub struct EntryFields<'a> {
    /// Route host.
    pub host: &'a str,
    /// Route path (`""` for the whole host).
    pub path: &'a str,
    /// Version in the owner's partition.
    pub version: u64,
    /// App GUID.
    pub app_id: &'a str,
    /// App name, when known.
    pub app_name: Option<&'a str>,
    /// The app's organisation, when known.
    pub org: Option<&'a str>,
    /// The app's space, when known.
    pub space: Option<&'a str>,
    /// The isolation segment whose GoRouters serve the route, if any.
    pub segment: Option<&'a str>,
    /// Live endpoints.
    pub endpoints: u32,
    /// Distinct instances.
    pub instances: u32,
    /// Unix milliseconds of the entry's last change.
    pub updated_at_ms: u64,
}

/// The fields of a node record that are signed.
#[derive(Debug, Clone, Copy)]
pub struct RecordFields<'a> {
    /// Partition version of the record.
    pub version: u64,
    /// Region.
    pub region: &'a str,
    /// Mesh address.
    pub advertise: &'a str,
    /// Heartbeat counter.
    pub heartbeat: u64,
    /// GoRouters healthy.
    pub healthy: bool,
    /// Public entry addresses of the site.
    pub site_addresses: &'a [String],
    /// Proxy address for forwarded requests.
    pub proxy_address: &'a str,
}

/// The digest of one live entry: every field, length-prefixed.
pub fn entry_digest(e: &EntryFields<'_>) -> EntryDigest {
    let mut h = ENTRY_HASHER.clone();
    put_str(&mut h, e.host);
    put_str(&mut h, e.path);
    h.update(&e.version.to_be_bytes());
    put_str(&mut h, e.app_id);
    for v in [e.app_name, e.org, e.space, e.segment] {
        put_str(&mut h, v.unwrap_or(""));
        h.update(&u8::from(v.is_some()).to_be_bytes());
    }
    h.update(&e.endpoints.to_be_bytes());
    h.update(&e.instances.to_be_bytes());
    h.update(&e.updated_at_ms.to_be_bytes());
    *h.finalize().as_bytes()
}

/// The fields of one config entry that are signed.
#[derive(Debug, Clone, Copy)]
pub struct ConfigFields<'a> {
    /// The config key.
    pub key: &'a str,
    /// Version in the owner's partition.
    pub version: u64,
    /// Clock of the write: physical milliseconds.
    pub hlc_ms: u64,
    /// Clock of the write: logical counter.
    pub hlc_counter: u32,
    /// Clock of the write: the writer.
    pub hlc_node: &'a str,
    /// The write deleted the key.
    pub deleted: bool,
    /// The value's bytes.
    pub value: &'a [u8],
}

/// The digest of one config entry (domain-separated from route entries, so neither can
/// stand for the other).
pub fn config_digest(c: &ConfigFields<'_>) -> EntryDigest {
    let mut h = CONFIG_HASHER.clone();
    put_str(&mut h, c.key);
    h.update(&c.version.to_be_bytes());
    h.update(&c.hlc_ms.to_be_bytes());
    h.update(&c.hlc_counter.to_be_bytes());
    put_str(&mut h, c.hlc_node);
    h.update(&u8::from(c.deleted).to_be_bytes());
    h.update(&(c.value.len() as u64).to_be_bytes());
    h.update(c.value);
    *h.finalize().as_bytes()
}

/// The digest of a node record (all fields, addresses in order); zeros for none.
pub fn record_digest(record: Option<&RecordFields<'_>>) -> [u8; 32] {
    let Some(r) = record else {
        return [0; 32];
    };
    let mut h = RECORD_HASHER.clone();
    h.update(&r.version.to_be_bytes());
    put_str(&mut h, r.region);
    put_str(&mut h, r.advertise);
    h.update(&r.heartbeat.to_be_bytes());
    h.update(&u8::from(r.healthy).to_be_bytes());
    h.update(&(r.site_addresses.len() as u64).to_be_bytes());
    for a in r.site_addresses {
        put_str(&mut h, a);
    }
    put_str(&mut h, r.proxy_address);
    *h.finalize().as_bytes()
}

fn put_str(h: &mut blake3::Hasher, s: &str) {
    h.update(&(s.len() as u64).to_be_bytes());
    h.update(s.as_bytes());
}

/// The set hash of a partition's live entries (LtHash16).
#[derive(Clone, PartialEq, Eq)]
pub struct StateHash(Box<[u16; LANES]>);

impl std::fmt::Debug for StateHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "StateHash({})",
            blake3::Hash::from(self.digest()).to_hex()
        )
    }
}

impl Default for StateHash {
    fn default() -> Self {
        StateHash(Box::new([0; LANES]))
    }
}

impl StateHash {
    /// Add one entry.
    pub fn add(&mut self, d: &EntryDigest) {
        let x = expand(d);
        for (lane, b) in self.0.iter_mut().zip(x.chunks_exact(2)) {
            *lane = lane.wrapping_add(u16::from_le_bytes([b[0], b[1]]));
        }
    }

    /// Take one entry out (it must have been added).
    pub fn remove(&mut self, d: &EntryDigest) {
        let x = expand(d);
        for (lane, b) in self.0.iter_mut().zip(x.chunks_exact(2)) {
            *lane = lane.wrapping_sub(u16::from_le_bytes([b[0], b[1]]));
        }
    }

    /// Add every lane of `other`.
    pub fn add_hash(&mut self, other: &StateHash) {
        for (a, b) in self.0.iter_mut().zip(other.0.iter()) {
            *a = a.wrapping_add(*b);
        }
    }

    /// A 32-byte digest of the lanes (what the statement carries).
    pub fn digest(&self) -> [u8; 32] {
        let mut h = ROOT_HASHER.clone();
        for lane in self.0.iter() {
            h.update(&lane.to_le_bytes());
        }
        *h.finalize().as_bytes()
    }

    /// The sum of many entries, spread over the machine's cores when there are many.
    pub fn of(digests: &[EntryDigest]) -> StateHash {
        const PER_THREAD: usize = 4096;
        let threads = (*CORES).min(digests.len() / PER_THREAD).max(1);
        let sum = |part: &[EntryDigest]| {
            let mut h = StateHash::default();
            for d in part {
                h.add(d);
            }
            h
        };
        if threads == 1 {
            return sum(digests);
        }
        let chunk = digests.len().div_ceil(threads);
        std::thread::scope(|s| {
            let parts: Vec<_> = digests
                .chunks(chunk)
                .map(|part| s.spawn(move || sum(part)))
                .collect();
            let mut total = StateHash::default();
            for p in parts {
                // A panic in a summing thread can only be a bug of ours; fail closed with a
                // hash that matches nothing anybody signed.
                match p.join() {
                    Ok(h) => total.add_hash(&h),
                    Err(_) => total.0[0] = total.0[0].wrapping_add(1),
                }
            }
            total
        })
    }
}

/// An entry's 2 KiB expansion: BLAKE3 in XOF mode, keyed by the entry's digest. (The lane
/// arithmetic is written out in `add` and `remove` so the compiler vectorises it: through a
/// function pointer it cost four times the hashing.)
fn expand(d: &EntryDigest) -> [u8; EXPANSION] {
    let mut out = [0u8; EXPANSION];
    blake3::Hasher::new_keyed(d).finalize_xof().fill(&mut out);
    out
}

/// What an owner signs: its partition at one version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Statement {
    /// Owner node id.
    pub node_id: String,
    /// Owner site.
    pub site: String,
    /// Owner incarnation.
    pub generation: u64,
    /// The partition's version the statement describes.
    pub version: u64,
    /// Live entries.
    pub live: u64,
    /// [`record_digest`] of the owner's record at `version`.
    pub record: [u8; 32],
    /// [`StateHash::digest`] of the live entries.
    pub root: [u8; 32],
}

impl Statement {
    /// The bytes that are signed (domain-separated, every field length-prefixed or fixed).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(160);
        out.extend_from_slice(b"grouter mesh partition statement v1\0");
        for s in [&self.node_id, &self.site] {
            out.extend_from_slice(&(s.len() as u64).to_be_bytes());
            out.extend_from_slice(s.as_bytes());
        }
        out.extend_from_slice(&self.generation.to_be_bytes());
        out.extend_from_slice(&self.version.to_be_bytes());
        out.extend_from_slice(&self.live.to_be_bytes());
        out.extend_from_slice(&self.record);
        out.extend_from_slice(&self.root);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(host: &str, path: &str, version: u64, app: &str) -> EntryDigest {
        entry_digest(&EntryFields {
            host,
            path,
            version,
            app_id: app,
            app_name: None,
            org: None,
            space: None,
            segment: None,
            endpoints: 1,
            instances: 1,
            updated_at_ms: 5,
        })
    }

    #[test]
    fn the_hash_is_of_the_set_not_the_order_and_removal_undoes_addition() {
        let a = e("a.com", "", 1, "x");
        let b = e("b.com", "", 2, "y");
        let mut ab = StateHash::default();
        ab.add(&a);
        ab.add(&b);
        let mut ba = StateHash::default();
        ba.add(&b);
        ba.add(&a);
        assert_eq!(ab, ba);
        assert_eq!(StateHash::of(&[a, b]), ab);
        ab.remove(&a);
        let mut only_b = StateHash::default();
        only_b.add(&b);
        assert_eq!(ab, only_b);
        ab.remove(&b);
        assert_eq!(ab, StateHash::default());
    }

    #[test]
    fn every_field_of_an_entry_counts() {
        let base = EntryFields {
            host: "a.com",
            path: "/p",
            version: 1,
            app_id: "x",
            app_name: None,
            org: None,
            space: None,
            segment: None,
            endpoints: 1,
            instances: 1,
            updated_at_ms: 5,
        };
        let d = entry_digest(&base);
        for changed in [
            EntryFields { path: "/q", ..base },
            EntryFields {
                host: "a.co",
                path: "m/p",
                ..base
            },
            EntryFields { version: 2, ..base },
            EntryFields {
                app_id: "y",
                ..base
            },
            EntryFields {
                app_name: Some(""),
                ..base
            },
            EntryFields {
                org: Some("acme"),
                ..base
            },
            EntryFields {
                space: Some("prod"),
                ..base
            },
            EntryFields {
                segment: Some("seg-a"),
                ..base
            },
            EntryFields {
                endpoints: 2,
                ..base
            },
            EntryFields {
                instances: 2,
                ..base
            },
            EntryFields {
                updated_at_ms: 6,
                ..base
            },
        ] {
            assert_ne!(entry_digest(&changed), d, "{changed:?}");
        }
        // The same value in another field is another entry.
        let named = |f: fn(&mut EntryFields<'static>)| {
            let mut e = base;
            f(&mut e);
            entry_digest(&e)
        };
        let digests = [
            named(|e| e.app_name = Some("v")),
            named(|e| e.org = Some("v")),
            named(|e| e.space = Some("v")),
            named(|e| e.segment = Some("v")),
        ];
        for (i, a) in digests.iter().enumerate() {
            assert!(digests[i + 1..].iter().all(|b| b != a), "field {i}");
        }
    }

    #[test]
    fn every_field_of_a_config_entry_counts_and_none_is_a_route() {
        let base = ConfigFields {
            key: "policy/route/a.com",
            version: 3,
            hlc_ms: 10,
            hlc_counter: 1,
            hlc_node: "lon-1",
            deleted: false,
            value: b"{}",
        };
        let d = config_digest(&base);
        for changed in [
            ConfigFields {
                key: "policy/route/b.com",
                ..base
            },
            ConfigFields { version: 4, ..base },
            ConfigFields { hlc_ms: 11, ..base },
            ConfigFields {
                hlc_counter: 2,
                ..base
            },
            ConfigFields {
                hlc_node: "lon-2",
                ..base
            },
            ConfigFields {
                deleted: true,
                ..base
            },
            ConfigFields {
                value: b"{ }",
                ..base
            },
        ] {
            assert_ne!(config_digest(&changed), d, "{changed:?}");
        }
        assert_ne!(d, e("policy/route/a.com", "", 3, ""));
    }

    #[test]
    fn many_entries_sum_the_same_on_every_core_count() {
        let digests: Vec<EntryDigest> = (0..10_000)
            .map(|i| e(&format!("app-{i}.com"), "", i, "a"))
            .collect();
        let mut serial = StateHash::default();
        for d in &digests {
            serial.add(d);
        }
        assert_eq!(StateHash::of(&digests), serial);
    }

    #[test]
    fn statements_differ_in_every_field() {
        let s = Statement {
            node_id: "lon-1".into(),
            site: "lon".into(),
            generation: 1,
            version: 2,
            live: 3,
            record: [4; 32],
            root: [5; 32],
        };
        let bytes = s.to_bytes();
        let mut t = s.clone();
        t.node_id = "lon-1l".into();
        t.site = "on".into();
        assert_ne!(t.to_bytes(), bytes, "length prefixes keep fields apart");
        for change in [
            |s: &mut Statement| s.generation += 1,
            |s: &mut Statement| s.version += 1,
            |s: &mut Statement| s.live += 1,
            |s: &mut Statement| s.record[0] ^= 1,
            |s: &mut Statement| s.root[31] ^= 1,
        ] {
            let mut t = s.clone();
            change(&mut t);
            assert_ne!(t.to_bytes(), bytes);
        }
    }
}
