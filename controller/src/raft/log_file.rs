//! The Raft log entries in an append-only file, `raft-log.entries`, beside `raft-log.redb`.
//!
//! An append writes its records at the end of the file with one `write` and syncs them with one
//! `fdatasync`. That costs a fraction of a redb commit, which rewrites several B-tree pages.
//! The vote and the last purged log id stay in redb, because they change rarely.
//!
//! Layout: the 8-byte [`MAGIC`], then one record per entry in index order. A record is a
//! 24-byte header (payload length as u32, CRC-32 of the rest of the record as u32, entry index
//! as u64, committed index as u64, all little-endian) and the payload, the entry's JSON. The
//! committed index is the one openraft reported before the append, so that a restarted node
//! can apply the committed entries again before it hears from a leader.
//!
//! Only the tail can be incomplete after a crash, because a record is reported durable only
//! after its sync. [`LogFile::open`] therefore cuts the file at the first record whose header
//! or payload is short or whose checksum does not match, and logs the cut.
//!
//! NOTE: a damaged record in the middle of the file, which only a disk fault causes, also cuts
//! off the acknowledged records after it. Telling the two cases apart would need a marker of
//! the last synced record.
//!
//! The file is extended in steps of [`PREALLOCATE_BYTES`] ahead of the records, with blocks
//! allocated by `posix_fallocate` that read as zeros. So an append does not grow the file, and
//! its `fdatasync` does not have to write a new file size as well. With three processes
//! writing and syncing on one disk of a 2-core virtual machine, a sync into zeros written
//! ahead took 0.25 ms (p50) against 0.34 ms at the growing end of the file, and fallocated
//! blocks were faster again (see `preallocate`). The zeros after the last
//! record do not form a record, because a zero header fails its checksum, so opening stops
//! there. Opening keeps them when they are all zeros and cuts them like a torn tail otherwise.
//!
//! Truncating cuts the file. Purging only drops the records from memory, and once the purged
//! records take [`COMPACT_AFTER_PURGED_BYTES`] the file is rewritten without them: a new file
//! is written and synced, then renamed over the old one, and the directory is synced.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{BufReader, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// First bytes of the file. The last byte is the format version.
const MAGIC: [u8; 8] = *b"cxraft\x00\x01";
const MAGIC_BYTES: u64 = 8;
const RECORD_HEADER_BYTES: usize = 24;
/// Bytes of zeros the file is extended by when an append would pass its end. Each extension
/// costs one write of this size, synced with the append that needed it.
const PREALLOCATE_BYTES: u64 = 4 * 1024 * 1024;
/// Bytes of purged records after which the file is rewritten without them.
const COMPACT_AFTER_PURGED_BYTES: u64 = 64 * 1024 * 1024;
/// Suffix of the file that a compaction or migration writes before it renames it into place.
const TEMPORARY_SUFFIX: &str = "tmp";

/// Errors of the log file.
#[derive(Debug, thiserror::Error)]
pub enum LogFileError {
    #[error("failed to {step} raft log file {path}")]
    Io {
        step: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("raft log file {path} does not start with the colex log header; it is not a colex raft log or was written by a newer version")]
    BadMagic { path: PathBuf },
    #[error("raft log file {path} has entry {found} at byte {offset} where entry {expected} belongs; the file is damaged")]
    OutOfOrder {
        path: PathBuf,
        offset: u64,
        expected: u64,
        found: u64,
    },
    #[error("cannot append entry {index} to raft log file {path}: the last entry is {last}")]
    NotNext {
        path: PathBuf,
        index: u64,
        last: u64,
    },
    #[error("raft log entry {index} of {len} bytes is larger than a record can hold")]
    TooLarge { index: u64, len: usize },
}

/// Position and size of one record in the file.
#[derive(Debug, Clone, Copy)]
struct Slot {
    /// Offset of the record's header.
    offset: u64,
    payload_len: u32,
}

/// One entry to append: its index and its JSON.
pub(super) struct Record<'a> {
    pub index: u64,
    pub payload: &'a [u8],
}

