//! Durable state in RocksDB: term last-seen times, the alert outbox, dead
//! letters, and per-partition checkpoints. The only module that imports
//! `rocksdb`.
//!
//! Invariants (see ARCHITECTURE.md):
//! - One [`BatchWrite`] holds a batch's term updates, its outbox rows and
//!   the partition checkpoint, and commits as one RocksDB write batch, so a
//!   crash anywhere neither loses nor doubles an alert.
//! - Newness is decided from the stored last-seen timestamp, never from a
//!   key's presence; [`Store::gc_terms`] only reclaims space. RocksDB's
//!   wall-clock TTL is never used, and a directory written by anything else
//!   (e.g. a TTL-mode DB, whose values carry a 4-byte timestamp suffix) is
//!   refused at open instead of being misread (BR-10).
//! - Keys are length-prefixed ([`term_key`]) so distinct terms never collide.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use rocksdb::{
    BlockBasedOptions, Cache, ColumnFamilyDescriptor, Direction, IteratorMode, Options, WriteBatch,
    DB,
};
use serde::{Deserialize, Serialize};

const CF_TERMS: &str = "terms";
const CF_OUTBOX: &str = "outbox";
const CF_DEAD_LETTERS: &str = "dead_letters";
const CF_CHECKPOINTS: &str = "checkpoints";
const CF_DEAD_EVENTS: &str = "dead_events";
const CF_META: &str = "meta";
const ALL_CFS: &[&str] = &[
    CF_TERMS,
    CF_OUTBOX,
    CF_DEAD_LETTERS,
    CF_CHECKPOINTS,
    CF_DEAD_EVENTS,
    CF_META,
];

/// Written once into `meta` when a state directory is created; checked on
/// every open.
const FORMAT_KEY: &[u8] = b"format";
const FORMAT_VALUE: &[u8] = b"firstseen-state/1";

/// Version byte at the start of every term value.
const TERM_VALUE_V1: u8 = 1;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("state directory {path}: {source}")]
    Open {
        path: PathBuf,
        source: rocksdb::Error,
    },
    #[error(
        "state directory {path} holds a RocksDB database that firstseen did not create \
         (no '{}' format marker; a TTL-mode or foreign DB would be misread). \
         Point --state at an empty or firstseen-owned directory",
        String::from_utf8_lossy(FORMAT_VALUE)
    )]
    ForeignDatabase { path: PathBuf },
    #[error(
        "state directory {path} has format {found:?}, this firstseen understands {expected:?}"
    )]
    UnsupportedFormat {
        path: PathBuf,
        found: String,
        expected: String,
    },
    #[error("RocksDB: {0}")]
    Rocks(#[from] rocksdb::Error),
    #[error("corrupt {what} row: {detail}")]
    Corrupt { what: &'static str, detail: String },
}

/// Where an Event Hubs partition has been consumed up to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    pub sequence_number: i64,
    pub offset: String,
    pub enqueued_time_ms: i64,
}

/// Term state: when the term was last and first seen by a matching record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TermState {
    pub last_seen_ms: i64,
    pub first_seen_ms: i64,
}

impl TermState {
    fn encode(self) -> [u8; 17] {
        let mut out = [0u8; 17];
        out[0] = TERM_VALUE_V1;
        out[1..9].copy_from_slice(&self.last_seen_ms.to_be_bytes());
        out[9..17].copy_from_slice(&self.first_seen_ms.to_be_bytes());
        out
    }

    fn decode(bytes: &[u8]) -> Result<TermState, StoreError> {
        if bytes.len() != 17 || bytes[0] != TERM_VALUE_V1 {
            return Err(StoreError::Corrupt {
                what: "term",
                detail: format!("{} bytes, version {:?}", bytes.len(), bytes.first()),
            });
        }
        Ok(TermState {
            last_seen_ms: i64::from_be_bytes(bytes[1..9].try_into().expect("8 bytes")),
            first_seen_ms: i64::from_be_bytes(bytes[9..17].try_into().expect("8 bytes")),
        })
    }
}

