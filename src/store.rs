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
    BlockBasedIndexType, BlockBasedOptions, Cache, ColumnFamilyDescriptor, DBCompressionType,
    DataBlockIndexType, Direction, IteratorMode, Options, WriteBatch, DB,
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
    /// When the alert entered the outbox: its commit, or its requeue from
    /// the dead letters. A sink's `max_age` counts from here.
    pub created_at_ms: i64,
    /// The alert document, exactly the bytes every sink sends.
    pub body: String,
}

/// An alert that could not be delivered, with why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadLetterRow {
    /// The sink that gave up.
    pub sink: String,
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
    /// Serializes batch commits with the term GC's deletes: GC re-reads a
    /// term under this lock before deleting it, so a term the evaluator
    /// has just refreshed is never deleted by a sweep that saw its old
    /// value (that would make its next record alert a second time).
    term_writes: std::sync::Mutex<()>,
}

/// RocksDB settings of the `terms` column family, the only one that grows
/// with the data (BENCHMARKS.md, "State scale", measures them at 10
/// million terms).
///
/// Terms are small (a ~100-byte key, a 17-byte value) and read by point
/// lookups only, most of them for keys that do not exist yet (every new
/// term is a miss first), so the defaults are:
/// - a whole-key Bloom filter, 10 bits/key (~1% false positives), so a miss
///   is answered from the filter without reading a data block;
/// - index and filter blocks held by the table readers, outside the block
///   cache, always in memory: the filter is 10 bits per term (12.5 MB at
///   10 million terms), plus the index (not measured separately). Charging them to a 64 MiB cache instead made lookups that
///   missed the cache re-read, checksum and decompress whole filter and
///   index blocks of large SST files: at 10 million terms, 61× fewer
///   lookups of existing terms and 174× fewer of absent ones per second
///   (BENCHMARKS.md, "State scale"). Partitioned index and filters
///   bound that memory if term counts ever reach billions, at 5–47% of
///   lookup speed at 10 million;
/// - a 64 MiB LRU block cache for data blocks;
/// - a hash index inside data blocks (binary search replaced by a hash
///   probe for point lookups);
/// - LZ4 compression: keys share long prefixes (rule id, length fields),
///   which RocksDB's prefix encoding removes; LZ4 takes the rest at little
///   CPU cost;
/// - a whole-key Bloom filter on the memtable, so recently written terms
///   are found, and absent ones rejected, without a memtable search.
///
/// These are the settings `Store::open` had before they were made
/// explicit (`optimize_for_point_lookup(64)`, which replaced the table
/// options set before it).
#[derive(Debug, Clone, PartialEq)]
pub struct StoreTuning {
    /// Block cache for the term column family, in bytes.
    pub block_cache_bytes: usize,
    /// Bloom filter bits per key; 0 disables the filter.
    pub bloom_bits_per_key: f64,
    /// Charge index and filter blocks to the block cache (bounded memory)
    /// rather than keeping them in table readers outside it.
    pub cache_index_and_filter_blocks: bool,
    /// Two-level (partitioned) index and filters: with
    /// `cache_index_and_filter_blocks`, only small partitions go through
    /// the cache; the top levels are pinned.
    pub partitioned_index_and_filters: bool,
    /// Hash index in data blocks for point lookups.
    pub data_block_hash_index: bool,
    /// LZ4 compression of data blocks (false: none).
    pub lz4: bool,
    /// Data block size, in bytes.
    pub block_size: usize,
    /// Memtable whole-key Bloom filter (as a share of the memtable size;
    /// 0 disables it).
    pub memtable_bloom_ratio: f64,
}

impl Default for StoreTuning {
    fn default() -> Self {
        StoreTuning {
            block_cache_bytes: 64 << 20,
            bloom_bits_per_key: 10.0,
            cache_index_and_filter_blocks: false,
            partitioned_index_and_filters: false,
            data_block_hash_index: true,
            lz4: true,
            block_size: 4096,
            memtable_bloom_ratio: 0.02,
        }
    }
}