/// The open log file and where each kept entry is in it.
#[derive(Debug)]
pub(super) struct LogFile {
    path: PathBuf,
    /// Shared with the thread that syncs the leader's appends (`log_sync`).
    file: Arc<File>,
    slots: BTreeMap<u64, Slot>,
    /// Offset of the next record: the end of the last record.
    end: u64,
    /// Length of the file. The bytes from `end` to here are zeros written ahead.
    allocated: u64,
    /// Bytes of the records before the first kept one, which a compaction removes.
    purged_bytes: u64,
    /// Highest committed index recorded in any kept record's header.
    committed_index: Option<u64>,
}

impl LogFile {
    /// Opens the file at `path`, creating it when missing, and drops the records up to
    /// `purged_upto` from memory. A damaged tail is cut off and logged.
    pub fn open(path: &Path, purged_upto: Option<u64>) -> Result<LogFile, LogFileError> {
        remove_temporary(path)?;
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(|source| io_error("open", path, source))?;
        let length = file
            .metadata()
            .map_err(|source| io_error("read the size of", path, source))?
            .len();
        // A crash while a new file got its header can leave a shorter one, and no records.
        if length < MAGIC_BYTES {
            file.set_len(0)
                .map_err(|source| io_error("empty", path, source))?;
            write_magic(&file, path)?;
            return Ok(LogFile {
                path: path.to_owned(),
                file: Arc::new(file),
                slots: BTreeMap::new(),
                end: MAGIC_BYTES,
                allocated: MAGIC_BYTES,
                purged_bytes: 0,
                committed_index: None,
            });
        }

        let mut log_file = LogFile {
            path: path.to_owned(),
            file: Arc::new(file),
            slots: BTreeMap::new(),
            end: MAGIC_BYTES,
            allocated: length,
            purged_bytes: 0,
            committed_index: None,
        };
        let valid_end = log_file.scan(length, purged_upto)?;
        if valid_end < length && !log_file.only_zeros_after(valid_end, length)? {
            tracing::warn!(
                path = %path.display(),
                valid_bytes = valid_end,
                dropped_bytes = length - valid_end,
                "raft log file ends in an incomplete record, which a crash left before its sync; cutting it off"
            );
            log_file
                .file
                .set_len(valid_end)
                .map_err(|source| io_error("cut the incomplete tail of", path, source))?;
            log_file
                .file
                .sync_all()
                .map_err(|source| io_error("sync", path, source))?;
            log_file.allocated = valid_end;
        }
        log_file.end = valid_end;
        Ok(log_file)
    }

    /// Returns true when the bytes from `start` to `length` are all zeros: space written
    /// ahead of the records, not a torn one.
    fn only_zeros_after(&self, start: u64, length: u64) -> Result<bool, LogFileError> {
        let mut buffer = vec![0u8; 64 * 1024];
        let mut offset = start;
        while offset < length {
            let chunk = (length - offset).min(buffer.len() as u64) as usize;
            self.file
                .read_exact_at(&mut buffer[..chunk], offset)
                .map_err(|source| io_error("read", &self.path, source))?;
            if buffer[..chunk].iter().any(|byte| *byte != 0) {
                return Ok(false);
            }
            offset += chunk as u64;
        }
        Ok(true)
    }

    /// Extends the file until it contains at least `needed` bytes, rounded up to whole steps
    /// of [`PREALLOCATE_BYTES`] that read as zeros. The caller's next sync makes them durable.
    fn preallocate(&mut self, needed: u64) -> Result<(), LogFileError> {
        if needed <= self.allocated {
            return Ok(());
        }
        let target = needed.div_ceil(PREALLOCATE_BYTES) * PREALLOCATE_BYTES;
        let (Ok(offset), Ok(len)) = (i64::try_from(self.allocated), i64::try_from(target - self.allocated)) else {
            return Err(io_error("extend", &self.path, std::io::Error::from(std::io::ErrorKind::FileTooLarge)));
        };
        // Allocated blocks that read as zeros, as etcd preallocates its log. On the ext4 disk of
        // the 2-core test machine, a 1,500-byte write and `fdatasync` into them was faster than
        // into blocks written with zeros in 11 of 11 runs (median p50 103 against 219 µs).
        // glibc writes zeros itself on a file system without `fallocate`.
        nix::fcntl::posix_fallocate(self.file.as_ref(), offset, len)
            .map_err(|errno| io_error("extend", &self.path, std::io::Error::from(errno)))?;
        tracing::debug!(path = %self.path.display(), bytes = target, "raft log file extended");
        self.allocated = target;
        Ok(())
    }