/// One alert row in the outbox (creation order = `seq`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutboxRow {
    pub seq: u64,
    pub id: String,
    pub created_at_ms: i64,
    /// The alert document, exactly the bytes every sink sends.
    pub body: String,
}

/// An alert that could not be delivered, with why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadLetterRow {
    pub alert: OutboxRow,
    pub reason: String,
    pub status: Option<u16>,
    pub response_excerpt: String,
    pub attempts: u32,
    pub dead_lettered_at_ms: i64,
}

/// An event body that could not be decoded, kept for inspection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadEventRow {
    pub source: String,
    pub partition: Option<String>,
    pub sequence_number: Option<i64>,
    pub error_kind: String,
    pub detail: String,
    /// The body, lossily as UTF-8 and cut at 64 KiB (a dead letter is for a
    /// human to read, not to replay megabytes).
    pub body_excerpt: String,
    pub recorded_at_ms: i64,
}

/// Everything one partition batch changes, committed atomically.
#[derive(Default)]
pub struct BatchWrite {
    batch: WriteBatch,
    terms: usize,
    alerts: usize,
}

/// The on-disk state.
pub struct Store {
    db: DB,
    path: PathBuf,
    next_seq: AtomicU64,
}

/// Length-prefixed key for a term: `rule_id` then each value, so
/// `("a|b","c")` and `("a","b|c")` can never collide.
pub fn term_key(rule_id: &str, values: &[&[u8]]) -> Vec<u8> {
    let mut key =
        Vec::with_capacity(8 + rule_id.len() + values.iter().map(|v| v.len() + 4).sum::<usize>());
    push_len_prefixed(&mut key, rule_id.as_bytes());
    key.push(u8::try_from(values.len()).unwrap_or(u8::MAX));
    for v in values {
        push_len_prefixed(&mut key, v);
    }
    key
}

fn push_len_prefixed(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&u32::try_from(bytes.len()).unwrap_or(u32::MAX).to_be_bytes());
    out.extend_from_slice(bytes);
}

impl Store {
    /// Opens (or creates) the state directory.
    ///
    /// # Errors
    /// A directory holding a RocksDB that firstseen did not create is
    /// refused (BR-10), as is an unknown format version.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        let existed = path.join("CURRENT").exists();
        let mut db_opts = Options::default();
        db_opts.create_if_missing(true);
        db_opts.create_missing_column_families(true);
        db_opts.set_keep_log_file_num(4);
        db_opts.set_max_total_wal_size(64 << 20);

        // Terms: point lookups dominate, so a whole-key Bloom filter (10
        // bits/key ≈ 1% false positives) lets "never seen" answer without
        // reading a data block; the block cache keeps hot terms in memory.
        let cache = Cache::new_lru_cache(64 << 20);
        let mut block = BlockBasedOptions::default();
        block.set_bloom_filter(10.0, false);
        block.set_block_cache(&cache);
        block.set_cache_index_and_filter_blocks(true);
        let mut term_opts = Options::default();
        term_opts.set_block_based_table_factory(&block);
        term_opts.set_compression_type(rocksdb::DBCompressionType::Lz4);
        term_opts.optimize_for_point_lookup(64);

        let cfs: Vec<ColumnFamilyDescriptor> = ALL_CFS
            .iter()
            .map(|name| {
                let opts = if *name == CF_TERMS {
                    term_opts.clone()
                } else {
                    Options::default()
                };
                ColumnFamilyDescriptor::new(*name, opts)
            })
            .collect();
        let db = if existed {
            // A foreign DB may lack our column families; open what it has
            // first so we can give a clear error instead of creating ours.
            let existing =
                DB::list_cf(&Options::default(), path).map_err(|source| StoreError::Open {
                    path: path.to_owned(),
                    source,
                })?;
            if !existing.iter().any(|c| c == CF_META) {
                return Err(StoreError::ForeignDatabase {
                    path: path.to_owned(),
                });
            }
            DB::open_cf_descriptors(&db_opts, path, cfs)
        } else {
            DB::open_cf_descriptors(&db_opts, path, cfs)
        }
        .map_err(|source| StoreError::Open {
            path: path.to_owned(),
            source,
        })?;

