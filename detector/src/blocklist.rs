//! The agent's side of the XDP blocklist: entries with a TTL, inserted into the kernel map,
//! removed when they expire, and persisted so that a restart (or a reboot) restores the ones
//! still running. The kernel also ignores expired entries on its own, so a dead agent never
//! blocks anything past its TTL.

use std::{
    collections::HashMap,
    net::IpAddr,
    path::{Path, PathBuf},
};

use anyhow::Context;
use detector_common::{
    block::{BlockEntry, BlockKey, BLOCK_FLOW, BLOCK_SOURCE},
    flow::{user::next_block_generation, FlowKey},
};
use serde::{Deserialize, Serialize};

use crate::record::addr;

/// Where entries go: the kernel map, or memory in tests.
pub trait BlockStore {
    fn insert(&mut self, key: &BlockKey, entry: &BlockEntry) -> anyhow::Result<()>;
    fn remove(&mut self, key: &BlockKey) -> anyhow::Result<()>;
    /// Packets an entry has dropped so far (best effort).
    fn hits(&self, key: &BlockKey) -> u64;
}

/// The kernel's blocklist map and its generation.
pub struct KernelStore {
    pub map: aya::maps::HashMap<aya::maps::MapData, BlockKey, BlockEntry>,
    pub generation: aya::maps::Array<aya::maps::MapData, u32>,
}

impl BlockStore for KernelStore {
    fn insert(&mut self, key: &BlockKey, entry: &BlockEntry) -> anyhow::Result<()> {
        self.map
            .insert(key, entry, 0)
            .context("cannot insert into the blocklist map")?;
        // Moved on after the entry is in, on every insert: the program looks each flow up
        // again once the generation differs from the one it cached for the flow, so an entry
        // inserted without this would not drop a flow already checked.
        let now = self
            .generation
            .get(&0, 0)
            .context("cannot read the blocklist generation")?;
        self.generation
            .set(0, next_block_generation(now), 0)
            .context("cannot move the blocklist generation on")
    }
    fn remove(&mut self, key: &BlockKey) -> anyhow::Result<()> {
        match self.map.remove(key) {
            Ok(()) => Ok(()),
            // Already gone (e.g. removed by hand): nothing to do.
            Err(aya::maps::MapError::KeyNotFound) => Ok(()),
            Err(e) => Err(e).context("cannot remove from the blocklist map"),
        }
    }
    fn hits(&self, key: &BlockKey) -> u64 {
        self.map.get(key, 0).map(|e| e.hits).unwrap_or(0)
    }
}

/// In-memory store for tests and offline runs.
#[derive(Default)]
pub struct MemStore(pub HashMap<BlockKey, BlockEntry>);

impl BlockStore for MemStore {
    fn insert(&mut self, key: &BlockKey, entry: &BlockEntry) -> anyhow::Result<()> {
        self.0.insert(*key, *entry);
        Ok(())
    }
    fn remove(&mut self, key: &BlockKey) -> anyhow::Result<()> {
        self.0.remove(key);
        Ok(())
    }
    fn hits(&self, key: &BlockKey) -> u64 {
        self.0.get(key).map(|e| e.hits).unwrap_or(0)
    }
}

/// One entry as the agent keeps and persists it (wall-clock expiry survives a reboot;
/// CLOCK_MONOTONIC, which the kernel compares with, does not).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Block {
    #[serde(with = "key_json")]
    pub key: BlockKey,
    pub expires_unix_ns: u64,
    /// The alert that caused it.
    pub alert_id: String,
    pub family: String,
}

/// A block key as readable JSON in the state file.
mod key_json {
    use std::net::IpAddr;

    use detector_common::{
        block::{BlockKey, BLOCK_FLOW},
        flow::FlowKey,
    };
    use serde::{de::Error, Deserialize, Deserializer, Serialize, Serializer};

    use crate::record::addr;

    #[derive(Serialize, Deserialize)]
    struct KeyJson {
        target: String,
        addr: IpAddr,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        peer: Option<IpAddr>,
        #[serde(default)]
        port: u16,
        #[serde(default)]
        peer_port: u16,
        #[serde(default)]
        proto: u8,
        #[serde(default)]
        vlan: u16,
    }

    fn bytes(a: &IpAddr) -> (u8, [u8; 16]) {
        match a {
            IpAddr::V4(v4) => {
                let mut b = [0u8; 16];
                b[..4].copy_from_slice(&v4.octets());
                (4, b)
            }
            IpAddr::V6(v6) => (6, v6.octets()),
        }
    }