    /// Returns the open file, for a sync on another thread.
    pub fn handle(&self) -> Arc<File> {
        Arc::clone(&self.file)
    }

    /// Syncs everything written so far.
    pub fn sync(&self) -> Result<(), LogFileError> {
        self.file
            .sync_data()
            .map_err(|source| io_error("sync", &self.path, source))
    }

    /// Returns where the next record starts.
    #[cfg(test)]
    fn records_end(&self) -> u64 {
        self.end
    }

    /// Reads every record, fills `slots` and returns the length of the valid part.
    fn scan(&mut self, length: u64, purged_upto: Option<u64>) -> Result<u64, LogFileError> {
        let path = self.path.clone();
        let mut reader = BufReader::with_capacity(1024 * 1024, &*self.file);
        let mut magic = [0u8; 8];
        reader
            .read_exact(&mut magic)
            .map_err(|source| io_error("read", &path, source))?;
        if magic != MAGIC {
            return Err(LogFileError::BadMagic { path });
        }

        let mut offset = MAGIC_BYTES;
        let mut header = [0u8; RECORD_HEADER_BYTES];
        let mut payload = Vec::new();
        // The last kept record. Only kept records must follow each other: after openraft
        // purged the whole log to install a snapshot, the next entries follow the snapshot and
        // not the purged records still in the file.
        let mut previous: Option<u64> = None;
        loop {
            if length - offset < RECORD_HEADER_BYTES as u64 {
                return Ok(offset);
            }
            reader
                .read_exact(&mut header)
                .map_err(|source| io_error("read", &path, source))?;
            let parsed = RecordHeader::parse(&header);
            let record_bytes = RECORD_HEADER_BYTES as u64 + u64::from(parsed.payload_len);
            if length - offset < record_bytes {
                return Ok(offset);
            }
            payload.resize(parsed.payload_len as usize, 0);
            reader
                .read_exact(&mut payload)
                .map_err(|source| io_error("read", &path, source))?;
            if record_crc(&header, &payload) != parsed.crc {
                return Ok(offset);
            }
            if let Some(previous) = previous {
                if parsed.index != previous + 1 {
                    return Err(LogFileError::OutOfOrder {
                        path,
                        offset,
                        expected: previous + 1,
                        found: parsed.index,
                    });
                }
            }
            if purged_upto.is_some_and(|purged| parsed.index <= purged) {
                self.purged_bytes += record_bytes;
            } else {
                previous = Some(parsed.index);
                self.slots.insert(
                    parsed.index,
                    Slot {
                        offset,
                        payload_len: parsed.payload_len,
                    },
                );
            }
            if parsed.committed_index != NO_COMMITTED_INDEX {
                self.committed_index = self.committed_index.max(Some(parsed.committed_index));
            }
            offset += record_bytes;
        }
    }

    /// Returns the index of the last kept entry.
    pub fn last_index(&self) -> Option<u64> {
        self.slots.last_key_value().map(|(index, _)| *index)
    }

    /// Returns the highest committed index recorded with an append, if its entry is still kept.
    pub fn committed_index(&self) -> Option<u64> {
        let committed = self.committed_index?;
        let first = *self.slots.first_key_value()?.0;
        (committed >= first).then_some(committed)
    }

