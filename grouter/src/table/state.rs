//! What an owner signs for its partition: a **homomorphic hash of the live entries** and the
//! **statement** that binds it to the partition's identity, version and record.
//!
//! Owns: the canonical encoding of an entry and of a record, the set hash ([`StateHash`],
//! LtHash16: 1,024 lanes of 16 bits, the sum of each live entry's 2 KiB expansion), and the
//! statement bytes. Must never: depend on the order entries arrive in, or on anything but
//! the live entries (tombstones are not hashed, so purging them leaves the hash unchanged).
//!
//! Because the hash is a sum, a replica updates it per change (subtract the old entry, add
//! the new) and a receiver can compute the hash of the state it *would* hold after a delta
//! without applying it; if that does not match what the owner signed, nothing is applied.
//! The construction is Lewi et al.'s "Securing Update Propagation with Homomorphic Hashing"
//! (LtHash, 2019), with BLAKE3 as the expansion function.

use super::{NodeRecord, RouteEntry, RouteKey};

/// Lanes of the set hash.
const LANES: usize = 1024;
/// Bytes of one entry's expansion (one `u16` per lane).
const EXPANSION: usize = LANES * 2;

/// A 32-byte digest of one entry (its canonical encoding), the unit the set hash adds.
pub type EntryDigest = [u8; 32];

/// The digest of one live entry: host, path, version and value, length-prefixed.
pub fn entry_digest(key: &RouteKey, version: u64, value: &RouteEntry) -> EntryDigest {
    let mut h = blake3::Hasher::new_derive_key("grouter mesh entry v1");
    put_str(&mut h, &key.host);
    put_str(&mut h, &key.path);
    h.update(&version.to_be_bytes());
    put_str(&mut h, &value.app_id);
    put_str(&mut h, value.app_name.as_deref().unwrap_or(""));
    h.update(&u8::from(value.app_name.is_some()).to_be_bytes());
    h.update(&value.endpoints.to_be_bytes());
    h.update(&value.instances.to_be_bytes());
    h.update(&value.updated_at_ms.to_be_bytes());
    *h.finalize().as_bytes()
}

/// The digest of a node record (all fields, addresses in order).
pub fn record_digest(record: Option<&NodeRecord>) -> [u8; 32] {
    let Some(r) = record else {
        return [0; 32];
    };
    let mut h = blake3::Hasher::new_derive_key("grouter mesh record v1");
    h.update(&r.version.to_be_bytes());
    put_str(&mut h, &r.region);
    put_str(&mut h, &r.advertise);
    h.update(&r.heartbeat.to_be_bytes());
    h.update(&u8::from(r.healthy).to_be_bytes());
    h.update(&(r.site_addresses.len() as u64).to_be_bytes());
    for a in &r.site_addresses {
        put_str(&mut h, a);
    }
    put_str(&mut h, &r.proxy_address);
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
        self.combine(d, u16::wrapping_add);
    }

    /// Take one entry out (it must have been added).
    pub fn remove(&mut self, d: &EntryDigest) {
        self.combine(d, u16::wrapping_sub);
    }

    /// Add every lane of `other`.
    pub fn add_hash(&mut self, other: &StateHash) {
        for (a, b) in self.0.iter_mut().zip(other.0.iter()) {
            *a = a.wrapping_add(*b);
        }
    }

    fn combine(&mut self, d: &EntryDigest, op: fn(u16, u16) -> u16) {
        let mut out = [0u8; EXPANSION];
        let mut h = blake3::Hasher::new_derive_key("grouter mesh lthash16 v1");
        h.update(d);
        h.finalize_xof().fill(&mut out);
        for (lane, b) in self.0.iter_mut().zip(out.chunks_exact(2)) {
            *lane = op(*lane, u16::from_le_bytes([b[0], b[1]]));
        }
    }

    /// A 32-byte digest of the lanes (what the statement carries).
    pub fn digest(&self) -> [u8; 32] {
        let mut h = blake3::Hasher::new_derive_key("grouter mesh lthash16 digest v1");
        for lane in self.0.iter() {
            h.update(&lane.to_le_bytes());
        }
        *h.finalize().as_bytes()
    }

    /// The sum of many entries, spread over the machine's cores when there are many.
    pub fn of(digests: &[EntryDigest]) -> StateHash {
        const PER_THREAD: usize = 4096;
        let threads = std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .min(digests.len() / PER_THREAD)
            .max(1);
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
    use std::sync::Arc;

    fn value(app: &str) -> RouteEntry {
        RouteEntry {
            app_id: Arc::from(app),
            app_name: None,
            endpoints: 1,
            instances: 1,
            updated_at_ms: 5,
        }
    }

    fn key(s: &str) -> RouteKey {
        RouteKey::parse(s).unwrap()
    }

    #[test]
    fn the_hash_is_of_the_set_not_the_order_and_removal_undoes_addition() {
        let a = entry_digest(&key("a.com"), 1, &value("x"));
        let b = entry_digest(&key("b.com"), 2, &value("y"));
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
        let base = entry_digest(&key("a.com/p"), 1, &value("x"));
        assert_ne!(base, entry_digest(&key("a.com/q"), 1, &value("x")));
        assert_ne!(base, entry_digest(&key("a.co/mp"), 1, &value("x")));
        assert_ne!(base, entry_digest(&key("a.com/p"), 2, &value("x")));
        assert_ne!(base, entry_digest(&key("a.com/p"), 1, &value("y")));
        let mut named = value("x");
        named.app_name = Some(Arc::from(""));
        assert_ne!(base, entry_digest(&key("a.com/p"), 1, &named));
        let mut more = value("x");
        more.endpoints = 2;
        assert_ne!(base, entry_digest(&key("a.com/p"), 1, &more));
    }

    #[test]
    fn many_entries_sum_the_same_on_every_core_count() {
        let digests: Vec<EntryDigest> = (0..10_000)
            .map(|i| entry_digest(&key(&format!("app-{i}.com")), i, &value("a")))
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
