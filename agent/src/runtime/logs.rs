//! Output of a silo's program: the size-capped rotating files the helper writes, and the
//! reader that sends them to the controller, from the end (`tail`) and as they grow (`follow`).
//!
//! Each stream has at most two files: `stdout.log`, which the helper appends to, and
//! `stdout.log.1`, the previous one. When `stdout.log` reaches [`MAX_LOG_FILE_BYTES`], the
//! helper renames it to `stdout.log.1` (replacing the older one) and starts a new file, so a
//! stream never takes more than twice the cap on disk. The cap is exact in bytes, so a line can
//! be split between the two files.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio::sync::mpsc;

/// Maximum size of one log file in bytes; a stream keeps at most two such files.
pub const MAX_LOG_FILE_BYTES: u64 = 8 * 1024 * 1024;
/// Suffix of the rotated, previous log file of a stream.
pub const ROTATED_SUFFIX: &str = ".1";
/// Mode of the log files.
const LOG_FILE_MODE: u32 = 0o640;
/// Largest chunk sent to a log reader, in bytes.
pub const MAX_CHUNK_BYTES: usize = 64 * 1024;
/// Interval between two looks for new output while following a log.
const FOLLOW_POLL_INTERVAL: Duration = Duration::from_millis(100);

/// Errors of reading a silo's logs.
#[derive(Debug, thiserror::Error)]
pub enum LogsError {
    #[error("failed to read log {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
}

/// Returns the path of the rotated predecessor of log `path`: `stdout.log.1` for `stdout.log`.
pub fn rotated_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(ROTATED_SUFFIX);
    PathBuf::from(name)
}

/// An append-only log file that rotates once it reaches its size cap.
#[derive(Debug)]
pub struct RotatingLog {
    path: PathBuf,
    file: File,
    /// Bytes in the current file.
    written: u64,
    max_bytes: u64,
}

impl RotatingLog {
    /// Opens `path` for appending, creating it when missing; existing content counts toward the
    /// cap, so a restarted program continues the same files.
    pub fn open(path: &Path, max_bytes: u64) -> io::Result<RotatingLog> {
        let file = open_append(path)?;
        let written = file.metadata()?.len();
        Ok(RotatingLog {
            path: path.to_path_buf(),
            file,
            written,
            max_bytes: max_bytes.max(1),
        })
    }

    /// Appends `data`, rotating whenever the current file is full.
    pub fn write(&mut self, mut data: &[u8]) -> io::Result<()> {
        while !data.is_empty() {
            if self.written >= self.max_bytes {
                self.rotate()?;
            }
            let room = usize::try_from(self.max_bytes - self.written).unwrap_or(usize::MAX);
            let (now, later) = data.split_at(room.min(data.len()));
            self.file.write_all(now)?;
            self.written += now.len() as u64;
            data = later;
        }
        Ok(())
    }

    fn rotate(&mut self) -> io::Result<()> {
        std::fs::rename(&self.path, rotated_path(&self.path))?;
        self.file = open_append(&self.path)?;
        self.written = 0;
        Ok(())
    }
}

fn open_append(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(LOG_FILE_MODE)
        .open(path)
}

/// The part of one log stream a reader requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogQuery {
    /// Send only the last this many lines; `None` sends both files whole.
    pub tail_lines: Option<u32>,
    /// Keep sending new output until `sink` closes or `silo_dir` disappears.
    pub follow: bool,
}