    /// Appends `records`, which must continue the kept entries, and returns once they are
    /// written and, with `sync`, synced. `committed_index` is stored in each header.
    pub fn append(
        &mut self,
        records: &[Record<'_>],
        committed_index: Option<u64>,
        sync: bool,
    ) -> Result<(), LogFileError> {
        let mut buffer = Vec::new();
        let mut new_slots = Vec::with_capacity(records.len());
        let mut expected = self.last_index().map(|last| last + 1);
        for record in records {
            if let Some(expected) = expected {
                if record.index != expected {
                    return Err(LogFileError::NotNext {
                        path: self.path.clone(),
                        index: record.index,
                        last: expected - 1,
                    });
                }
            }
            expected = Some(record.index + 1);
            let offset = self.end + buffer.len() as u64;
            let payload_len =
                u32::try_from(record.payload.len()).map_err(|_| LogFileError::TooLarge {
                    index: record.index,
                    len: record.payload.len(),
                })?;
            encode_record(&mut buffer, record, committed_index);
            new_slots.push((
                record.index,
                Slot {
                    offset,
                    payload_len,
                },
            ));
        }

        self.preallocate(self.end + buffer.len() as u64)?;
        self.file
            .write_all_at(&buffer, self.end)
            .map_err(|source| io_error("append to", &self.path, source))?;
        if sync {
            self.file
                .sync_data()
                .map_err(|source| io_error("sync", &self.path, source))?;
        }
        self.end += buffer.len() as u64;
        self.slots.extend(new_slots);
        if let Some(committed) = committed_index {
            self.committed_index = self.committed_index.max(Some(committed));
        }
        Ok(())
    }

    /// Removes the entries with index `since` and above from the file and returns once the
    /// shorter file is synced.
    pub fn truncate(&mut self, since: u64) -> Result<(), LogFileError> {
        let Some((_, first_removed)) = self.slots.range(since..).next() else {
            return Ok(());
        };
        let new_end = first_removed.offset;
        self.file
            .set_len(new_end)
            .map_err(|source| io_error("truncate", &self.path, source))?;
        self.file
            .sync_data()
            .map_err(|source| io_error("sync", &self.path, source))?;
        self.slots.split_off(&since);
        self.end = new_end;
        self.allocated = new_end;
        Ok(())
    }

    /// Drops the entries up to `upto`, inclusive, from memory. The caller records `upto` durably first,
    /// because the records stay in the file until the next compaction.
    pub fn purge(&mut self, upto: u64) -> Result<(), LogFileError> {
        let kept = match upto.checked_add(1) {
            Some(first_kept) => self.slots.split_off(&first_kept),
            None => BTreeMap::new(),
        };
        self.slots = kept;
        self.purged_bytes = match self.slots.first_key_value() {
            Some((_, slot)) => slot.offset - MAGIC_BYTES,
            None => self.end - MAGIC_BYTES,
        };
        if self.purged_bytes >= COMPACT_AFTER_PURGED_BYTES {
            self.compact()?;
        }
        Ok(())
    }

    /// Returns the JSON of entry `index`, or `None` when it is not kept.
    pub fn read(&self, index: u64) -> Result<Option<Vec<u8>>, LogFileError> {
        let Some(slot) = self.slots.get(&index) else {
            return Ok(None);
        };
        let mut payload = vec![0u8; slot.payload_len as usize];
        self.file
            .read_exact_at(&mut payload, slot.offset + RECORD_HEADER_BYTES as u64)
            .map_err(|source| io_error("read", &self.path, source))?;
        Ok(Some(payload))
    }

    /// Returns the indexes of the kept entries in `range`.
    pub fn indexes(&self, range: impl std::ops::RangeBounds<u64>) -> Vec<u64> {
        self.slots.range(range).map(|(index, _)| *index).collect()
    }

    /// Rewrites the file with the kept records only.
    fn compact(&mut self) -> Result<(), LogFileError> {
        let records: Vec<(u64, Vec<u8>)> = self
            .indexes(..)
            .into_iter()
            .map(|index| Ok((index, self.read(index)?.unwrap_or_default())))
            .collect::<Result<_, LogFileError>>()?;
        let committed = self.committed_index();
        let borrowed: Vec<Record<'_>> = records
            .iter()
            .map(|(index, payload)| Record {
                index: *index,
                payload,
            })
            .collect();
        write_new_file(&self.path, &borrowed, committed)?;
        let reopened = LogFile::open(&self.path, None)?;
        tracing::info!(
            path = %self.path.display(),
            removed_bytes = self.purged_bytes,
            entries = reopened.slots.len(),
            "rewrote raft log file without its purged entries"
        );
        *self = reopened;
        Ok(())
    }
}

/// Writes a complete log file of `records` at `path`: to a temporary file first, synced, then
/// renamed into place and the directory synced, so a crash leaves either the old file or the
/// new one.
pub(super) fn write_new_file(
    path: &Path,
    records: &[Record<'_>],
    committed_index: Option<u64>,
) -> Result<(), LogFileError> {
    let temporary = path.with_extension(TEMPORARY_SUFFIX);
    let mut buffer = MAGIC.to_vec();
    for record in records {
        u32::try_from(record.payload.len()).map_err(|_| LogFileError::TooLarge {
            index: record.index,
            len: record.payload.len(),
        })?;
        encode_record(&mut buffer, record, committed_index);
    }
    let mut file =
        File::create(&temporary).map_err(|source| io_error("create", &temporary, source))?;
    file.write_all(&buffer)
        .map_err(|source| io_error("write", &temporary, source))?;
    file.sync_all()
        .map_err(|source| io_error("sync", &temporary, source))?;
    std::fs::rename(&temporary, path).map_err(|source| io_error("rename", &temporary, source))?;
    sync_parent(path)
}

/// Removes a temporary file that a compaction or migration left when it crashed.
fn remove_temporary(path: &Path) -> Result<(), LogFileError> {
    let temporary = path.with_extension(TEMPORARY_SUFFIX);
    match std::fs::remove_file(&temporary) {
        Ok(()) => Ok(()),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(io_error("remove", &temporary, source)),
    }
}

fn write_magic(file: &File, path: &Path) -> Result<(), LogFileError> {
    file.write_all_at(&MAGIC, 0)
        .map_err(|source| io_error("write the header of", path, source))?;
    file.sync_all()
        .map_err(|source| io_error("sync", path, source))?;
    sync_parent(path)
}

/// Syncs the directory that contains `path`, so a new or renamed file survives a crash.
fn sync_parent(path: &Path) -> Result<(), LogFileError> {
    let parent = path.parent().unwrap_or(Path::new("."));
    File::open(parent)
        .and_then(|directory| directory.sync_all())
        .map_err(|source| io_error("sync the folder of", path, source))
}

fn io_error(step: &'static str, path: &Path, source: std::io::Error) -> LogFileError {
    LogFileError::Io {
        step,
        path: path.to_owned(),
        source,
    }
}

/// The committed index a header stores when none was known.
const NO_COMMITTED_INDEX: u64 = u64::MAX;

/// The fields of a record header.
struct RecordHeader {
    payload_len: u32,
    crc: u32,
    index: u64,
    committed_index: u64,
}

impl RecordHeader {
    fn parse(header: &[u8; RECORD_HEADER_BYTES]) -> RecordHeader {
        let u32_at = |at: usize| {
            u32::from_le_bytes([header[at], header[at + 1], header[at + 2], header[at + 3]])
        };
        let u64_at = |at: usize| {
            let mut bytes = [0u8; 8];
            bytes.copy_from_slice(&header[at..at + 8]);
            u64::from_le_bytes(bytes)
        };
        RecordHeader {
            payload_len: u32_at(0),
            crc: u32_at(4),
            index: u64_at(8),
            committed_index: u64_at(16),
        }
    }
}

/// Appends the record to `buffer`. The caller has checked that the payload length fits a u32.
fn encode_record(buffer: &mut Vec<u8>, record: &Record<'_>, committed_index: Option<u64>) {
    let mut header = [0u8; RECORD_HEADER_BYTES];
    let payload_len = u32::try_from(record.payload.len()).unwrap_or(u32::MAX);
    header[0..4].copy_from_slice(&payload_len.to_le_bytes());
    header[8..16].copy_from_slice(&record.index.to_le_bytes());
    header[16..24].copy_from_slice(&committed_index.unwrap_or(NO_COMMITTED_INDEX).to_le_bytes());
    let crc = record_crc(&header, record.payload);
    header[4..8].copy_from_slice(&crc.to_le_bytes());
    buffer.extend_from_slice(&header);
    buffer.extend_from_slice(record.payload);
}

/// CRC-32 of a record's header fields after the checksum and its payload.
fn record_crc(header: &[u8; RECORD_HEADER_BYTES], payload: &[u8]) -> u32 {
    let crc = crc32_update(0xFFFF_FFFF, &header[8..]);
    !crc32_update(crc, payload)
}

/// Lookup table of the reflected CRC-32 polynomial 0xEDB88320 (the one of zlib and Ethernet).
const CRC32_TABLE: [u32; 256] = {
    let mut table = [0u32; 256];
    let mut byte = 0;
    while byte < 256 {
        let mut crc = byte as u32;
        let mut bit = 0;
        while bit < 8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
            bit += 1;
        }
        table[byte] = crc;
        byte += 1;
    }
    table
};

fn crc32_update(mut crc: u32, bytes: &[u8]) -> u32 {
    for byte in bytes {
        crc = CRC32_TABLE[((crc ^ u32::from(*byte)) & 0xFF) as usize] ^ (crc >> 8);
    }
    crc
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(index: u64, payload: &[u8]) -> Record<'_> {
        Record { index, payload }
    }