        let meta = db.cf_handle(CF_META).expect("meta cf opened above");
        match db.get_cf(&meta, FORMAT_KEY)? {
            Some(v) if v == FORMAT_VALUE => {}
            Some(v) => {
                return Err(StoreError::UnsupportedFormat {
                    path: path.to_owned(),
                    found: String::from_utf8_lossy(&v).into_owned(),
                    expected: String::from_utf8_lossy(FORMAT_VALUE).into_owned(),
                })
            }
            None if existed => {
                return Err(StoreError::ForeignDatabase {
                    path: path.to_owned(),
                })
            }
            None => db.put_cf(&meta, FORMAT_KEY, FORMAT_VALUE)?,
        }

        let store = Store {
            db,
            path: path.to_owned(),
            next_seq: AtomicU64::new(0),
        };
        let last = [CF_OUTBOX, CF_DEAD_LETTERS, CF_DEAD_EVENTS]
            .iter()
            .filter_map(|cf| store.last_seq(cf).transpose())
            .collect::<Result<Vec<u64>, StoreError>>()?
            .into_iter()
            .max();
        store
            .next_seq
            .store(last.map_or(1, |s| s + 1), Ordering::SeqCst);
        Ok(store)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn cf(&self, name: &str) -> &rocksdb::ColumnFamily {
        self.db
            .cf_handle(name)
            .expect("every column family is opened in Store::open")
    }

    fn last_seq(&self, cf: &str) -> Result<Option<u64>, StoreError> {
        let mut it = self.db.iterator_cf(self.cf(cf), IteratorMode::End);
        match it.next() {
            Some(item) => {
                let (k, _) = item?;
                Ok(Some(seq_from_key(&k)?))
            }
            None => Ok(None),
        }
    }

    /// Reserves the next outbox/dead-letter sequence number.
    pub fn next_seq(&self) -> u64 {
        self.next_seq.fetch_add(1, Ordering::SeqCst)
    }

    // -- terms -------------------------------------------------------------

    pub fn get_term(&self, key: &[u8]) -> Result<Option<TermState>, StoreError> {
        match self.db.get_pinned_cf(self.cf(CF_TERMS), key)? {
            Some(v) => Ok(Some(TermState::decode(&v)?)),
            None => Ok(None),
        }
    }

    /// Deletes terms last seen before `before_ms`. Returns how many.
    /// Only reclaims space: decisions never depend on it having run.
    pub fn gc_terms(&self, before_ms: i64) -> Result<u64, StoreError> {
        let cf = self.cf(CF_TERMS);
        let mut batch = WriteBatch::default();
        let mut expired = 0u64;
        for item in self.db.iterator_cf(cf, IteratorMode::Start) {
            let (k, v) = item?;
            let state = TermState::decode(&v)?;
            if state.last_seen_ms < before_ms {
                batch.delete_cf(cf, k);
                expired += 1;
                if batch.len() >= 10_000 {
                    self.db.write(std::mem::take(&mut batch))?;
                }
            }
        }
        self.db.write(batch)?;
        Ok(expired)
    }

    /// Approximate number of stored terms (RocksDB's estimate; cheap).
    pub fn estimated_terms(&self) -> u64 {
        self.db
            .property_int_value_cf(self.cf(CF_TERMS), "rocksdb.estimate-num-keys")
            .ok()
            .flatten()
            .unwrap_or(0)
    }

    /// Compacts the term column family (tests use it to prove decisions do
    /// not depend on compaction; operators never need it).
    pub fn compact_terms(&self) {
        self.db
            .compact_range_cf(self.cf(CF_TERMS), None::<&[u8]>, None::<&[u8]>);
    }

    // -- batch writes --------------------------------------------------------

    pub fn put_term(&self, w: &mut BatchWrite, key: &[u8], state: TermState) {
        w.batch.put_cf(self.cf(CF_TERMS), key, state.encode());
        w.terms += 1;
    }

