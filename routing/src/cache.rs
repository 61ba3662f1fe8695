//! The classification cache: statement text → [`Analysis`], bounded.
//!
//! A prepared statement is routed at every execution, so classification
//! must usually be a lookup. The cache is sharded (each shard behind an
//! uncontended-in-practice `Mutex`) and evicts by generations: each shard
//! fills a `current` map; when it is full, `current` becomes `previous` and
//! the old `previous` is dropped whole. A hit in `previous` moves the entry
//! back to `current`, so hot statements survive. Memory stays bounded by
//! entry count and by text bytes, and eviction costs no bookkeeping per hit.
//!
//! [`Classifier`] caches a text only the second time it sees it, so texts
//! with inlined literals, seen once, do not churn the cache.
//!
//! Entries are keyed by a seeded 64-bit hash of the text's shape
//! (`crate::shape`: texts that differ only in their numbers share an
//! entry, unless their digits may matter) and store the text to confirm a
//! hit (a collision is a miss, never a wrong answer). Each
//! entry also stores the epoch of the function catalog it was computed
//! with: a new catalog or `read_only_functions` list invalidates everything
//! at once without a sweep.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use arc_swap::cache::Cache;

use crate::classify::{Analysis, Class, analyze};
use crate::functions::{FunctionCatalog, ReadOnlyFunctions};
use crate::hash::{FxBuild, IdentityBuild};
use crate::server_effects::{ServerEffects, lexed_effects, may_have_effects};
use crate::shape::{digits_matter, same_shape, shape_hash};

/// Statements longer than this are classified every time, not cached (a
/// huge text is rare and would crowd out many small ones).
pub const MAX_CACHED_TEXT: usize = 16 * 1024;

const SHARDS: usize = 16;

/// Cloned cheaply (two reference counts): a session keeps a copy as its
/// [`LastAnalysis`].
#[derive(Debug, Clone)]
struct Entry {
    /// Shared with the sessions whose last text it is ([`LastAnalysis`]).
    text: Arc<str>,
    /// Whether the analysis holds for every text of this one's shape (its
    /// digits do not matter), or only for this exact text.
    shaped: bool,
    epoch: u64,
    analysis: Arc<Analysis>,
}

impl Entry {
    /// Whether this entry answers for `sql` at `epoch`.
    fn answers(&self, sql: &str, epoch: u64) -> bool {
        self.epoch == epoch
            && if self.shaped {
                // Texts of one shape agree on whether digits matter.
                same_shape(&self.text, sql)
            } else {
                &*self.text == sql
            }
    }
}

#[derive(Default)]
struct Shard {
    current: HashMap<u64, Entry, IdentityBuild>,
    previous: HashMap<u64, Entry, IdentityBuild>,
    current_bytes: usize,
}

/// A bounded, concurrent map from statement text to its analysis.
pub struct StatementCache {
    shards: Box<[Mutex<Shard>]>,
    hasher: FxBuild,
    /// Most entries in one shard's generation.
    generation_entries: usize,
    /// Most text bytes in one shard's generation.
    generation_bytes: usize,
}

impl StatementCache {
    /// A cache holding at most `capacity` statements and about
    /// `capacity * 1 KiB` bytes of text (whichever is hit first).
    pub fn new(capacity: usize) -> Self {
        let per_shard = capacity.div_ceil(SHARDS).max(2);
        Self {
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
            hasher: FxBuild::random(),
            generation_entries: per_shard / 2,
            generation_bytes: per_shard / 2 * 1024,
        }
    }

