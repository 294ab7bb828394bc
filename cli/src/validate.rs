//! The `validate` command: checks silo files without a controller and prints one summary line
//! per silo, or the problems found.
//!
//! A summary line reads `NAME: image IMAGE, binary PATH, FILES (SIZE)[, N instances]`, for
//! example `web-a: image busybox, binary /bin/httpd, 3 files, 1 folder (1.2 KiB)`. FILES counts
//! the bundle's regular files, and folders and symlinks when there are any; SIZE is the total
//! of the files' contents. The instance count appears when `count` is set to anything but 1.
//! With more than one silo file, each line starts with `FILE: `, as grep does.

use std::path::PathBuf;

use colex_cli::spec;
use colex_proto::{FileKind, SiloSpec};

use crate::client::CliError;
use crate::output::{self, OutputFormat, ValidatedFile};

const BYTES_PER_KIB: u64 = 1024;

/// Validates every file, printing summaries on standard output and problems on standard
/// error, or with `OutputFormat::Json` both in one JSON document on standard output. Fails
/// when any file has a problem, after all files were checked.
pub fn run(files: &[PathBuf], format: OutputFormat) -> Result<(), CliError> {
    if format == OutputFormat::Json {
        return run_json(files);
    }
    let show_file = files.len() > 1;
    let mut invalid_files = 0;

    for file in files {
        match spec::load(file) {
            Ok(specs) => {
                for silo in &specs {
                    if show_file {
                        println!("{}: {}", file.display(), summary_line(silo));
                    } else {
                        println!("{}", summary_line(silo));
                    }
                }
            }
            // One file: its problems are the command's error, printed once like `up` does.
            Err(error) if !show_file => return Err(CliError::from_spec(&error)),
            Err(error) => {
                eprintln!("{error}");
                invalid_files += 1;
            }
        }
    }

    match (invalid_files, files.len()) {
        (0, _) => Ok(()),
        (invalid, total) => Err(CliError::user(format!(
            "{invalid} of {total} silo files are invalid"
        ))),
    }
}

/// Validates every file and prints one JSON document with each file's silos or problems.
fn run_json(files: &[PathBuf]) -> Result<(), CliError> {
    let report = output::ValidateReport {
        files: files
            .iter()
            .map(|file| ValidatedFile::new(&file.display().to_string(), &spec::load(file)))
            .collect(),
    };
    output::print_json(&report)?;

    let invalid = report.files.iter().filter(|file| !file.valid).count();
    if invalid == 0 {
        return Ok(());
    }
    Err(CliError::user(format!(
        "{invalid} of {} silo files are invalid; the JSON output lists their problems",
        files.len()
    )))
}

/// Describes one valid silo in one line.
fn summary_line(silo: &SiloSpec) -> String {
    let binary = silo
        .binary
        .as_ref()
        .map_or("(none)", |binary| binary.path.as_str());
    let mut line = format!(
        "{}: image {}, binary {binary}, {}",
        silo.name,
        silo.base,
        files_summary(silo)
    );
    if let Some(count) = silo.count.filter(|&count| count != 1) {
        line.push_str(&format!(", {count} instances"));
    }
    line
}

/// Counts the bundle's entries by kind, with the total size of the contents:
/// `3 files, 1 folder, 1 symlink (1.2 KiB)`. Files are always named, the others only when
/// present.
fn files_summary(silo: &SiloSpec) -> String {
    let count_of = |kind: FileKind| {
        silo.files
            .iter()
            .filter(|entry| entry.kind() == kind)
            .count()
    };
    let content_bytes: usize = silo.files.iter().map(|entry| entry.content.len()).sum();

    let mut parts = vec![counted(count_of(FileKind::Regular), "file")];
    let folders = count_of(FileKind::Directory);
    if folders > 0 {
        parts.push(counted(folders, "folder"));
    }
    let symlinks = count_of(FileKind::Symlink);
    if symlinks > 0 {
        parts.push(counted(symlinks, "symlink"));
    }
    let size = format_size(u64::try_from(content_bytes).unwrap_or(u64::MAX));
    format!("{} ({size})", parts.join(", "))
}

fn counted(count: usize, noun: &str) -> String {
    if count == 1 {
        format!("1 {noun}")
    } else {
        format!("{count} {noun}s")
    }
}

/// Formats a byte count with a binary unit and one decimal: `512 B`, `1.2 KiB`, `64.0 MiB`.
fn format_size(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if bytes < BYTES_PER_KIB {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / BYTES_PER_KIB as f64;
    let mut unit = UNITS[0];
    for next in &UNITS[1..] {
        if value < BYTES_PER_KIB as f64 {
            break;
        }
        value /= BYTES_PER_KIB as f64;
        unit = next;
    }
    format!("{value:.1} {unit}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use colex_proto::{Binary, FileEntry};

    fn entry(kind: FileKind, content_bytes: usize) -> FileEntry {
        FileEntry {
            silo_path: "/x".to_owned(),
            content: vec![b'x'; content_bytes],
            mode: 0o644,
            kind: kind.into(),
            link_target: String::new(),
            ..Default::default()
        }
    }

    fn silo(files: Vec<FileEntry>, count: Option<u32>) -> SiloSpec {
        SiloSpec {
            name: "web-a".to_owned(),
            base: "busybox".to_owned(),
            binary: Some(Binary {
                path: "/bin/httpd".to_owned(),
                ..Binary::default()
            }),
            files,
            count,
            ..SiloSpec::default()
        }
    }

    #[test]
    fn size_units() {
        assert_eq!(format_size(0), "0 B");
        assert_eq!(format_size(1023), "1023 B");
        assert_eq!(format_size(1024), "1.0 KiB");
        assert_eq!(format_size(1229), "1.2 KiB");
        assert_eq!(format_size(64 * 1024 * 1024), "64.0 MiB");
        assert_eq!(format_size(3 << 40), "3.0 TiB");
    }

    #[test]
    fn summary_without_files() {
        assert_eq!(
            summary_line(&silo(Vec::new(), None)),
            "web-a: image busybox, binary /bin/httpd, 0 files (0 B)"
        );
    }

    #[test]
    fn summary_counts_kinds_and_size() {
        let files = vec![
            entry(FileKind::Directory, 0),
            entry(FileKind::Regular, 1000),
            entry(FileKind::Regular, 229),
            entry(FileKind::Symlink, 0),
            entry(FileKind::Regular, 0),
        ];
        assert_eq!(
            summary_line(&silo(files, Some(3))),
            "web-a: image busybox, binary /bin/httpd, 3 files, 1 folder, 1 symlink (1.2 KiB), 3 instances"
        );
    }

    #[test]
    fn summary_hides_count_of_one() {
        let files = vec![entry(FileKind::Regular, 10)];
        assert_eq!(
            summary_line(&silo(files, Some(1))),
            "web-a: image busybox, binary /bin/httpd, 1 file (10 B)"
        );
    }
}