    pub fn serialize<S: Serializer>(k: &BlockKey, s: S) -> Result<S::Ok, S::Error> {
        let f = &k.flow;
        let j = KeyJson {
            target: if k.kind == BLOCK_FLOW {
                "flow"
            } else {
                "source"
            }
            .into(),
            addr: addr(f.family, &f.addr_lo),
            peer: (k.kind == BLOCK_FLOW).then(|| addr(f.family, &f.addr_hi)),
            port: f.port_lo,
            peer_port: f.port_hi,
            proto: f.proto,
            vlan: f.vlan,
        };
        j.serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<BlockKey, D::Error> {
        let j = KeyJson::deserialize(d)?;
        let (family, lo) = bytes(&j.addr);
        match j.target.as_str() {
            "source" => Ok(BlockKey::source(family, &lo)),
            "flow" => {
                let peer = j
                    .peer
                    .ok_or_else(|| D::Error::custom("a flow block needs \"peer\""))?;
                let (pf, hi) = bytes(&peer);
                if pf != family {
                    return Err(D::Error::custom("flow block mixes IPv4 and IPv6"));
                }
                Ok(BlockKey::flow(&FlowKey {
                    addr_lo: lo,
                    addr_hi: hi,
                    port_lo: j.port,
                    port_hi: j.peer_port,
                    proto: j.proto,
                    family,
                    vlan: j.vlan,
                }))
            }
            other => Err(D::Error::custom(format!("unknown block target {other:?}"))),
        }
    }
}

/// What `expire` removed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Expired {
    pub block: Block,
    pub hits: u64,
}

/// Human-readable name of a block key.
pub fn describe(key: &BlockKey) -> String {
    let f = &key.flow;
    match key.kind {
        BLOCK_SOURCE => format!("source {}", addr(f.family, &f.addr_lo)),
        BLOCK_FLOW => format!(
            "flow {} {}:{} <-> {}:{}",
            crate::record::proto_name(f.proto),
            addr(f.family, &f.addr_lo),
            f.port_lo,
            addr(f.family, &f.addr_hi),
            f.port_hi
        ),
        k => format!("unknown kind {k}"),
    }
}

/// The key that blocks `src` (source target) or `flow` (flow target).
pub fn key_for(target: crate::config::DropTarget, src: IpAddr, flow: &FlowKey) -> BlockKey {
    match target {
        crate::config::DropTarget::Source => {
            let mut a = [0u8; 16];
            let family = match src {
                IpAddr::V4(v4) => {
                    a[..4].copy_from_slice(&v4.octets());
                    4
                }
                IpAddr::V6(v6) => {
                    a = v6.octets();
                    6
                }
            };
            BlockKey::source(family, &a)
        }
        crate::config::DropTarget::Flow => BlockKey::flow(flow),
    }
}

#[derive(Serialize, Deserialize)]
struct StateFile {
    version: u32,
    blocks: Vec<Block>,
}

/// Active entries, their kernel store and their state file.
pub struct Blocklist<S: BlockStore> {
    store: S,
    blocks: HashMap<BlockKey, Block>,
    state_file: Option<PathBuf>,
}

impl<S: BlockStore> Blocklist<S> {
    /// An empty blocklist over `store`, persisted to `state_file` when given.
    pub fn new(store: S, state_file: Option<PathBuf>) -> Self {
        Self {
            store,
            blocks: HashMap::new(),
            state_file,
        }
    }

    /// Number of active entries.
    pub fn len(&self) -> usize {
        self.blocks.len()
    }

    pub fn is_empty(&self) -> bool {
        self.blocks.is_empty()
    }

    /// True when `key` has an active entry.
    pub fn contains(&self, key: &BlockKey) -> bool {
        self.blocks.contains_key(key)
    }

    /// Active entries.
    pub fn blocks(&self) -> impl Iterator<Item = &Block> {
        self.blocks.values()
    }

    /// Inserts (or extends) an entry. `now_unix`/`now_mono` are the two clocks now.
    pub fn block(&mut self, block: Block, now_unix: u64, now_mono: u64) -> anyhow::Result<()> {
        let entry = BlockEntry {
            expires_ns: now_mono
                .saturating_add(block.expires_unix_ns.saturating_sub(now_unix))
                .max(1),
            hits: 0,
        };
        self.store.insert(&block.key, &entry)?;
        self.blocks.insert(block.key, block);
        self.persist()
    }