    pub fn put_alert(&self, w: &mut BatchWrite, row: &OutboxRow) {
        w.batch
            .put_cf(self.cf(CF_OUTBOX), row.seq.to_be_bytes(), encode_json(row));
        w.alerts += 1;
    }

    pub fn put_checkpoint(&self, w: &mut BatchWrite, partition: &str, cp: &Checkpoint) {
        w.batch.put_cf(
            self.cf(CF_CHECKPOINTS),
            partition.as_bytes(),
            encode_json(cp),
        );
    }

    pub fn put_dead_event(&self, w: &mut BatchWrite, row: &DeadEventRow) {
        w.batch.put_cf(
            self.cf(CF_DEAD_EVENTS),
            self.next_seq().to_be_bytes(),
            encode_json(row),
        );
    }

    /// Commits a batch atomically (WAL-synced: a committed checkpoint must
    /// survive power loss, or a restart would skip events).
    pub fn commit(&self, w: BatchWrite) -> Result<(), StoreError> {
        let mut opts = rocksdb::WriteOptions::default();
        opts.set_sync(true);
        self.db.write_opt(w.batch, &opts)?;
        Ok(())
    }

    // -- checkpoints ---------------------------------------------------------

    pub fn checkpoint(&self, partition: &str) -> Result<Option<Checkpoint>, StoreError> {
        match self
            .db
            .get_cf(self.cf(CF_CHECKPOINTS), partition.as_bytes())?
        {
            Some(v) => decode_json("checkpoint", &v).map(Some),
            None => Ok(None),
        }
    }

    pub fn checkpoints(&self) -> Result<Vec<(String, Checkpoint)>, StoreError> {
        let mut out = Vec::new();
        for item in self
            .db
            .iterator_cf(self.cf(CF_CHECKPOINTS), IteratorMode::Start)
        {
            let (k, v) = item?;
            out.push((
                String::from_utf8_lossy(&k).into_owned(),
                decode_json("checkpoint", &v)?,
            ));
        }
        Ok(out)
    }

    // -- outbox --------------------------------------------------------------

    /// Pending alerts in creation order, after `after` (exclusive).
    pub fn outbox_pending(
        &self,
        after: Option<u64>,
        limit: usize,
    ) -> Result<Vec<OutboxRow>, StoreError> {
        let start = after.map_or(0, |s| s.saturating_add(1)).to_be_bytes();
        let mode = IteratorMode::From(&start, Direction::Forward);
        let mut out = Vec::new();
        for item in self.db.iterator_cf(self.cf(CF_OUTBOX), mode).take(limit) {
            let (_, v) = item?;
            out.push(decode_json("outbox", &v)?);
        }
        Ok(out)
    }

    pub fn outbox_count(&self) -> Result<u64, StoreError> {
        let mut n = 0;
        for item in self.db.iterator_cf(self.cf(CF_OUTBOX), IteratorMode::Start) {
            item?;
            n += 1;
        }
        Ok(n)
    }

    pub fn outbox_get(&self, seq: u64) -> Result<Option<OutboxRow>, StoreError> {
        match self.db.get_cf(self.cf(CF_OUTBOX), seq.to_be_bytes())? {
            Some(v) => decode_json("outbox", &v).map(Some),
            None => Ok(None),
        }
    }

    /// Removes a delivered alert.
    pub fn outbox_remove(&self, seq: u64) -> Result<(), StoreError> {
        self.db.delete_cf(self.cf(CF_OUTBOX), seq.to_be_bytes())?;
        Ok(())
    }

    /// Moves an alert from the outbox to the dead letters atomically.
    pub fn dead_letter(&self, row: DeadLetterRow) -> Result<(), StoreError> {
        let mut batch = WriteBatch::default();
        batch.delete_cf(self.cf(CF_OUTBOX), row.alert.seq.to_be_bytes());
        batch.put_cf(
            self.cf(CF_DEAD_LETTERS),
            row.alert.seq.to_be_bytes(),
            encode_json(&row),
        );
        self.db.write(batch)?;
        Ok(())
    }