impl StoreTuning {
    fn term_options(&self) -> Options {
        let cache = Cache::new_lru_cache(self.block_cache_bytes);
        let mut block = BlockBasedOptions::default();
        if self.bloom_bits_per_key > 0.0 {
            block.set_bloom_filter(self.bloom_bits_per_key, false);
            block.set_whole_key_filtering(true);
        }
        block.set_block_cache(&cache);
        block.set_block_size(self.block_size);
        block.set_cache_index_and_filter_blocks(self.cache_index_and_filter_blocks);
        block.set_pin_l0_filter_and_index_blocks_in_cache(self.cache_index_and_filter_blocks);
        if self.partitioned_index_and_filters {
            block.set_index_type(BlockBasedIndexType::TwoLevelIndexSearch);
            block.set_partition_filters(true);
            block.set_metadata_block_size(4096);
            block.set_pin_top_level_index_and_filter(true);
        }
        if self.data_block_hash_index {
            block.set_data_block_index_type(DataBlockIndexType::BinaryAndHash);
            block.set_data_block_hash_ratio(0.75);
        }
        let mut opts = Options::default();
        opts.set_block_based_table_factory(&block);
        opts.set_compression_type(if self.lz4 {
            DBCompressionType::Lz4
        } else {
            DBCompressionType::None
        });
        if self.memtable_bloom_ratio > 0.0 {
            opts.set_memtable_prefix_bloom_ratio(self.memtable_bloom_ratio);
            opts.set_memtable_whole_key_filtering(true);
        }
        opts
    }
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
        Store::open_tuned(path, &StoreTuning::default())
    }

    /// [`Store::open`] with explicit RocksDB settings for the term column
    /// family (benchmarks compare settings; the defaults are what the
    /// service uses).
    ///
    /// # Errors
    /// As [`Store::open`].
    pub fn open_tuned(path: &Path, tuning: &StoreTuning) -> Result<Store, StoreError> {
        let existed = path.join("CURRENT").exists();
        let mut db_opts = Options::default();
        db_opts.create_if_missing(true);
        db_opts.create_missing_column_families(true);
        db_opts.set_keep_log_file_num(4);
        db_opts.set_max_total_wal_size(64 << 20);
        let term_opts = tuning.term_options();

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
            term_writes: std::sync::Mutex::new(()),
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

    /// Opens an existing state directory read-only, without taking
    /// RocksDB's lock, so `firstseen alerts list|show` can inspect the
    /// outbox while the service runs (it sees the state as of the open).
    ///
    /// # Errors
    /// No database there, not firstseen's (format marker), or unreadable.
    pub fn open_read_only(path: &Path) -> Result<Store, StoreError> {
        let open_error = |source| StoreError::Open {
            path: path.to_owned(),
            source,
        };
        let existing = DB::list_cf(&Options::default(), path).map_err(open_error)?;
        if !existing.iter().any(|c| c == CF_META) {
            return Err(StoreError::ForeignDatabase {
                path: path.to_owned(),
            });
        }
        let db = DB::open_cf_for_read_only(&Options::default(), path, ALL_CFS, false)
            .map_err(open_error)?;
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
            None => {
                return Err(StoreError::ForeignDatabase {
                    path: path.to_owned(),
                })
            }
        }
        Ok(Store {
            db,
            path: path.to_owned(),
            next_seq: AtomicU64::new(0),
            term_writes: std::sync::Mutex::new(()),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn cf(&self, name: &str) -> &rocksdb::ColumnFamily {
        self.db
            .cf_handle(name)
            .expect("every column family is opened in Store::open")
    }

    /// The highest sequence number used in a column family. Keys end in the
    /// 8-byte sequence number; outbox keys are per-sink prefixed, so the
    /// whole (small) family is scanned.
    fn last_seq(&self, cf: &str) -> Result<Option<u64>, StoreError> {
        let mut max = None;
        for item in self.db.iterator_cf(self.cf(cf), IteratorMode::Start) {
            let (k, _) = item?;
            let seq = seq_from_key(&k[k.len().saturating_sub(8)..])?;
            max = max.max(Some(seq));
        }
        Ok(max)
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
        let mut expired = 0u64;
        let mut candidates: Vec<Box<[u8]>> = Vec::new();
        // A full scan must not evict the hot terms from the block cache.
        let mut scan = rocksdb::ReadOptions::default();
        scan.fill_cache(false);
        for item in self.db.iterator_cf_opt(cf, scan, IteratorMode::Start) {
            let (k, v) = item?;
            if TermState::decode(&v)?.last_seen_ms < before_ms {
                candidates.push(k);
                if candidates.len() >= 10_000 {
                    expired += self.delete_if_still_expired(&mut candidates, before_ms)?;
                }
            }
        }
        expired += self.delete_if_still_expired(&mut candidates, before_ms)?;
        Ok(expired)
    }

    /// Deletes the `candidates` whose stored last-seen is still before
    /// `before_ms`, re-read under the commit lock (see `term_writes`).
    fn delete_if_still_expired(
        &self,
        candidates: &mut Vec<Box<[u8]>>,
        before_ms: i64,
    ) -> Result<u64, StoreError> {
        let cf = self.cf(CF_TERMS);
        let _commits_wait = self
            .term_writes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut batch = WriteBatch::default();
        let mut n = 0;
        // The candidates come from a scan, so they are in key order: one
        // sorted multi-get reads each data block once, where a get per key
        // would search the index and filters for every key.
        let current = self.db.batched_multi_get_cf(cf, candidates.iter(), true);
        for (key, value) in candidates.iter().zip(current) {
            if let Some(v) = value? {
                if TermState::decode(&v)?.last_seen_ms < before_ms {
                    batch.delete_cf(cf, key);
                    n += 1;
                }
            }
        }
        candidates.clear();
        self.db.write(batch)?;
        Ok(n)
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

    /// Queues an alert for one sink (call once per configured sink).
    pub fn put_alert(&self, w: &mut BatchWrite, sink: &str, row: &OutboxRow) {
        w.batch.put_cf(
            self.cf(CF_OUTBOX),
            outbox_key(sink, row.seq),
            encode_json(row),
        );
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
        let _no_gc_delete_meanwhile = self
            .term_writes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
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
    //
    // Each sink drains its own queue (see `sink` module doc): an outbox or
    // dead-letter key is `len(sink) ‖ sink ‖ seq (u64 BE)`, so one prefix
    // scan yields one sink's alerts in creation order.

    /// Pending alerts of one sink in creation order, after `after`
    /// (exclusive).
    pub fn outbox_pending(
        &self,
        sink: &str,
        after: Option<u64>,
        limit: usize,
    ) -> Result<Vec<OutboxRow>, StoreError> {
        let start = outbox_key(sink, after.map_or(0, |s| s.saturating_add(1)));
        let prefix = sink_prefix(sink);
        let mode = IteratorMode::From(&start, Direction::Forward);
        let mut out = Vec::new();
        for item in self.db.iterator_cf(self.cf(CF_OUTBOX), mode) {
            let (k, v) = item?;
            if !k.starts_with(&prefix) || out.len() >= limit {
                break;
            }
            out.push(decode_json("outbox", &v)?);
        }
        Ok(out)
    }

    /// Every pending alert of every sink: `(sink, row)` in key order.
    pub fn outbox_all(&self) -> Result<Vec<(String, OutboxRow)>, StoreError> {
        let mut out = Vec::new();
        for item in self.db.iterator_cf(self.cf(CF_OUTBOX), IteratorMode::Start) {
            let (k, v) = item?;
            out.push((sink_from_key(&k)?, decode_json("outbox", &v)?));
        }
        Ok(out)
    }

    /// Alerts waiting for one sink.
    pub fn outbox_count(&self, sink: &str) -> Result<u64, StoreError> {
        let prefix = sink_prefix(sink);
        let mode = IteratorMode::From(&prefix, Direction::Forward);
        let mut n = 0;
        for item in self.db.iterator_cf(self.cf(CF_OUTBOX), mode) {
            let (k, _) = item?;
            if !k.starts_with(&prefix) {
                break;
            }
            n += 1;
        }
        Ok(n)
    }

    /// Alerts waiting for any sink (one per sink and alert).
    pub fn outbox_count_all(&self) -> Result<u64, StoreError> {
        let mut n = 0;
        for item in self.db.iterator_cf(self.cf(CF_OUTBOX), IteratorMode::Start) {
            item?;
            n += 1;
        }
        Ok(n)
    }

    pub fn outbox_get(&self, sink: &str, seq: u64) -> Result<Option<OutboxRow>, StoreError> {
        match self.db.get_cf(self.cf(CF_OUTBOX), outbox_key(sink, seq))? {
            Some(v) => decode_json("outbox", &v).map(Some),
            None => Ok(None),
        }
    }

    /// Removes an alert that `sink` delivered (absent is not an error).
    pub fn outbox_remove(&self, sink: &str, seq: u64) -> Result<(), StoreError> {
        let mut opts = rocksdb::WriteOptions::default();
        opts.set_sync(true);
        let mut batch = WriteBatch::default();
        batch.delete_cf(self.cf(CF_OUTBOX), outbox_key(sink, seq));
        self.db.write_opt(batch, &opts)?;
        Ok(())
    }

    /// Moves an alert from a sink's outbox to the dead letters atomically.
    pub fn dead_letter(&self, row: DeadLetterRow) -> Result<(), StoreError> {
        let key = outbox_key(&row.sink, row.alert.seq);
        let mut batch = WriteBatch::default();
        batch.delete_cf(self.cf(CF_OUTBOX), &key);
        batch.put_cf(self.cf(CF_DEAD_LETTERS), &key, encode_json(&row));
        let mut opts = rocksdb::WriteOptions::default();
        opts.set_sync(true);
        self.db.write_opt(batch, &opts)?;
        Ok(())
    }

    /// Every dead letter, per sink in creation order.
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

    /// Moves a dead letter back to its sink's outbox under a new sequence
    /// number (so it is retried after what is already pending) with its age
    /// clock restarted at `now_ms`. Returns false when there is no such
    /// dead letter.
    pub fn requeue_dead_letter(
        &self,
        sink: &str,
        seq: u64,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        let cf_dead = self.cf(CF_DEAD_LETTERS);
        let key = outbox_key(sink, seq);
        let Some(v) = self.db.get_cf(cf_dead, &key)? else {
            return Ok(false);
        };
        let dead: DeadLetterRow = decode_json("dead letter", &v)?;
        let mut alert = dead.alert;
        alert.seq = self.next_seq();
        // A requeue is a fresh start: without it an alert dead-lettered
        // for age would expire again before its first new attempt.
        alert.created_at_ms = now_ms;
        let mut batch = WriteBatch::default();
        batch.delete_cf(cf_dead, &key);
        batch.put_cf(
            self.cf(CF_OUTBOX),
            outbox_key(sink, alert.seq),
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

    /// Deletes undecodable bodies recorded before `before_ms`. Rows are
    /// keyed by an increasing sequence number, so the sweep stops at the
    /// first newer one. Returns how many were deleted.
    pub fn gc_dead_events(&self, before_ms: i64) -> Result<u64, StoreError> {
        let cf = self.cf(CF_DEAD_EVENTS);
        let mut batch = WriteBatch::default();
        let mut n = 0;
        for item in self.db.iterator_cf(cf, IteratorMode::Start) {
            let (k, v) = item?;
            let row: DeadEventRow = decode_json("dead event", &v)?;
            if row.recorded_at_ms >= before_ms {
                break;
            }
            batch.delete_cf(cf, k);
            n += 1;
        }
        self.db.write(batch)?;
        Ok(n)
    }

    /// Deletes every undecodable body. Returns how many.
    pub fn purge_dead_events(&self) -> Result<u64, StoreError> {
        self.gc_dead_events(i64::MAX)
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

/// `len(sink) ‖ sink`: the key prefix of one sink's outbox rows. Sink names
/// are validated to at most 64 ASCII characters.
fn sink_prefix(sink: &str) -> Vec<u8> {
    let name = &sink.as_bytes()[..sink.len().min(255)];
    let mut out = Vec::with_capacity(1 + name.len() + 8);
    out.push(name.len() as u8);
    out.extend_from_slice(name);
    out
}

fn outbox_key(sink: &str, seq: u64) -> Vec<u8> {
    let mut key = sink_prefix(sink);
    key.extend_from_slice(&seq.to_be_bytes());
    key
}

fn sink_from_key(k: &[u8]) -> Result<String, StoreError> {
    let corrupt = || StoreError::Corrupt {
        what: "outbox key",
        detail: format!("{} bytes", k.len()),
    };
    let len = usize::from(*k.first().ok_or_else(corrupt)?);
    let name = k.get(1..1 + len).ok_or_else(corrupt)?;
    Ok(String::from_utf8_lossy(name).into_owned())
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
                "soar",
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
        let pending = store.outbox_pending("soar", None, 10).unwrap();
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
            let row = OutboxRow {
                seq: store.next_seq(),
                id: id.into(),
                created_at_ms: 0,
                body: "{}".into(),
            };
            // Each sink gets its own copy, drained independently.
            store.put_alert(&mut w, "soar", &row);
            store.put_alert(&mut w, "so", &row);
        }
        store.commit(w).unwrap();
        let rows = store.outbox_pending("soar", None, 10).unwrap();
        assert_eq!(
            rows.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(),
            ["a", "b", "c"]
        );
        assert_eq!(store.outbox_pending("soar", None, 2).unwrap().len(), 2);
        assert_eq!(
            store
                .outbox_pending("soar", Some(rows[0].seq), 10)
                .unwrap()
                .len(),
            2
        );
        store.outbox_remove("soar", rows[0].seq).unwrap();
        store
            .dead_letter(DeadLetterRow {
                sink: "soar".into(),
                alert: rows[1].clone(),
                reason: "rejected".into(),
                status: Some(400),
                response_excerpt: "bad".into(),
                attempts: 1,
                dead_lettered_at_ms: 0,
            })
            .unwrap();
        assert_eq!(store.outbox_count("soar").unwrap(), 1);
        // The other sink (whose name is a prefix of the first) is untouched.
        assert_eq!(store.outbox_count("so").unwrap(), 3);
        assert_eq!(store.outbox_all().unwrap().len(), 4);
        assert_eq!(store.dead_letters().unwrap().len(), 1);
        assert!(store
            .requeue_dead_letter("soar", rows[1].seq, 5_000)
            .unwrap());
        assert!(!store
            .requeue_dead_letter("soar", rows[1].seq, 5_000)
            .unwrap());
        let pending = store.outbox_pending("soar", None, 10).unwrap();
        // The age clock restarts at the requeue (max_age counts from it).
        assert_eq!(pending[1].created_at_ms, 5_000);
        // Requeued alerts go to the back of the queue.
        assert_eq!(
            pending.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(),
            ["c", "b"]
        );
        assert_eq!(store.purge_dead_letters().unwrap(), 0);
        // Sequence numbers continue after a reopen.
        let last = pending[1].seq;
        drop(store);
        let store = Store::open(dir.path()).unwrap();
        assert!(store.next_seq() > last);
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

    /// A term the evaluator refreshes after the sweep saw it old is kept:
    /// deleting it would make its next record inside the window alert again.
    #[test]
    fn gc_keeps_a_term_refreshed_after_the_scan() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let key = term_key("r", &[b"t"]);
        let put = |last| {
            let mut w = BatchWrite::default();
            store.put_term(
                &mut w,
                &key,
                TermState {
                    last_seen_ms: last,
                    first_seen_ms: 10,
                },
            );
            store.commit(w).unwrap();
        };
        put(10);
        // The sweep's scan saw the term old...
        let mut candidates: Vec<Box<[u8]>> = vec![key.clone().into_boxed_slice()];
        // ...then a record refreshed it before the delete landed.
        put(1_000);
        assert_eq!(
            store.delete_if_still_expired(&mut candidates, 50).unwrap(),
            0
        );
        assert_eq!(store.get_term(&key).unwrap().unwrap().last_seen_ms, 1_000);
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