    fn shard(&self, hash: u64) -> std::sync::MutexGuard<'_, Shard> {
        // The top bits pick the shard; hashbrown uses the low bits.
        let i = (hash >> 59) as usize % SHARDS;
        // A panic while holding a shard leaves valid maps behind: go on.
        self.shards[i].lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The key of `sql`: the hash of its shape (computed once, then
    /// [`Self::get_keyed`] and [`Self::insert_keyed`] on a miss).
    pub fn key(&self, sql: &str) -> u64 {
        shape_hash(&self.hasher, sql)
    }

    /// The cached analysis of `sql` computed at `epoch`, if any.
    pub fn get(&self, sql: &str, epoch: u64) -> Option<Arc<Analysis>> {
        self.get_keyed(self.key(sql), sql, epoch)
    }

    /// [`Self::get`] with the key already computed.
    pub fn get_keyed(&self, hash: u64, sql: &str, epoch: u64) -> Option<Arc<Analysis>> {
        self.lookup(hash, sql, epoch, |e| e.analysis.clone())
    }

    /// `f` of the entry that answers for `sql` at `epoch`, if any.
    fn lookup<R>(
        &self,
        hash: u64,
        sql: &str,
        epoch: u64,
        f: impl FnOnce(&Entry) -> R,
    ) -> Option<R> {
        let mut shard = self.shard(hash);
        if let Some(e) = shard.current.get(&hash) {
            return e.answers(sql, epoch).then(|| f(e));
        }
        let e = shard.previous.remove(&hash)?;
        if !e.answers(sql, epoch) {
            return None;
        }
        let r = f(&e);
        let evicted = shard.insert(hash, e, self.generation_entries, self.generation_bytes);
        drop(shard);
        drop(evicted);
        Some(r)
    }

    /// Caches `analysis` for `sql` at `epoch` (replacing whatever shared its
    /// hash). Texts over [`MAX_CACHED_TEXT`] are not cached.
    pub fn insert(&self, sql: &str, epoch: u64, analysis: Arc<Analysis>) {
        self.insert_keyed(self.key(sql), sql, epoch, analysis)
    }

    /// [`Self::insert`] with the key already computed.
    pub fn insert_keyed(&self, hash: u64, sql: &str, epoch: u64, analysis: Arc<Analysis>) {
        if sql.len() > MAX_CACHED_TEXT {
            return;
        }
        let entry = Entry {
            text: sql.into(),
            shaped: !digits_matter(sql),
            epoch,
            analysis,
        };
        let mut shard = self.shard(hash);
        let evicted = shard.insert(hash, entry, self.generation_entries, self.generation_bytes);
        // Free the dropped generation after unlocking.
        drop(shard);
        drop(evicted);
    }

    /// Number of cached statements.
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| {
                let s = s.lock().unwrap_or_else(|p| p.into_inner());
                s.current.len() + s.previous.len()
            })
            .sum()
    }

    /// Whether nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Shard {
    /// Inserts, rotating generations first if `current` is full. Returns
    /// the dropped generation so the caller can free it outside the lock.
    fn insert(
        &mut self,
        hash: u64,
        entry: Entry,
        max_entries: usize,
        max_bytes: usize,
    ) -> HashMap<u64, Entry, IdentityBuild> {
        let mut evicted = HashMap::default();
        if !self.current.contains_key(&hash)
            && (self.current.len() >= max_entries
                || self.current_bytes + entry.text.len() > max_bytes)
        {
            evicted = std::mem::replace(&mut self.previous, std::mem::take(&mut self.current));
            self.current_bytes = 0;
        }
        self.current_bytes += entry.text.len();
        if let Some(old) = self.current.insert(hash, entry) {
            self.current_bytes -= old.text.len();
        }
        self.previous.remove(&hash);
        evicted
    }
}

/// What classification depends on besides the text.
struct Inputs {
    catalog: Arc<FunctionCatalog>,
    extra: Arc<ReadOnlyFunctions>,
    /// The config list `extra` was built from, to notice a reload.
    extra_source: Vec<String>,
    epoch: u64,
}

/// The analysis of one statement text, kept with the statement (a
/// client's prepared statement): see [`Classifier::analyze_memo`].
#[derive(Debug, Default)]
pub struct AnalysisMemo(Mutex<Option<(u64, Arc<Analysis>)>>);

/// A session's last few analyzed texts that were in the cache, with their
/// analyses: clients that send one statement shape over and over (with
/// new literals each time, as `pgbench -S`), or a transaction of a few
/// shapes, get the analysis back after a comparison or a few, with no
/// hashing and no shard lock. The texts are the cache entries' own
/// (shared, not copied); texts over [`MAX_LAST_TEXT`] are not kept, so a
/// session holds at most [`LAST_TEXTS`] of that alive after the cache
/// evicts them. Each answers as its cache entry would
/// ([`Entry::answers`]); the oldest is replaced first.
#[derive(Debug, Default)]
pub struct LastAnalysis {
    slots: [Option<Entry>; LAST_TEXTS],
    /// The slot the next text replaces.
    next: usize,
    /// The slot that answered (or was filled) last.
    last_hit: usize,
}

