//! The newest Raft log entries, kept in memory beside the entries file.
//!
//! Right after an append, openraft reads the new entries back twice: a replication task sends
//! them to each follower, and the leader applies them once they are committed. Serving those
//! reads from memory saves a file read and a JSON decode on the blocking pool in the path of
//! every write.
//!
//! Invariant: the entries form a contiguous run that ends at the last entry of the log, or there
//! are none. Appends add to the end (openraft appends right after the last entry, after a
//! truncation if needed), truncation removes from the end, and purging and the size limits
//! remove from the start. A range the run does not fully contain is read from the file.

use std::collections::BTreeMap;
use std::ops::Bound;

use openraft::Entry;

use super::TypeConfig;

/// Maximum number of entries kept.
const MAX_RECENT_ENTRIES: usize = 1024;
/// Maximum sum of the entries' encoded sizes kept, so large specs do not pin much memory.
const MAX_RECENT_BYTES: usize = 8 * 1024 * 1024;

/// One kept entry and the size of its encoding in the log file.
#[derive(Debug)]
struct Recent {
    entry: Entry<TypeConfig>,
    encoded_bytes: usize,
}

/// The newest log entries by index, within [`MAX_RECENT_ENTRIES`] and [`MAX_RECENT_BYTES`].
#[derive(Debug, Default)]
pub(super) struct RecentEntries {
    entries: BTreeMap<u64, Recent>,
    encoded_bytes: usize,
}

impl RecentEntries {
    /// Adds entries that were just appended to the log, each with its encoded size, and drops
    /// the oldest entries beyond the limits.
    pub fn append(&mut self, appended: impl IntoIterator<Item = (Entry<TypeConfig>, usize)>) {
        for (entry, encoded_bytes) in appended {
            let index = entry.log_id.index;
            // An entry at or before the last one replaces the entries from its index on.
            self.truncate(index);
            // An entry after a gap would break the contiguous run, so the run restarts there.
            // openraft does not append after a gap, so this is only a safeguard.
            let follows_last = self
                .entries
                .last_key_value()
                .is_none_or(|(last, _)| last.checked_add(1) == Some(index));
            if !follows_last {
                self.clear();
            }
            self.encoded_bytes += encoded_bytes;
            self.entries.insert(
                index,
                Recent {
                    entry,
                    encoded_bytes,
                },
            );
        }
        while self.entries.len() > MAX_RECENT_ENTRIES || self.encoded_bytes > MAX_RECENT_BYTES {
            let Some((_, oldest)) = self.entries.pop_first() else {
                break;
            };
            self.encoded_bytes -= oldest.encoded_bytes;
        }
    }

    /// Removes the entries with index `since` and above, as truncating the log does.
    pub fn truncate(&mut self, since: u64) {
        let removed = self.entries.split_off(&since);
        self.encoded_bytes -= removed
            .values()
            .map(|recent| recent.encoded_bytes)
            .sum::<usize>();
    }

    /// Removes the entries up to index `upto`, inclusive, as purging the log does.
    pub fn purge(&mut self, upto: u64) {
        let kept = match upto.checked_add(1) {
            Some(first_kept) => self.entries.split_off(&first_kept),
            None => BTreeMap::new(),
        };
        let removed = std::mem::replace(&mut self.entries, kept);
        self.encoded_bytes -= removed
            .values()
            .map(|recent| recent.encoded_bytes)
            .sum::<usize>();
    }

    /// Removes every entry.
    pub fn clear(&mut self) {
        self.entries.clear();
        self.encoded_bytes = 0;
    }

    /// Returns copies of the entries in the range, or `None` when the range starts before the
    /// first kept entry, ends after the last or is unbounded, so the caller reads the file.
    ///
    /// An unbounded range falls back because the file can already hold entries that an append
    /// has committed but not yet added here.
    pub fn get(&self, start: Bound<u64>, end: Bound<u64>) -> Option<Vec<Entry<TypeConfig>>> {
        let (first, _) = self.entries.first_key_value()?;
        let (last, _) = self.entries.last_key_value()?;
        let start_index = match start {
            Bound::Included(index) => index,
            Bound::Excluded(index) => index.checked_add(1)?,
            Bound::Unbounded => return None,
        };
        let end_exclusive = match end {
            Bound::Included(index) => index.checked_add(1)?,
            Bound::Excluded(index) => index,
            Bound::Unbounded => return None,
        };
        if start_index < *first || end_exclusive > last.saturating_add(1) {
            return None;
        }
        if start_index >= end_exclusive {
            return Some(Vec::new());
        }
        let entries = self
            .entries
            .range(start_index..end_exclusive)
            .map(|(_, recent)| recent.entry.clone())
            .collect();
        Some(entries)
    }
}