    pub fn dead_letters(&self) -> Result<Vec<DeadLetterRow>, StoreError> {
        let mut out = Vec::new();
        for item in self
            .db
            .iterator_cf(self.cf(CF_DEAD_LETTERS), IteratorMode::Start)
        {
            let (_, v) = item?;
            out.push(decode_json("dead letter", &v)?);
        }
        Ok(out)
    }

    /// Moves a dead letter back to the outbox under a new sequence number
    /// (so it is retried after what is already pending). Returns false when
    /// there is no such dead letter.
    pub fn requeue_dead_letter(&self, seq: u64) -> Result<bool, StoreError> {
        let cf_dead = self.cf(CF_DEAD_LETTERS);
        let Some(v) = self.db.get_cf(cf_dead, seq.to_be_bytes())? else {
            return Ok(false);
        };
        let dead: DeadLetterRow = decode_json("dead letter", &v)?;
        let mut alert = dead.alert;
        alert.seq = self.next_seq();
        let mut batch = WriteBatch::default();
        batch.delete_cf(cf_dead, seq.to_be_bytes());
        batch.put_cf(
            self.cf(CF_OUTBOX),
            alert.seq.to_be_bytes(),
            encode_json(&alert),
        );
        self.db.write(batch)?;
        Ok(true)
    }

    /// Deletes every dead letter. Returns how many.
    pub fn purge_dead_letters(&self) -> Result<u64, StoreError> {
        let cf = self.cf(CF_DEAD_LETTERS);
        let mut batch = WriteBatch::default();
        let mut n = 0;
        for item in self.db.iterator_cf(cf, IteratorMode::Start) {
            let (k, _) = item?;
            batch.delete_cf(cf, k);
            n += 1;
        }
        self.db.write(batch)?;
        Ok(n)
    }

    pub fn dead_events(&self) -> Result<Vec<DeadEventRow>, StoreError> {
        let mut out = Vec::new();
        for item in self
            .db
            .iterator_cf(self.cf(CF_DEAD_EVENTS), IteratorMode::Start)
        {
            let (_, v) = item?;
            out.push(decode_json("dead event", &v)?);
        }
        Ok(out)
    }
}

impl BatchWrite {
    pub fn terms(&self) -> usize {
        self.terms
    }
    pub fn alerts(&self) -> usize {
        self.alerts
    }
}

fn seq_from_key(k: &[u8]) -> Result<u64, StoreError> {
    let bytes: [u8; 8] = k.try_into().map_err(|_| StoreError::Corrupt {
        what: "sequence key",
        detail: format!("{} bytes", k.len()),
    })?;
    Ok(u64::from_be_bytes(bytes))
}

fn encode_json<T: Serialize>(v: &T) -> Vec<u8> {
    serde_json::to_vec(v).expect("state rows are plain data and always serialize")
}