    /// Removes entries that expired by `now_unix` from the kernel and the state.
    pub fn expire(&mut self, now_unix: u64) -> anyhow::Result<Vec<Expired>> {
        let gone: Vec<BlockKey> = self
            .blocks
            .iter()
            .filter(|(_, b)| b.expires_unix_ns <= now_unix)
            .map(|(k, _)| *k)
            .collect();
        let mut out = Vec::with_capacity(gone.len());
        for k in gone {
            let hits = self.store.hits(&k);
            self.store.remove(&k)?;
            if let Some(block) = self.blocks.remove(&k) {
                out.push(Expired { block, hits });
            }
        }
        if !out.is_empty() {
            self.persist()?;
        }
        Ok(out)
    }

    /// Writes the active entries to the state file (atomically: a failed write, e.g. a full
    /// disk, leaves the previous file intact and is reported).
    pub fn persist(&self) -> anyhow::Result<()> {
        let Some(path) = &self.state_file else {
            return Ok(());
        };
        let mut blocks: Vec<Block> = self.blocks.values().cloned().collect();
        blocks.sort_by_key(|b| b.expires_unix_ns);
        let text = serde_json::to_vec_pretty(&StateFile { version: 1, blocks })?;
        crate::state::write_atomic(path, &text)
    }

    /// Loads the state file and re-inserts the entries that have not expired.
    pub fn restore(&mut self, now_unix: u64, now_mono: u64) -> anyhow::Result<usize> {
        let Some(path) = self.state_file.clone() else {
            return Ok(0);
        };
        let state: StateFile = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .with_context(|| format!("{}: not a blocklist state file", path.display()))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
        };
        let mut n = 0;
        for b in state.blocks {
            if b.expires_unix_ns > now_unix {
                let entry = BlockEntry {
                    expires_ns: now_mono.saturating_add(b.expires_unix_ns - now_unix),
                    hits: 0,
                };
                self.store.insert(&b.key, &entry)?;
                self.blocks.insert(b.key, b);
                n += 1;
            }
        }
        self.persist()?;
        Ok(n)
    }

    /// The store (for inspection).
    pub fn store(&self) -> &S {
        &self.store
    }
}

/// The blocklist state file inside a state directory.
pub fn state_path(state_dir: &Path) -> PathBuf {
    state_dir.join("blocklist.json")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::DropTarget;

    const S: u64 = 1_000_000_000;

    fn block(ip: &str, expires: u64) -> Block {
        Block {
            key: key_for(DropTarget::Source, ip.parse().unwrap(), &FlowKey::default()),
            expires_unix_ns: expires,
            alert_id: "a-1".into(),
            family: "scan".into(),
        }
    }

    #[test]
    fn entries_expire_out_of_the_store() {
        let mut bl = Blocklist::new(MemStore::default(), None);
        bl.block(block("192.0.2.1", 1000 * S), 900 * S, 5 * S)
            .unwrap();
        bl.block(block("2001:db8::1", 2000 * S), 900 * S, 5 * S)
            .unwrap();
        let e = bl.store().0.values().map(|e| e.expires_ns).min().unwrap();
        assert_eq!(e, 105 * S, "monotonic expiry = now_mono + remaining");
        assert_eq!(bl.expire(999 * S).unwrap().len(), 0);
        let gone = bl.expire(1000 * S).unwrap();
        assert_eq!(gone.len(), 1);
        assert_eq!(describe(&gone[0].block.key), "source 192.0.2.1");
        assert_eq!(bl.store().0.len(), 1);
    }

    #[test]
    fn unexpired_entries_survive_a_restart() {
        let dir = std::env::temp_dir().join(format!("detector-bl-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = state_path(&dir);
        let mut bl = Blocklist::new(MemStore::default(), Some(path.clone()));
        bl.block(block("192.0.2.1", 1000 * S), 900 * S, 5 * S)
            .unwrap();
        bl.block(block("192.0.2.2", 1500 * S), 900 * S, 5 * S)
            .unwrap();
        // A new agent (after a reboot: the monotonic clock restarted) at t = 1200 s.
        let mut again = Blocklist::new(MemStore::default(), Some(path.clone()));
        assert_eq!(again.restore(1200 * S, 30 * S).unwrap(), 1);
        let (k, e) = again.store().0.iter().next().unwrap();
        assert_eq!(describe(k), "source 192.0.2.2");
        assert_eq!(e.expires_ns, 330 * S);
        std::fs::write(&path, b"{ not json").unwrap();
        let err = format!(
            "{:#}",
            Blocklist::new(MemStore::default(), Some(path.clone()))
                .restore(0, 0)
                .unwrap_err()
        );
        assert!(
            err.contains("blocklist.json") && err.contains("not a blocklist state file"),
            "{err}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