impl LastAnalysis {
    /// Forgets the texts (an idle session gives back what it holds).
    pub fn clear(&mut self) {
        *self = Self::default();
    }

    /// The kept entry that answers for `sql` at `epoch`: the one that
    /// answered last is asked first (a shape often comes several times in
    /// a row), then the others.
    #[inline]
    fn find(&mut self, sql: &str, epoch: u64) -> Option<&Entry> {
        let first = self.last_hit;
        let at = std::iter::once(first)
            .chain((0..LAST_TEXTS).filter(|&i| i != first))
            .find(|&i| {
                self.slots[i]
                    .as_ref()
                    .is_some_and(|e| e.answers(sql, epoch))
            })?;
        self.last_hit = at;
        self.slots[at].as_ref()
    }

    /// Keeps `e`, in place of the oldest.
    fn keep(&mut self, e: &Entry) {
        self.slots[self.next] = Some(e.clone());
        self.last_hit = self.next;
        self.next = (self.next + 1) % LAST_TEXTS;
    }

    #[cfg(test)]
    fn kept(&self) -> usize {
        self.slots.iter().flatten().count()
    }
}

/// Texts a [`LastAnalysis`] keeps.
pub const LAST_TEXTS: usize = 4;

/// Longest text a [`LastAnalysis`] keeps.
pub const MAX_LAST_TEXT: usize = 1024;

/// Where the caller of [`Classifier::analyze_memo`] keeps an analysis for
/// next time.
#[derive(Debug)]
pub enum Memo<'a> {
    /// Nowhere: the shared cache only.
    None,
    /// A prepared statement's, for its one text.
    Statement(&'a AnalysisMemo),
    /// A session's last text, compared with whatever text comes next.
    Last(&'a mut LastAnalysis),
}

/// A session's cache of the [`Classifier`]'s inputs: see
/// [`Classifier::analyze_cached`]. Holds the inputs it last saw until it is
/// asked again (a new catalog or `read_only_functions` list is seen at the
/// next question).
pub struct InputsCache(Cache<Arc<ArcSwap<Inputs>>, Arc<Inputs>>);

impl InputsCache {
    /// Brings the cache up to date, so that it holds no old inputs (a
    /// session going idle).
    pub fn refresh(&mut self) {
        self.0.load();
    }
}

impl std::fmt::Debug for InputsCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InputsCache").finish_non_exhaustive()
    }
}

/// Classification with its cache and its inputs (function catalog,
/// `read_only_functions`), shared by every session.
pub struct Classifier {
    cache: StatementCache,
    /// Behind an `Arc`: a session keeps an [`InputsCache`] of it.
    inputs: Arc<ArcSwap<Inputs>>,
    /// Admission filter: a text is cached only when it is seen a second
    /// time (its hash is still in its slot here). Texts with inlined
    /// literals are mostly seen once; caching them would only churn the
    /// cache (allocate, evict, free) at every statement.
    seen: Box<[AtomicU64]>,
}

/// Slots of the admission filter (a power of two).
const SEEN_SLOTS: usize = 4096;