/// Sends the log at `path` (with its rotated predecessor) to `sink` in chunks of at most
/// [`MAX_CHUNK_BYTES`]. Returns when everything asked for was sent, when `sink` is closed, or,
/// when following, once `silo_dir` is gone because the silo was removed.
pub async fn stream_log(
    path: &Path,
    silo_dir: &Path,
    query: LogQuery,
    sink: &mpsc::Sender<Vec<u8>>,
) -> Result<(), LogsError> {
    let read_error = |path: &Path| {
        let path = path.to_path_buf();
        move |source| LogsError::Read { path, source }
    };
    // The current file is opened first and followed through this handle, so output written
    // while the tail is read is neither lost nor sent twice.
    let mut current = match tokio::fs::File::open(path).await {
        Ok(file) => Some(file),
        Err(err) if err.kind() == io::ErrorKind::NotFound => None,
        Err(source) => return Err(LogsError::Read { path: path.to_path_buf(), source }),
    };
    let current_bytes = match &mut current {
        Some(file) => read_all(file).await.map_err(read_error(path))?,
        None => Vec::new(),
    };
    let rotated = rotated_path(path);
    let needs_rotated = match query.tail_lines {
        None => true,
        Some(lines) => count_lines(&current_bytes) < u64::from(lines),
    };
    let mut initial = if needs_rotated {
        match tokio::fs::read(&rotated).await {
            Ok(bytes) => bytes,
            Err(err) if err.kind() == io::ErrorKind::NotFound => Vec::new(),
            Err(source) => return Err(LogsError::Read { path: rotated, source }),
        }
    } else {
        Vec::new()
    };
    initial.extend_from_slice(&current_bytes);
    drop(current_bytes);
    let start = match query.tail_lines {
        Some(lines) => tail_start(&initial, lines),
        None => 0,
    };
    if !send_chunks(sink, &initial[start..]).await {
        return Ok(());
    }
    drop(initial);
    if !query.follow {
        return Ok(());
    }

    let mut buffer = vec![0u8; MAX_CHUNK_BYTES];
    loop {
        let read = match &mut current {
            Some(file) => file.read(&mut buffer).await.map_err(read_error(path))?,
            None => 0,
        };
        if read > 0 {
            if sink.send(buffer[..read].to_vec()).await.is_err() {
                return Ok(());
            }
            continue;
        }
        // Nothing new in the open file: it may have been rotated away, or the silo removed.
        if !tokio::fs::try_exists(silo_dir).await.unwrap_or(false) {
            return Ok(());
        }
        if was_replaced(path, current.as_ref()).await {
            // The writer filled the old file before renaming it, so whatever it got after the
            // read above is still there to send.
            if let Some(old) = &mut current {
                loop {
                    let read = old.read(&mut buffer).await.map_err(read_error(path))?;
                    if read == 0 {
                        break;
                    }
                    if sink.send(buffer[..read].to_vec()).await.is_err() {
                        return Ok(());
                    }
                }
            }
            current = match tokio::fs::File::open(path).await {
                Ok(file) => Some(file),
                Err(err) if err.kind() == io::ErrorKind::NotFound => None,
                Err(source) => return Err(LogsError::Read { path: path.to_path_buf(), source }),
            };
            continue;
        }
        tokio::select! {
            _ = tokio::time::sleep(FOLLOW_POLL_INTERVAL) => {}
            _ = sink.closed() => return Ok(()),
        }
    }
}

/// Reports whether the file at `path` is another file than `open` (or appeared since).
async fn was_replaced(path: &Path, open: Option<&tokio::fs::File>) -> bool {
    let Ok(on_disk) = tokio::fs::metadata(path).await else {
        return false;
    };
    match open {
        None => true,
        Some(file) => match file.metadata().await {
            Ok(open_meta) => open_meta.ino() != on_disk.ino() || open_meta.dev() != on_disk.dev(),
            Err(_) => true,
        },
    }
}

async fn read_all(file: &mut tokio::fs::File) -> io::Result<Vec<u8>> {
    file.seek(io::SeekFrom::Start(0)).await?;
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes).await?;
    Ok(bytes)
}

/// Sends `bytes` in chunks; returns false once the sink is closed.
async fn send_chunks(sink: &mpsc::Sender<Vec<u8>>, bytes: &[u8]) -> bool {
    for chunk in bytes.chunks(MAX_CHUNK_BYTES) {
        if sink.send(chunk.to_vec()).await.is_err() {
            return false;
        }
    }
    true
}

fn count_lines(bytes: &[u8]) -> u64 {
    let newlines = bytes.iter().filter(|byte| **byte == b'\n').count() as u64;
    // A last line without its newline is a line too.
    match bytes.last() {
        Some(b'\n') | None => newlines,
        Some(_) => newlines + 1,
    }
}