fn decode_json<T: for<'de> Deserialize<'de>>(
    what: &'static str,
    bytes: &[u8],
) -> Result<T, StoreError> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt {
        what,
        detail: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn term_keys_are_length_prefixed_and_never_collide() {
        let a = term_key("r", &[b"a|b", b"c"]);
        let b = term_key("r", &[b"a", b"b|c"]);
        let c = term_key("r|a", &[b"b", b"c"]);
        assert_ne!(a, b);
        assert_ne!(a, c);
        assert_ne!(term_key("r", &[b"ab"]), term_key("r", &[b"a", b"b"]));
    }

    #[test]
    fn batch_commit_is_atomic_and_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(dir.path()).unwrap();
            let mut w = BatchWrite::default();
            let key = term_key("rule", &[b"vm1", b"64500"]);
            store.put_term(
                &mut w,
                &key,
                TermState {
                    last_seen_ms: 5,
                    first_seen_ms: 1,
                },
            );
            let seq = store.next_seq();
            store.put_alert(
                &mut w,
                &OutboxRow {
                    seq,
                    id: "a1".into(),
                    created_at_ms: 9,
                    body: "{}".into(),
                },
            );
            store.put_checkpoint(
                &mut w,
                "0",
                &Checkpoint {
                    sequence_number: 7,
                    offset: "70".into(),
                    enqueued_time_ms: 3,
                },
            );
            // Nothing visible before commit.
            assert_eq!(store.get_term(&key).unwrap(), None);
            assert_eq!(store.checkpoint("0").unwrap(), None);
            store.commit(w).unwrap();
        }
        let store = Store::open(dir.path()).unwrap();
        let key = term_key("rule", &[b"vm1", b"64500"]);
        assert_eq!(store.get_term(&key).unwrap().unwrap().last_seen_ms, 5);
        assert_eq!(store.checkpoint("0").unwrap().unwrap().sequence_number, 7);
        let pending = store.outbox_pending(None, 10).unwrap();
        assert_eq!(pending.len(), 1);
        // Sequence numbers continue after a reopen.
        assert!(store.next_seq() > pending[0].seq);
    }

    #[test]
    fn outbox_dead_letter_requeue_and_purge() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let mut w = BatchWrite::default();
        for id in ["a", "b", "c"] {
            let seq = store.next_seq();
            store.put_alert(
                &mut w,
                &OutboxRow {
                    seq,
                    id: id.into(),
                    created_at_ms: 0,
                    body: "{}".into(),
                },
            );
        }
        store.commit(w).unwrap();
        let rows = store.outbox_pending(None, 10).unwrap();
        assert_eq!(
            rows.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(),
            ["a", "b", "c"]
        );
        assert_eq!(
            store.outbox_pending(Some(rows[0].seq), 10).unwrap().len(),
            2
        );
        store.outbox_remove(rows[0].seq).unwrap();
        store
            .dead_letter(DeadLetterRow {
                alert: rows[1].clone(),
                reason: "4xx".into(),
                status: Some(400),
                response_excerpt: "bad".into(),
                attempts: 1,
                dead_lettered_at_ms: 0,
            })
            .unwrap();
        assert_eq!(store.outbox_count().unwrap(), 1);
        assert_eq!(store.dead_letters().unwrap().len(), 1);
        assert!(store.requeue_dead_letter(rows[1].seq).unwrap());
        assert!(!store.requeue_dead_letter(rows[1].seq).unwrap());
        let pending = store.outbox_pending(None, 10).unwrap();
        // Requeued alerts go to the back of the queue.
        assert_eq!(
            pending.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(),
            ["c", "b"]
        );
        assert_eq!(store.purge_dead_letters().unwrap(), 0);
    }

    #[test]
    fn gc_removes_only_terms_older_than_the_cutoff() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let mut w = BatchWrite::default();
        for (name, last) in [("old", 10), ("new", 100)] {
            store.put_term(
                &mut w,
                &term_key("r", &[name.as_bytes()]),
                TermState {
                    last_seen_ms: last,
                    first_seen_ms: last,
                },
            );
        }
        store.commit(w).unwrap();
        assert_eq!(store.gc_terms(50).unwrap(), 1);
        assert!(store.get_term(&term_key("r", &[b"old"])).unwrap().is_none());
        assert!(store.get_term(&term_key("r", &[b"new"])).unwrap().is_some());
    }

    /// BR-10: a database written in RocksDB's TTL mode (values carry a
    /// 4-byte timestamp suffix) is refused, never misread.
    #[test]
    fn br_10_refuses_a_ttl_mode_database() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut opts = Options::default();
            opts.create_if_missing(true);
            let db =
                DB::open_with_ttl(&opts, dir.path(), std::time::Duration::from_secs(2)).unwrap();
            db.put(b"k", b"v").unwrap();
        }
        let err = Store::open(dir.path()).err().expect("must refuse");
        assert!(matches!(err, StoreError::ForeignDatabase { .. }), "{err}");
        assert!(err.to_string().contains("did not create"));
    }
}
