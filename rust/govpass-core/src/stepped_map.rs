//! A hash map that resizes a little at a time.
//!
//! A hash table that doubles moves every entry in the call that finds it
//! full: at a million flows one `process()` took 0.3-0.6 s. [`SteppedMap`]
//! instead allocates the new table and moves the old one's entries over a
//! few of them per insert (and more per [`SteppedMap::step`], the timer's
//! share), looking keys up in both tables until the old one is empty. A
//! shrink takes the same path, so giving memory back is spread out too.

use std::hash::{BuildHasher, Hash};

use hashbrown::HashTable;

/// Old-table buckets moved per insert (a microsecond or two). A table of
/// capacity `c` has at most `c * 8 / 7` buckets, so a growth is done within
/// `c / 28` inserts, when the new table (room for `2 c`) holds at most
/// `c + c / 28`: it never fills, and so never resizes itself, before the
/// move is over. A shrink leaves room for as many inserts (`shrink_to`).
const MOVE_PER_INSERT: usize = 32;

/// Smallest room a growth allocates.
const MIN_ROOM: usize = 16;

/// An emptied table at least this large is freed on a thread of its own:
/// unmapping a few hundred MB that were written to takes 0.1 s.
const FREE_ASIDE_BYTES: usize = 8 << 20;

/// Frees `table` (empty) here, or aside when it is large (here after all
/// when no thread can be started).
fn release<T: Send + 'static>(table: HashTable<T>) {
    if table.allocation_size() >= FREE_ASIDE_BYTES {
        // A spawn that fails drops the closure, and with it the table, here.
        let _ = std::thread::Builder::new()
            .name("govpass-free".into())
            .spawn(move || drop(table));
    }
}

pub struct SteppedMap<K, V> {
    table: HashTable<(K, V)>,
    /// The table being moved into `table`; freed the moment it is empty, so
    /// a resize is under way exactly while it holds entries.
    old: HashTable<(K, V)>,
    /// Next bucket of `old` to move: buckets before it are empty (entries
    /// are only ever removed from `old`, which leaves the others in place).
    next: usize,
    hasher: foldhash::fast::RandomState,
}

impl<K: Hash + Eq, V> Default for SteppedMap<K, V> {
    fn default() -> Self {
        SteppedMap {
            table: HashTable::new(),
            old: HashTable::new(),
            next: 0,
            hasher: foldhash::fast::RandomState::default(),
        }
    }
}

impl<K: Hash + Eq + Send + 'static, V: Send + 'static> SteppedMap<K, V> {
    pub fn len(&self) -> usize {
        self.table.len() + self.old.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Entries the current table holds before it has to grow.
    pub fn capacity(&self) -> usize {
        self.table.capacity()
    }

    /// Whether a resize is under way.
    pub fn resizing(&self) -> bool {
        !self.old.is_empty()
    }

    /// Bytes of both tables' allocations.
    pub fn allocation_size(&self) -> usize {
        self.table.allocation_size() + self.old.allocation_size()
    }

    pub fn get(&self, key: &K) -> Option<&V> {
        let hash = self.hasher.hash_one(key);
        let found = self.table.find(hash, |(k, _)| k == key);
        match found {
            Some((_, v)) => Some(v),
            None if self.old.is_empty() => None,
            None => self.old.find(hash, |(k, _)| k == key).map(|(_, v)| v),
        }
    }

    pub fn get_mut(&mut self, key: &K) -> Option<&mut V> {
        let hash = self.hasher.hash_one(key);
        if let Some((_, v)) = self.table.find_mut(hash, |(k, _)| k == key) {
            return Some(v);
        }
        if self.old.is_empty() {
            return None;
        }
        self.old.find_mut(hash, |(k, _)| k == key).map(|(_, v)| v)
    }

    /// Inserts `key` (replacing and returning any value it had).
    pub fn insert(&mut self, key: K, value: V) -> Option<V> {
        let before = self.remove(&key);
        if self.table.len() >= self.table.capacity() {
            self.grow();
        }
        let hash = self.hasher.hash_one(&key);
        let hasher = &self.hasher;
        self.table
            .insert_unique(hash, (key, value), |(k, _)| hasher.hash_one(k));
        self.step(MOVE_PER_INSERT);
        before
    }

    pub fn remove(&mut self, key: &K) -> Option<V> {
        let hash = self.hasher.hash_one(key);
        if let Ok(entry) = self.table.find_entry(hash, |(k, _)| k == key) {
            return Some(entry.remove().0 .1);
        }
        if self.old.is_empty() {
            return None;
        }
        let entry = self.old.find_entry(hash, |(k, _)| k == key).ok()?;
        let value = entry.remove().0 .1;
        self.step(0);
        Some(value)
    }

    /// Starts a shrink to room for `room` entries, unless a resize is under
    /// way or the table would be no smaller. The room is at least the
    /// current entries plus the inserts the move may take (a large, sparse
    /// table shrinks in two goes then, the second one smaller).
    pub fn shrink_to(&mut self, room: usize) {
        let room = room.max(self.len() + self.table.num_buckets() / MOVE_PER_INSERT + 1);
        if !self.resizing() && room < self.table.capacity() {
            self.start(room);
        }
    }

    /// Moves the entries of up to `buckets` buckets of a resize under way;
    /// the old table is freed once empty.
    pub fn step(&mut self, buckets: usize) {
        if self.old.is_empty() && self.old.allocation_size() == 0 {
            return;
        }
        let end = self
            .next
            .saturating_add(buckets)
            .min(self.old.num_buckets());
        let hasher = &self.hasher;
        while self.next < end && !self.old.is_empty() {
            if let Ok(entry) = self.old.get_bucket_entry(self.next) {
                let (item, _) = entry.remove();
                let hash = hasher.hash_one(&item.0);
                self.table
                    .insert_unique(hash, item, |(k, _)| hasher.hash_one(k));
            }
            self.next += 1;
        }
        if self.old.is_empty() {
            release(std::mem::take(&mut self.old));
            self.next = 0;
        }
    }

    /// All values, in no particular order.
    pub fn values(&self) -> impl Iterator<Item = &V> {
        self.table.iter().chain(self.old.iter()).map(|(_, v)| v)
    }

    /// Removes every entry.
    pub fn drain(&mut self) -> impl Iterator<Item = (K, V)> + '_ {
        self.next = 0;
        self.table.drain().chain(self.old.drain())
    }