#[cfg(test)]
mod tests {
    use openraft::{CommittedLeaderId, EntryPayload, LogId};

    use super::*;

    fn blank(index: u64) -> (Entry<TypeConfig>, usize) {
        let entry = Entry {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
            payload: EntryPayload::Blank,
        };
        (entry, 100)
    }

    fn indexes(entries: Option<Vec<Entry<TypeConfig>>>) -> Option<Vec<u64>> {
        entries.map(|entries| entries.iter().map(|entry| entry.log_id.index).collect())
    }

    #[test]
    fn range_inside_run_is_served() {
        let mut recent = RecentEntries::default();
        recent.append((3..=6).map(blank));
        assert_eq!(
            indexes(recent.get(Bound::Included(4), Bound::Excluded(6))),
            Some(vec![4, 5])
        );
        assert_eq!(
            indexes(recent.get(Bound::Included(5), Bound::Included(6))),
            Some(vec![5, 6])
        );
        assert_eq!(
            indexes(recent.get(Bound::Included(7), Bound::Excluded(7))),
            Some(vec![])
        );
    }

    #[test]
    fn range_outside_run_falls_back() {
        let mut recent = RecentEntries::default();
        recent.append((3..=6).map(blank));
        assert_eq!(
            recent
                .get(Bound::Included(2), Bound::Excluded(5))
                .map(|_| ()),
            None
        );
        assert_eq!(
            recent
                .get(Bound::Included(4), Bound::Included(7))
                .map(|_| ()),
            None
        );
        assert_eq!(
            recent.get(Bound::Unbounded, Bound::Included(4)).map(|_| ()),
            None
        );
        assert_eq!(
            recent.get(Bound::Included(4), Bound::Unbounded).map(|_| ()),
            None
        );
        assert_eq!(
            RecentEntries::default()
                .get(Bound::Included(0), Bound::Unbounded)
                .map(|_| ()),
            None
        );
    }

    #[test]
    fn truncate_and_purge_keep_run() {
        let mut recent = RecentEntries::default();
        recent.append((1..=8).map(blank));
        recent.truncate(7);
        recent.purge(2);
        assert_eq!(
            indexes(recent.get(Bound::Included(3), Bound::Excluded(7))),
            Some(vec![3, 4, 5, 6])
        );
        assert_eq!(recent.encoded_bytes, 400);
        recent.append([blank(7)]);
        assert_eq!(
            indexes(recent.get(Bound::Included(6), Bound::Included(7))),
            Some(vec![6, 7])
        );
        // An append at an index already kept replaces the entries from there on.
        recent.append([blank(5)]);
        assert_eq!(
            indexes(recent.get(Bound::Included(3), Bound::Included(5))),
            Some(vec![3, 4, 5])
        );
        assert_eq!(
            recent
                .get(Bound::Included(6), Bound::Included(6))
                .map(|_| ()),
            None
        );
    }

    #[test]
    fn limits_drop_oldest() {
        let mut recent = RecentEntries::default();
        let total = u64::try_from(MAX_RECENT_ENTRIES).expect("limit fits u64") + 10;
        recent.append((0..total).map(blank));
        assert_eq!(recent.entries.len(), MAX_RECENT_ENTRIES);
        assert_eq!(
            recent.entries.first_key_value().map(|(index, _)| *index),
            Some(10)
        );
        assert_eq!(recent.encoded_bytes, MAX_RECENT_ENTRIES * 100);
    }

    #[test]
    fn gap_restarts_run() {
        let mut recent = RecentEntries::default();
        recent.append((1..=3).map(blank));
        recent.append([blank(9)]);
        assert_eq!(
            recent
                .get(Bound::Included(2), Bound::Included(9))
                .map(|_| ()),
            None
        );
        assert_eq!(
            indexes(recent.get(Bound::Included(9), Bound::Included(9))),
            Some(vec![9])
        );
    }
}