impl Classifier {
    /// A classifier caching up to `capacity` statements, with the built-in
    /// function list until [`Classifier::set_catalog`] is called.
    pub fn new(capacity: usize) -> Self {
        Self {
            cache: StatementCache::new(capacity),
            inputs: Arc::new(ArcSwap::from_pointee(Inputs {
                catalog: Arc::new(FunctionCatalog::builtin()),
                extra: Arc::new(ReadOnlyFunctions::default()),
                extra_source: Vec::new(),
                epoch: 0,
            })),
            seen: (0..SEEN_SLOTS).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    /// Replaces the function catalog (after loading or refreshing
    /// `pg_proc`); cached classifications are recomputed lazily.
    pub fn set_catalog(&self, catalog: FunctionCatalog) {
        let catalog = Arc::new(catalog);
        self.inputs.rcu(|cur| Inputs {
            catalog: catalog.clone(),
            extra: cur.extra.clone(),
            extra_source: cur.extra_source.clone(),
            epoch: cur.epoch + 1,
        });
    }

    /// Makes `names` (config `routing.read_only_functions`) the operator's
    /// read-only list if it changed. Cheap when it did not.
    pub fn sync_read_only_functions(&self, names: &[String]) {
        if self.inputs.load().extra_source == names {
            return;
        }
        self.inputs.rcu(|cur| Inputs {
            catalog: cur.catalog.clone(),
            extra: Arc::new(ReadOnlyFunctions::new(names)),
            extra_source: names.to_vec(),
            epoch: cur.epoch + 1,
        });
    }

    /// The analysis of `sql`, from the cache when possible.
    pub fn analyze(&self, sql: &str) -> Arc<Analysis> {
        self.analyze_in(&self.inputs.load(), sql, Memo::None)
    }

    /// The analysis of `sql`, kept in `memo` for next time: a prepared
    /// statement's memo (for its text) serves while the classifier's inputs
    /// are those it was made with, so a statement run again and again is
    /// neither hashed nor compared with the cache's copy; a session's last
    /// text serves the next text of the same shape after one comparison.
    pub fn analyze_memo(&self, sql: &str, memo: Memo<'_>) -> Arc<Analysis> {
        self.analyze_in(&self.inputs.load(), sql, memo)
    }

    /// [`Self::analyze_memo`] with `read_only_functions` (config
    /// `routing.read_only_functions`) made the operator's list first if it
    /// changed: one load of the inputs for both when it did not.
    pub fn analyze_with(
        &self,
        sql: &str,
        memo: Memo<'_>,
        read_only_functions: &[String],
    ) -> Arc<Analysis> {
        let mut inputs = self.inputs.load();
        if inputs.extra_source != read_only_functions {
            drop(inputs);
            self.sync_read_only_functions(read_only_functions);
            inputs = self.inputs.load();
        }
        self.analyze_in(&inputs, sql, memo)
    }

    /// A session's cache of the classifier's inputs, for
    /// [`Self::analyze_cached`].
    pub fn inputs_cache(&self) -> InputsCache {
        InputsCache(Cache::new(self.inputs.clone()))
    }

    /// [`Self::analyze_with`] with the inputs from the caller's `cache`:
    /// while they did not change, one plain atomic load where a load of
    /// the shared inputs takes and gives back a debt slot (two atomic
    /// read-modify-writes); every routed transaction and every statement
    /// of a transaction on the primary asks. `read_only_functions: None`
    /// leaves the operator's list as it is.
    pub fn analyze_cached(
        &self,
        cache: &mut InputsCache,
        sql: &str,
        memo: Memo<'_>,
        read_only_functions: Option<&[String]>,
    ) -> Arc<Analysis> {
        if let Some(names) = read_only_functions
            && cache.0.load().extra_source != names
        {
            self.sync_read_only_functions(names);
        }
        self.analyze_in(cache.0.load(), sql, memo)
    }

    /// `f` of the analysis of `sql` with the inputs from the caller's
    /// `cache` (their `read_only_functions` as they are): as
    /// [`Self::analyze_cached`], but the analysis is lent to `f`, not
    /// handed out, so that a session's last texts or the cache answer with
    /// no reference count taken and given back (two atomic
    /// read-modify-writes on every statement of a transaction).
    pub fn analyze_cached_with<R>(
        &self,
        cache: &mut InputsCache,
        sql: &str,
        memo: Memo<'_>,
        f: impl Fn(&Analysis) -> R,
    ) -> R {
        self.analyze_in_with(cache.0.load(), sql, memo, |a| f(a))
    }

    fn analyze_in(&self, inputs: &Inputs, sql: &str, memo: Memo<'_>) -> Arc<Analysis> {
        self.analyze_in_with(inputs, sql, memo, Arc::clone)
    }

    /// `f` of the analysis of `sql` at `inputs`, through `memo`.
    fn analyze_in_with<R>(
        &self,
        inputs: &Inputs,
        sql: &str,
        memo: Memo<'_>,
        f: impl Fn(&Arc<Analysis>) -> R,
    ) -> R {
        let memo = match memo {
            Memo::None => return self.analyze_last(inputs, sql, None, f),
            Memo::Last(last) => return self.analyze_last(inputs, sql, Some(last), f),
            Memo::Statement(m) => m,
        };
        if let Ok(m) = memo.0.lock()
            && let Some((e, a)) = &*m
            && *e == inputs.epoch
        {
            return f(a);
        }
        let a = self.analyze_last(inputs, sql, None, Arc::clone);
        let r = f(&a);
        if let Ok(mut m) = memo.0.lock() {
            *m = Some((inputs.epoch, a));
        }
        r
    }

    /// `f` of the analysis of `sql` at `inputs`, trying `last` (the
    /// session's last text) first and making the cache's entry for `sql`
    /// the new `last`.
    fn analyze_last<R>(
        &self,
        inputs: &Inputs,
        sql: &str,
        mut last: Option<&mut LastAnalysis>,
        f: impl Fn(&Arc<Analysis>) -> R,
    ) -> R {
        if let Some(e) = last.as_mut().and_then(|l| l.find(sql, inputs.epoch)) {
            return f(&e.analysis);
        }
        let key = self.cache.key(sql);
        let hit = self.cache.lookup(key, sql, inputs.epoch, |e| {
            if sql.len() <= MAX_LAST_TEXT
                && let Some(last) = last.as_mut()
            {
                last.keep(e);
            }
            f(&e.analysis)
        });
        if let Some(r) = hit {
            return r;
        }
        let a = Arc::new(analyze(sql, &inputs.catalog, &inputs.extra));
        let r = f(&a);
        // The low bits pick the slot (the shard uses the top ones).
        let slot = &self.seen[key as usize & (SEEN_SLOTS - 1)];
        if slot.swap(key, Ordering::Relaxed) == key {
            self.cache.insert_keyed(key, sql, inputs.epoch, a);
        }
        r
    }

    /// What `sql` does to its server connection: none when the text holds
    /// none of the words an effect needs (one pass over the text, cheaper
    /// than hashing it for the cache: this is every statement inside a
    /// transaction, which is never routed), else from the cached analysis
    /// when there is one, else by matching the text.
    pub fn server_effects(&self, sql: &str) -> ServerEffects {
        if !may_have_effects(sql) {
            return ServerEffects::default();
        }
        let epoch = self.inputs.load().epoch;
        match self.cache.get_keyed(self.cache.key(sql), sql, epoch) {
            Some(a) => a.server,
            None => lexed_effects(sql),
        }
    }

    /// The class of `sql`, from the cache when possible.
    pub fn classify(&self, sql: &str) -> Class {
        self.analyze(sql).class
    }

    /// Number of cached statements.
    pub fn cached(&self) -> usize {
        self.cache.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn analysis(class: Class) -> Arc<Analysis> {
        Arc::new(Analysis {
            writes: class.is_write(),
            class,
            hints: Default::default(),
            effects: Box::new([]),
            server: Default::default(),
            names_lagrouter: false,
        })
    }

    #[test]
    fn hit_miss_and_epoch() {
        let c = StatementCache::new(100);
        c.insert("SELECT 1", 0, analysis(Class::Read));
        assert_eq!(c.get("SELECT 1", 0).unwrap().class, Class::Read);
        assert!(c.get("SELECT a", 0).is_none());
        assert!(c.get("SELECT 1", 1).is_none(), "a new epoch invalidates");
    }

    #[test]
    fn texts_of_one_shape_share_an_entry() {
        let c = StatementCache::new(100);
        c.insert("SELECT * FROM t WHERE id = 1", 0, analysis(Class::Read));
        assert!(c.get("SELECT * FROM t WHERE id = 12345", 0).is_some());
        assert!(c.get("SELECT * FROM t WHERE id = a", 0).is_none());
        assert!(c.get("SELECT * FROM t1 WHERE id = 1", 0).is_none());
        assert_eq!(c.len(), 1);
    }

    #[test]
    fn a_memo_serves_its_text_until_the_inputs_change() {
        let k = Classifier::new(100);
        let memo = AnalysisMemo::default();
        let sql = "SELECT app_total(1)";
        let first = k.analyze_memo(sql, Memo::Statement(&memo));
        assert!(first.writes, "an unknown function may write");
        assert!(
            Arc::ptr_eq(&first, &k.analyze_memo(sql, Memo::Statement(&memo))),
            "served from the memo"
        );
        k.sync_read_only_functions(&["app_total".to_string()]);
        let after = k.analyze_memo(sql, Memo::Statement(&memo));
        assert!(
            !after.writes,
            "the operator's read-only list is seen at once"
        );
        assert!(Arc::ptr_eq(
            &after,
            &k.analyze_memo(sql, Memo::Statement(&memo))
        ));
    }

    #[test]
    fn analyze_with_follows_the_configured_read_only_list() {
        let k = Classifier::new(100);
        let sql = "SELECT app_total(1)";
        let none: &[String] = &[];
        let listed = ["app_total".to_string()];
        for _ in 0..3 {
            assert!(k.analyze_with(sql, Memo::None, none).writes);
        }
        let epoch = k.inputs.load().epoch;
        assert!(
            !k.analyze_with(sql, Memo::None, &listed).writes,
            "seen at once"
        );
        assert_eq!(k.inputs.load().epoch, epoch + 1);
        for _ in 0..3 {
            assert!(!k.analyze_with(sql, Memo::None, &listed).writes);
        }
        assert_eq!(
            k.inputs.load().epoch,
            epoch + 1,
            "an unchanged list changes nothing"
        );
        assert!(
            k.analyze_with(sql, Memo::None, none).writes,
            "and taken back"
        );
    }

    #[test]
    fn a_sessions_last_text_serves_its_shape_until_the_inputs_change() {
        let k = Classifier::new(100);
        let mut last = LastAnalysis::default();
        let read = |n: u32| format!("SELECT abalance FROM pgbench_accounts WHERE aid = {n}");
        // Cached at the second sight, kept as the last text at the third.
        for n in 1..=3 {
            assert!(!k.analyze_memo(&read(n), Memo::Last(&mut last)).writes);
        }
        assert_eq!(last.kept(), 1);
        let kept = last.slots[0]
            .as_ref()
            .map(|l| l.analysis.clone())
            .expect("kept");
        let served = k.analyze_memo(&read(123_456), Memo::Last(&mut last));
        assert!(Arc::ptr_eq(&kept, &served), "same shape: from the memo");
        // Another shape is not served from it.
        let other = "SELECT app_total(1)";
        assert!(k.analyze_memo(other, Memo::Last(&mut last)).writes);
        // A new catalog epoch: the memo no longer answers.
        let mut last = LastAnalysis::default();
        for _ in 0..3 {
            k.analyze_memo(other, Memo::Last(&mut last));
        }
        assert_eq!(last.kept(), 1, "kept before the inputs change");
        k.sync_read_only_functions(&["app_total".to_string()]);
        assert!(!k.analyze_memo(other, Memo::Last(&mut last)).writes);
        // Texts whose digits matter answer only for themselves.
        let mut last = LastAnalysis::default();
        let ro = |n: u32| format!("BEGIN; SET transaction_read_only = {n}");
        for _ in 0..3 {
            k.analyze_memo(&ro(1), Memo::Last(&mut last));
        }
        assert!(last.slots[0].as_ref().is_some_and(|l| !l.shaped));
        assert_eq!(
            k.analyze_memo(&ro(2), Memo::Last(&mut last)).class,
            Class::Write
        );
        // A long text is analyzed and cached but not kept.
        let mut last = LastAnalysis::default();
        let long = format!("SELECT 1 /* {} */", "x".repeat(MAX_LAST_TEXT));
        for _ in 0..3 {
            k.analyze_memo(&long, Memo::Last(&mut last));
        }
        assert_eq!(last.kept(), 0);
        // An idle session gives it back.
        for n in 1..=3 {
            k.analyze_memo(&read(n), Memo::Last(&mut last));
        }
        assert_eq!(last.kept(), 1);
        last.clear();
        assert_eq!(last.kept(), 0);
    }

    #[test]
    fn a_session_keeps_its_last_few_shapes() {
        let k = Classifier::new(100);
        let mut last = LastAnalysis::default();
        // A transaction of three shapes, as pgbench's 7-statement script.
        let shapes = |n: u32| {
            [
                format!("SELECT abalance FROM pgbench_accounts WHERE aid = {n}"),
                format!("SELECT abalance FROM pgbench_accounts WHERE aid = {n} + 1"),
                "END".to_string(),
            ]
        };
        for n in 1..=3 {
            for sql in shapes(n) {
                k.analyze_memo(&sql, Memo::Last(&mut last));
            }
        }
        assert_eq!(last.kept(), 3);
        // Served from the session: nothing is looked up and kept anew.
        let next = last.next;
        for n in 4..=6 {
            for (i, sql) in shapes(n).iter().enumerate() {
                let a = k.analyze_memo(sql, Memo::Last(&mut last));
                assert!(
                    last.slots
                        .iter()
                        .flatten()
                        .any(|e| Arc::ptr_eq(&e.analysis, &a)),
                    "shape {i}"
                );
                assert_eq!(last.next, next, "shape {i} was looked up in the cache");
            }
        }
        // More shapes than slots: the oldest makes room.
        let more = ["SELECT 1 FROM t", "SELECT 2 FROM u", "SELECT 3 FROM v"];
        for _ in 0..3 {
            for sql in more {
                k.analyze_memo(sql, Memo::Last(&mut last));
            }
        }
        assert_eq!(last.kept(), LAST_TEXTS);
        // The three new ones filled the free slot and replaced the two
        // oldest (the SELECT shapes): END is still served, the first
        // SELECT's shape is not.
        let next = last.next;
        k.analyze_memo(&shapes(7)[2], Memo::Last(&mut last));
        assert_eq!(last.next, next, "END is still kept");
        k.analyze_memo(&shapes(7)[0], Memo::Last(&mut last));
        assert_ne!(last.next, next, "the oldest shape made room");
    }

    #[test]
    fn texts_whose_digits_matter_are_keyed_exactly() {
        let k = Classifier::new(100);
        for _ in 0..2 {
            assert_eq!(
                k.classify("BEGIN; SET transaction_read_only = 1"),
                Class::Begin(crate::TxnMode {
                    read_only: Some(true),
                    serializable: false
                })
            );
            assert_eq!(
                k.classify("BEGIN; SET transaction_read_only = 2"),
                Class::Write
            );
        }
        for _ in 0..2 {
            let a = k.analyze("SET default_transaction_read_only = 1");
            assert!(!a.effects.is_empty());
            let b = k.analyze("SET default_transaction_read_only = 7");
            assert!(b.effects.is_empty());
        }
    }

    #[test]
    fn server_effects_come_from_the_cache_or_the_text() {
        let k = Classifier::new(100);
        assert!(k.server_effects("LISTEN c1").pins, "not cached yet");
        k.analyze("LISTEN c1");
        k.analyze("LISTEN c1");
        assert!(k.server_effects("LISTEN c1").pins, "cached");
        assert!(!k.server_effects("SELECT 1").pins);
    }

    #[test]
    fn stays_bounded_and_keeps_hot_entries() {
        let c = StatementCache::new(160);
        c.insert("hot", 0, analysis(Class::Read));
        for i in 0..10_000 {
            c.insert(&format!("SELECT {i}"), 0, analysis(Class::Read));
            assert!(c.get("hot", 0).is_some(), "hot entry lost at {i}");
        }
        assert!(c.len() <= 160 + SHARDS, "{}", c.len());
    }

    #[test]
    fn bounded_by_bytes_too() {
        let c = StatementCache::new(32);
        let big = "x".repeat(MAX_CACHED_TEXT);
        c.insert(&big, 0, analysis(Class::Write));
        c.insert(&format!("{big}y"), 0, analysis(Class::Write));
        assert!(
            c.get(&format!("{big}y"), 0).is_none(),
            "over the limit: not cached"
        );
        assert!(c.get(&big, 0).is_some());
    }

    #[test]
    fn classifier_recomputes_after_catalog_and_config_changes() {
        let k = Classifier::new(100);
        assert_eq!(k.classify("SELECT calc(1)"), Class::Unknown);
        k.set_catalog(FunctionCatalog::from_rows([("calc", 'i')]));
        assert_eq!(k.classify("SELECT calc(1)"), Class::Read);
        assert_eq!(k.classify("SELECT random()"), Class::Unknown);
        k.sync_read_only_functions(&["random".to_string()]);
        assert_eq!(k.classify("SELECT random()"), Class::Read);
        k.sync_read_only_functions(&[]);
        assert_eq!(k.classify("SELECT random()"), Class::Unknown);
        assert!(k.cached() >= 1);
    }
}
