//! Robustness of `load_str`: arbitrary bytes and mutated valid silo files never make it
//! panic, and every problem it reports has a position inside the text. `spec_scaling.rs`
//! checks the running time.

use std::fs;
use std::path::Path;

use colex_cli::spec::load_str;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};

/// A valid silo file that uses every kind of block, mutated by the tests. Its paths name the
/// files that `create_files` makes.
const SEED: &str = r#"# Seed for mutations.
Silo "web" {
  name  = "web-a"
  class = "web"
  tags  = ["a", "b"]
  base  = "img://busybox"
  count = 2
  kill_timeout = "1h30m"

  binary {
    path = "/bin/httpd"
    args = ["-f", "-p", "80"]
    env  = ["LANG=C", "A=1"]
  }

  file "script" {
    path      = "script.sh"
    silo_path = "/start.sh"
  }

  files "site" {
    path      = "site"
    silo_path = "/www"
  }

  network {
    internet_access = true
    nameservers     = ["198.51.100.53", "2001:db8::53"]
    hosts           = { db = "10.69.0.5", "cache.internal" = "2001:db8::5" }
  }

  bind "data" {
    id   = "data"
    path = "/data"
  }

  grants    = { query_silos = true }
  resources = { cpu_percent = 50, memory = "64MiB" }

  placement {
    hosts    = ["node1"]
    labels   = { disk = "ssd" }
    strategy = "spread"
  }

  restart {
    policy   = "on-failure"
    attempts = 3
    delay    = "500ms"
  }
}

silo "worker" {
  binary = { path = "/bin/sleep", args = ["60"] }
}
"#;

/// Characters inserted by mutations: HCL punctuation, quotes, escapes, digits, letters, a
/// multi-byte character and line breaks.
const MUTATION_CHARACTERS: &[char] = &[
    '{', '}', '[', ']', '(', ')', '=', '"', ',', '.', ':', '/', '\\', '$', '%', '#', '<', '-', '*',
    '?', '!', ' ', '\n', '\t', '0', '9', 'a', 'Z', '_', 'é', '\u{0}',
];

/// Creates the files the seed names, in `folder/inner`, and returns that folder. A mutated
/// `..` path then leads only into the temporary folder.
fn create_files(folder: &Path) -> std::path::PathBuf {
    let inner = folder.join("inner");
    let created = fs::create_dir_all(inner.join("site/css"))
        .and_then(|()| fs::write(inner.join("script.sh"), "#!/bin/sh\n"))
        .and_then(|()| fs::write(inner.join("site/index.html"), "<p>hi</p>\n"))
        .and_then(|()| fs::write(inner.join("site/css/site.css"), "p {}\n"))
        .and_then(|()| std::os::unix::fs::symlink("index.html", inner.join("site/home.html")));
    if let Err(error) = created {
        panic!(
            "failed to create the seed's files in {}: {error}",
            inner.display()
        );
    }
    inner
}

fn temporary_folder() -> tempfile::TempDir {
    match tempfile::tempdir() {
        Ok(folder) => folder,
        Err(error) => panic!("failed to create a temporary folder: {error}"),
    }
}

/// One edit of a text, at a position given as a fraction of its length.
#[derive(Debug, Clone)]
enum Edit {
    Delete(prop::sample::Index),
    Insert(prop::sample::Index, char),
    Replace(prop::sample::Index, char),
    /// Copies a span of up to 40 characters to another position.
    Duplicate(prop::sample::Index, usize, prop::sample::Index),
}

fn edit_strategy() -> impl Strategy<Value = Edit> {
    let character = prop::sample::select(MUTATION_CHARACTERS);
    prop_oneof![
        any::<prop::sample::Index>().prop_map(Edit::Delete),
        (any::<prop::sample::Index>(), character.clone()).prop_map(|(at, c)| Edit::Insert(at, c)),
        (any::<prop::sample::Index>(), character).prop_map(|(at, c)| Edit::Replace(at, c)),
        (
            any::<prop::sample::Index>(),
            1..40usize,
            any::<prop::sample::Index>()
        )
            .prop_map(|(from, length, to)| Edit::Duplicate(from, length, to)),
    ]
}

fn apply(edits: &[Edit]) -> String {
    let mut characters: Vec<char> = SEED.chars().collect();
    for edit in edits {
        let length = characters.len();
        match edit {
            Edit::Delete(at) if length > 0 => {
                characters.remove(at.index(length));
            }
            Edit::Insert(at, character) => characters.insert(at.index(length + 1), *character),
            Edit::Replace(at, character) if length > 0 => characters[at.index(length)] = *character,
            Edit::Duplicate(from, span, to) if length > 0 => {
                let start = from.index(length);
                let end = (start + span).min(length);
                let copied: Vec<char> = characters[start..end].to_vec();
                let at = to.index(length + 1);
                characters.splice(at..at, copied);
            }
            _ => {}
        }
    }
    characters.into_iter().collect()
}

fn runner(cases: u32) -> TestRunner {
    TestRunner::new(Config {
        cases,
        // Failures are reported with the shrunk input, and no regression file is written.
        failure_persistence: None,
        ..Config::default()
    })
}

#[test]
fn seed_is_valid() {
    let folder = temporary_folder();
    let inner = create_files(folder.path());

    if let Err(error) = load_str(SEED, "seed.hcl", &inner) {
        panic!("the seed must load, so mutations start from a valid file:\n{error}");
    }
}

#[test]
fn arbitrary_bytes_never_panic() {
    let folder = temporary_folder();
    let inner = create_files(folder.path());

    let result = runner(512).run(&prop::collection::vec(any::<u8>(), 0..1024), |bytes| {
        let text = String::from_utf8_lossy(&bytes);
        let _ = load_str(&text, "fuzz.hcl", &inner);
        Ok(())
    });
    if let Err(error) = result {
        panic!("{error}");
    }
}

#[test]
fn mutated_seed_never_panics() {
    let folder = temporary_folder();
    let inner = create_files(folder.path());

    let result = runner(768).run(&prop::collection::vec(edit_strategy(), 1..12), |edits| {
        let text = apply(&edits);
        match load_str(&text, "fuzz.hcl", &inner) {
            Ok(_) => Ok(()),
            // Every problem has a position inside the text (or just past its end).
            Err(error) => {
                let lines = text.split('\n').count();
                for problem in error.problems() {
                    if problem.line == 0 || problem.line > lines || problem.column == 0 {
                        return Err(TestCaseError::fail(format!(
                            "position {}:{} outside the text of {lines} lines: {}",
                            problem.line, problem.column, problem.message
                        )));
                    }
                }
                Ok(())
            }
        }
    });
    if let Err(error) = result {
        panic!("{error}");
    }
}