    #[test]
    fn crc32_matches_check_value() {
        // The standard check value of CRC-32 (zlib) for the ASCII digits 1 to 9.
        assert_eq!(!crc32_update(0xFFFF_FFFF, b"123456789"), 0xCBF4_3926);
    }

    #[test]
    fn entries_survive_reopen() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let path = dir.path().join("raft-log.entries");
        {
            let mut log = LogFile::open(&path, None).expect("create");
            log.append(&[record(1, b"one"), record(2, b"two")], None, true)
                .expect("append");
            log.append(&[record(3, b"three")], Some(2), true).expect("append");
        }
        let log = LogFile::open(&path, None).expect("reopen");
        assert_eq!(log.indexes(..), vec![1, 2, 3]);
        assert_eq!(log.read(3).expect("read").as_deref(), Some(&b"three"[..]));
        assert_eq!(log.committed_index(), Some(2));
    }

    #[test]
    fn torn_tail_is_cut() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let path = dir.path().join("raft-log.entries");
        {
            let mut log = LogFile::open(&path, None).expect("create");
            log.append(&[record(1, b"one"), record(2, b"two")], None, true)
                .expect("append");
        }
        let synced_length = LogFile::open(&path, None).expect("reopen").records_end();
        // A record header that promises more payload than the file holds, as a crash
        // during an append leaves it, in the zeros written ahead and at the file's end.
        let file = OpenOptions::new().write(true).open(&path).expect("open");
        let torn = [200, 0, 0, 0, 1, 2, 3, 4, 3, 0, 0, 0, 0, 0, 0, 0];
        file.write_all_at(&torn, synced_length).expect("write torn bytes");
        drop(file);

        let mut log = LogFile::open(&path, None).expect("reopen");
        assert_eq!(log.indexes(..), vec![1, 2]);
        assert_eq!(
            std::fs::metadata(&path).expect("metadata").len(),
            synced_length
        );
        log.append(&[record(3, b"three")], None, true)
            .expect("append after the cut");
        drop(log);
        let log = LogFile::open(&path, None).expect("reopen again");
        assert_eq!(log.indexes(..), vec![1, 2, 3]);
    }

    #[test]
    fn corrupt_payload_is_cut() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let path = dir.path().join("raft-log.entries");
        {
            let mut log = LogFile::open(&path, None).expect("create");
            log.append(&[record(1, b"one"), record(2, b"two")], None, true)
                .expect("append");
        }
        let length = LogFile::open(&path, None).expect("reopen").records_end();
        let file = OpenOptions::new().write(true).open(&path).expect("open");
        file.write_all_at(b"X", length - 1).expect("flip a byte");
        drop(file);

        let log = LogFile::open(&path, None).expect("reopen");
        assert_eq!(log.indexes(..), vec![1]);
    }

    #[test]
    fn zeros_written_ahead_are_kept_and_crossed() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let path = dir.path().join("raft-log.entries");
        let file_length = || std::fs::metadata(&path).expect("metadata").len();
        {
            let mut log = LogFile::open(&path, None).expect("create");
            log.append(&[record(1, b"one")], None, true).expect("append");
            assert_eq!(file_length(), PREALLOCATE_BYTES);
            assert!(log.records_end() < PREALLOCATE_BYTES);
        }

        // Reopening keeps the zeros, and a record longer than the rest of them extends the
        // file past its end.
        let mut log = LogFile::open(&path, None).expect("reopen");
        assert_eq!(file_length(), PREALLOCATE_BYTES);
        let large = vec![b'x'; PREALLOCATE_BYTES as usize];
        log.append(&[record(2, &large)], None, true).expect("append a large record");
        log.append(&[record(3, b"three")], None, true).expect("append");
        assert_eq!(file_length(), 2 * PREALLOCATE_BYTES);
        drop(log);

        let log = LogFile::open(&path, None).expect("reopen again");
        assert_eq!(log.indexes(..), vec![1, 2, 3]);
        assert_eq!(log.read(2).expect("read").map(|payload| payload.len()), Some(large.len()));
        assert_eq!(file_length(), 2 * PREALLOCATE_BYTES);
    }

    #[test]
    fn truncate_and_purge() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let path = dir.path().join("raft-log.entries");
        {
            let mut log = LogFile::open(&path, None).expect("create");
            let payloads: Vec<Vec<u8>> = (1..=6).map(|index| vec![b'a'; index]).collect();
            let records: Vec<Record<'_>> = payloads
                .iter()
                .enumerate()
                .map(|(position, payload)| record(position as u64 + 1, payload))
                .collect();
            log.append(&records, None, true).expect("append");
            log.truncate(5).expect("truncate");
            log.purge(2).expect("purge");
            assert_eq!(log.indexes(..), vec![3, 4]);
            log.append(&[record(5, b"new")], None, true)
                .expect("append after truncate");
            let not_next = log.append(&[record(9, b"gap")], None, true);
            assert!(
                matches!(not_next, Err(LogFileError::NotNext { .. })),
                "{not_next:?}"
            );
        }
        // The purged records stay in the file until a compaction, and the caller passes the
        // purged index again when it reopens the file.
        let log = LogFile::open(&path, Some(2)).expect("reopen");
        assert_eq!(log.indexes(..), vec![3, 4, 5]);
        assert_eq!(log.read(5).expect("read").as_deref(), Some(&b"new"[..]));
    }

    #[test]
    fn append_after_purging_everything() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let path = dir.path().join("raft-log.entries");
        {
            let mut log = LogFile::open(&path, None).expect("create");
            log.append(&[record(1, b"one"), record(2, b"two")], None, true)
                .expect("append");
            // A snapshot up to entry 10 was installed, so the whole log is purged and the
            // next entry is 11.
            log.purge(10).expect("purge");
            log.append(&[record(11, b"eleven")], None, true)
                .expect("append after the snapshot");
        }
        let log = LogFile::open(&path, Some(10)).expect("reopen");
        assert_eq!(log.indexes(..), vec![11]);
    }

    #[test]
    fn short_header_is_rewritten() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let path = dir.path().join("raft-log.entries");
        std::fs::write(&path, &MAGIC[..3]).expect("write a short header");
        let mut log = LogFile::open(&path, None).expect("open");
        log.append(&[record(1, b"one")], None, true).expect("append");
        drop(log);
        let log = LogFile::open(&path, None).expect("reopen");
        assert_eq!(log.indexes(..), vec![1]);
    }

    #[test]
    fn compaction_keeps_entries() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let path = dir.path().join("raft-log.entries");
        let mut log = LogFile::open(&path, None).expect("create");
        log.append(
            &[record(1, b"one"), record(2, b"two"), record(3, b"three")],
            Some(2),
            true,
        )
        .expect("append");
        log.purge(1).expect("purge");
        log.compact().expect("compact");
        assert_eq!(log.indexes(..), vec![2, 3]);
        assert_eq!(log.read(2).expect("read").as_deref(), Some(&b"two"[..]));
        drop(log);
        let log = LogFile::open(&path, None).expect("reopen");
        assert_eq!(log.indexes(..), vec![2, 3]);
        assert_eq!(log.committed_index(), Some(2));
    }
}
