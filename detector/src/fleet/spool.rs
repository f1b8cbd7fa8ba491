//! The spool: events that could not be published yet, one JSON line each in
//! `fleet-spool.jsonl` in the state directory, sent in order when the servers are back.
//!
//! Policy: new events are appended and the file fdatasync'ed once per batch (the publisher
//! takes events in batches), so an acknowledged-by-nobody event survives a crash once the
//! batch is synced. Sent events leave memory at once but the file only when they are more than
//! half of it (or all of it): then the rest is rewritten atomically ([`crate::atomic_write`]),
//! so draining a large spool costs about twice its size in writes, not a rewrite per batch. A
//! crash before that sends those events again with the same `Nats-Msg-Id`, which the stream
//! discards as duplicates within its window. Bounded by the file's bytes: when full, new
//! events are refused (the caller counts them).

use std::{
    collections::VecDeque,
    fs::{self, File, OpenOptions},
    io::{self, BufRead, Write},
    path::{Path, PathBuf},
};

use super::events::Outgoing;

/// The spool's file name in the state directory.
pub const FILE: &str = "fleet-spool.jsonl";

/// The spool file and its entries, oldest first.
pub struct Spool {
    path: PathBuf,
    max_bytes: u64,
    entries: VecDeque<(Outgoing, u64)>,
    /// Bytes of the entries waiting.
    bytes: u64,
    /// Bytes at the head of the file whose entries were sent (not yet compacted away).
    sent: u64,
    file: File,
    unsynced: bool,
}

impl Spool {
    /// Opens (or creates) the spool in `state_dir`; returns it and the lines it could not read
    /// (a torn last line after a crash, say), which are dropped.
    pub fn open(state_dir: &Path, max_bytes: u64) -> io::Result<(Self, usize)> {
        fs::create_dir_all(state_dir)?;
        let path = state_dir.join(FILE);
        let mut entries = VecDeque::new();
        let mut bytes = 0;
        let mut bad = 0;
        if let Ok(f) = File::open(&path) {
            for line in io::BufReader::new(f).split(b'\n') {
                let line = line?;
                if line.is_empty() {
                    continue;
                }
                match serde_json::from_slice::<Outgoing>(&line) {
                    Ok(e) => {
                        let n = line.len() as u64 + 1;
                        bytes += n;
                        entries.push_back((e, n));
                    }
                    Err(_) => bad += 1,
                }
            }
        }
        let mut spool = Self {
            file: OpenOptions::new().create(true).append(true).open(&path)?,
            path,
            max_bytes,
            entries,
            bytes,
            sent: 0,
            unsynced: false,
        };
        if bad > 0 {
            spool.rewrite()?;
        }
        Ok((spool, bad))
    }

    /// Appends `e`; `Ok(false)` when the spool is full (it is not written).
    pub fn push(&mut self, e: &Outgoing) -> io::Result<bool> {
        let mut line = serde_json::to_vec(e).map_err(io::Error::other)?;
        line.push(b'\n');
        let n = line.len() as u64;
        if self.sent + self.bytes + n > self.max_bytes && self.sent > 0 {
            self.rewrite()?;
        }
        if self.bytes + n > self.max_bytes {
            return Ok(false);
        }
        self.file.write_all(&line)?;
        self.bytes += n;
        self.entries.push_back((e.clone(), n));
        self.unsynced = true;
        Ok(true)
    }

    /// Makes the appended entries durable (fdatasync).
    pub fn sync(&mut self) -> io::Result<()> {
        if self.unsynced {
            self.file.sync_data()?;
            self.unsynced = false;
        }
        Ok(())
    }

    /// The oldest `n` entries.
    pub fn front(&self, n: usize) -> Vec<Outgoing> {
        self.entries
            .iter()
            .take(n)
            .map(|(e, _)| e.clone())
            .collect()
    }

    /// Removes the oldest `n` entries (they were published); from the file when they are
    /// more than half of it.
    pub fn remove_front(&mut self, n: usize) -> io::Result<()> {
        for _ in 0..n.min(self.entries.len()) {
            if let Some((_, b)) = self.entries.pop_front() {
                self.bytes -= b;
                self.sent += b;
            }
        }
        if self.entries.is_empty() || self.sent > self.bytes {
            self.rewrite()?;
        }
        Ok(())
    }