    fn grow(&mut self) {
        // Not reached while moving (see MOVE_PER_INSERT); should it be, the
        // move ends first, so that there are never three tables.
        self.step(usize::MAX);
        self.start((self.table.capacity() * 2).max(MIN_ROOM));
    }

    fn start(&mut self, room: usize) {
        self.old = std::mem::replace(&mut self.table, HashTable::with_capacity(room));
        self.next = 0;
        self.step(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashMap;

    #[test]
    fn growth_is_spread_over_inserts() {
        let mut m: SteppedMap<u32, u32> = SteppedMap::default();
        let mut most_moved = 0;
        for i in 0..100_000 {
            let (cap, resizing) = (m.capacity(), m.resizing());
            m.insert(i, i * 2);
            // A table only grows from an insert that found it full.
            if m.capacity() != cap {
                assert!(!resizing || m.capacity() > cap);
            }
            most_moved = most_moved.max(m.table.len());
        }
        assert!(most_moved >= 100_000);
        for i in 0..100_000 {
            assert_eq!(m.get(&i), Some(&(i * 2)));
        }
        assert_eq!(m.len(), 100_000);
    }

    #[test]
    fn no_single_insert_moves_more_than_its_share() {
        let mut m: SteppedMap<u32, ()> = SteppedMap::default();
        for i in 0..50_000 {
            let before_old = m.old.len();
            let was_resizing = m.resizing();
            m.insert(i, ());
            if was_resizing {
                assert!(before_old - m.old.len() <= MOVE_PER_INSERT);
            }
        }
    }

    #[test]
    fn a_shrink_gives_memory_back_step_by_step() {
        let mut m: SteppedMap<u32, [u8; 64]> = SteppedMap::default();
        for i in 0..65_536 {
            m.insert(i, [0; 64]);
        }
        m.step(usize::MAX);
        let full = m.allocation_size();
        for i in 100..65_536 {
            m.remove(&i);
        }
        // A large, sparse table shrinks in two goes: the first leaves room
        // for the inserts its move may take.
        for (go, ratio) in [(1, 8), (2, 64)] {
            m.shrink_to(200);
            assert!(m.resizing(), "go {go}");
            let mut calls = 0;
            while m.resizing() {
                m.step(64);
                calls += 1;
            }
            assert!(calls > 1, "spread over several steps");
            let now = m.allocation_size();
            assert!(now * ratio < full, "go {go}: {now} of {full}");
        }
        assert!((0..100).all(|i| m.get(&i).is_some()) && m.len() == 100);
    }

    proptest! {
        #[test]
        fn behaves_as_a_map(ops in proptest::collection::vec((0u8..4, 0u16..300), 1..2000)) {
            let mut m: SteppedMap<u16, u32> = SteppedMap::default();
            let mut model: HashMap<u16, u32> = HashMap::new();
            for (n, (op, k)) in ops.into_iter().enumerate() {
                let n = n as u32;
                match op {
                    0 | 1 => prop_assert_eq!(m.insert(k, n), model.insert(k, n)),
                    2 => prop_assert_eq!(m.remove(&k), model.remove(&k)),
                    _ => {
                        if let Some(v) = m.get_mut(&k) {
                            *v += 1;
                        }
                        if let Some(v) = model.get_mut(&k) {
                            *v += 1;
                        }
                        m.shrink_to(m.len() * 2);
                        m.step(3);
                    }
                }
                prop_assert_eq!(m.len(), model.len());
                prop_assert_eq!(m.get(&k), model.get(&k));
            }
            let mut all: Vec<(u16, u32)> = m.drain().collect();
            all.sort_unstable();
            let mut want: Vec<(u16, u32)> = model.into_iter().collect();
            want.sort_unstable();
            prop_assert_eq!(all, want);
        }
    }
}