/// Returns the offset at which the last `lines` lines of `bytes` start.
pub fn tail_start(bytes: &[u8], lines: u32) -> usize {
    if lines == 0 {
        return bytes.len();
    }
    // A trailing newline ends the last line and does not start another one.
    let end = match bytes.last() {
        Some(b'\n') => bytes.len() - 1,
        _ => bytes.len(),
    };
    let mut seen = 0u32;
    for (index, byte) in bytes[..end].iter().enumerate().rev() {
        if *byte == b'\n' {
            seen += 1;
            if seen == lines {
                return index + 1;
            }
        }
    }
    0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotation_caps_each_file() {
        let dir = tempfile::tempdir().expect("create temp dir");
        let path = dir.path().join("stdout.log");
        let mut log = RotatingLog::open(&path, 10).expect("open log");
        log.write(b"0123456789abcdef").expect("write");
        log.write(b"ghijklmnopqrstuvwxyz").expect("write");

        let current = std::fs::read(&path).expect("read current");
        let previous = std::fs::read(rotated_path(&path)).expect("read rotated");
        assert_eq!(current, b"uvwxyz");
        assert_eq!(previous, b"klmnopqrst");
        assert!(!dir.path().join("stdout.log.1.1").exists());
    }

    #[test]
    fn reopen_counts_existing_bytes() {
        let dir = tempfile::tempdir().expect("create temp dir");
        let path = dir.path().join("stdout.log");
        std::fs::write(&path, b"12345678").expect("seed log");
        let mut log = RotatingLog::open(&path, 10).expect("open log");
        log.write(b"abcd").expect("write");
        assert_eq!(std::fs::read(rotated_path(&path)).expect("rotated"), b"12345678ab");
        assert_eq!(std::fs::read(&path).expect("current"), b"cd");
    }

    #[test]
    fn tail_start_finds_last_lines() {
        let text = b"one\ntwo\nthree\n";
        assert_eq!(&text[tail_start(text, 1)..], b"three\n");
        assert_eq!(&text[tail_start(text, 2)..], b"two\nthree\n");
        assert_eq!(&text[tail_start(text, 9)..], text);
        assert_eq!(&text[tail_start(text, 0)..], b"");
        let open_line = b"one\ntwo";
        assert_eq!(&open_line[tail_start(open_line, 1)..], b"two");
    }

    #[tokio::test]
    async fn tail_spans_rotated_file() {
        let dir = tempfile::tempdir().expect("create temp dir");
        let path = dir.path().join("stdout.log");
        std::fs::write(rotated_path(&path), b"a\nb\n").expect("write rotated");
        std::fs::write(&path, b"c\n").expect("write current");
        let (sink, mut chunks) = mpsc::channel(16);
        let query = LogQuery { tail_lines: Some(2), follow: false };
        stream_log(&path, dir.path(), query, &sink).await.expect("stream");
        drop(sink);
        let mut received = Vec::new();
        while let Some(chunk) = chunks.recv().await {
            received.extend(chunk);
        }
        assert_eq!(received, b"b\nc\n");
    }

    #[tokio::test]
    async fn follow_sees_new_output_and_rotation() {
        let dir = tempfile::tempdir().expect("create temp dir");
        let silo_dir = dir.path().join("silo");
        std::fs::create_dir(&silo_dir).expect("create silo dir");
        let path = silo_dir.join("stdout.log");
        let mut log = RotatingLog::open(&path, 8).expect("open log");
        log.write(b"first\n").expect("write");

        let (sink, mut chunks) = mpsc::channel(16);
        let reader = {
            let path = path.clone();
            let silo_dir = silo_dir.clone();
            tokio::spawn(async move {
                let query = LogQuery { tail_lines: None, follow: true };
                stream_log(&path, &silo_dir, query, &sink).await
            })
        };
        let mut received = Vec::new();
        // Rotates once: "first\nse" fills the first file.
        for (expected, write) in [(&b"first\n"[..], Some(b"second\n")), (b"first\nsecond\n", None)] {
            while received.len() < expected.len() {
                let chunk = tokio::time::timeout(Duration::from_secs(5), chunks.recv())
                    .await
                    .expect("a chunk within 5 s")
                    .expect("reader still sending");
                received.extend(chunk);
            }
            assert_eq!(received, expected);
            if let Some(data) = write {
                log.write(data).expect("write");
            }
        }
        std::fs::remove_dir_all(&silo_dir).expect("remove silo dir");
        reader.await.expect("reader task").expect("stream ends cleanly");
    }
}