    /// Entries waiting.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when nothing waits.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Bytes waiting.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Bytes of the file (what waits and what was sent but not yet compacted away).
    pub fn file_bytes(&self) -> u64 {
        self.sent + self.bytes
    }

    /// The file holds exactly the entries in memory: empty, truncated; otherwise replaced
    /// atomically.
    fn rewrite(&mut self) -> io::Result<()> {
        if self.entries.is_empty() {
            self.file.set_len(0)?;
            self.file.sync_data()?;
        } else {
            crate::atomic_write::write_atomic_with(&self.path, |f| {
                for (e, _) in &self.entries {
                    let mut line = serde_json::to_vec(e).map_err(io::Error::other)?;
                    line.push(b'\n');
                    f.write_all(&line)?;
                }
                Ok::<(), io::Error>(())
            })?;
            self.file = OpenOptions::new().append(true).open(&self.path)?;
        }
        self.sent = 0;
        self.unsynced = false;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fleet::subjects::Kind;

    fn ev(i: usize) -> Outgoing {
        Outgoing {
            kind: Kind::Alert,
            subject: "detector.h.alert".into(),
            msg_id: format!("h.1.{i}"),
            payload: format!("{{\"n\":{i}}}"),
        }
    }

    fn dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("detector-spool-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn entries_survive_reopening_and_leave_in_order() {
        let d = dir("order");
        let (mut s, bad) = Spool::open(&d, 1 << 20).unwrap();
        assert_eq!((s.len(), bad), (0, 0));
        for i in 0..5 {
            assert!(s.push(&ev(i)).unwrap());
        }
        s.sync().unwrap();
        drop(s);
        let (mut s, _) = Spool::open(&d, 1 << 20).unwrap();
        assert_eq!(s.len(), 5);
        s.remove_front(2).unwrap();
        assert_eq!(s.front(1), vec![ev(2)]);
        // Two of five sent: still in the file (a crash now resends them, as duplicates).
        assert!(s.file_bytes() > s.bytes());
        s.remove_front(1).unwrap();
        // Three of five: more than half, compacted.
        assert_eq!(s.file_bytes(), s.bytes());
        assert_eq!(
            fs::metadata(d.join(FILE)).unwrap().len(),
            s.bytes(),
            "the file holds what waits"
        );
        assert!(s.push(&ev(5)).unwrap());
        s.sync().unwrap();
        drop(s);
        let (mut s, _) = Spool::open(&d, 1 << 20).unwrap();
        let ids: Vec<String> = s.front(10).into_iter().map(|e| e.msg_id).collect();
        assert_eq!(ids, ["h.1.3", "h.1.4", "h.1.5"]);
        s.remove_front(10).unwrap();
        assert_eq!(fs::metadata(d.join(FILE)).unwrap().len(), 0);
        let _ = fs::remove_dir_all(d);
    }

    #[test]
    fn a_full_spool_refuses_and_a_torn_line_is_dropped() {
        let d = dir("full");
        let (mut s, _) = Spool::open(&d, 200).unwrap();
        let mut taken = 0;
        while s.push(&ev(taken)).unwrap() {
            taken += 1;
        }
        assert!(taken >= 2 && s.bytes() <= 200, "{taken} {}", s.bytes());
        // What was sent makes room again, even before it is compacted away.
        s.remove_front(1).unwrap();
        assert!(s.push(&ev(taken)).unwrap());
        assert!(s.file_bytes() <= 200);
        s.sync().unwrap();
        drop(s);
        let mut f = OpenOptions::new().append(true).open(d.join(FILE)).unwrap();
        f.write_all(b"{\"kind\":\"al").unwrap();
        drop(f);
        let (s, bad) = Spool::open(&d, 200).unwrap();
        assert_eq!((s.len(), bad), (taken, 1));
        assert_eq!(s.front(1)[0].msg_id, "h.1.1");
        let _ = fs::remove_dir_all(d);
    }
}
