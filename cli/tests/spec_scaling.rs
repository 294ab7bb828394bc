//! Running time of `load_str` on inputs that grow 16 times: it must stay close to 16 times as
//! long, so no part of loading is quadratic. This is the only test of its binary, so no other
//! test competes with it for the CPU while it measures.

use std::path::Path;
use std::time::{Duration, Instant};

use colex_cli::spec::load_str;

/// Size parameter of the small inputs (about 0.5-17 KiB each).
const BASE_N: usize = 256;

/// Factor between the small and the large inputs.
const GROWTH: usize = 16;

/// Maximum ratio of the large input's time to the small one's. Linear inputs measured 11-17
/// on a 2-core machine (debug build); a quadratic part adds a factor of up to 16 on top.
const MAX_RATIO: u32 = 32;

/// Allowance for timer and scheduler noise, added to the bound.
const NOISE: Duration = Duration::from_millis(10);

/// Number of measurements of each input; the fastest counts, which filters out pauses.
const RUNS: usize = 3;

/// Returns inputs that grow with `n`, each aimed at a part that could go quadratic. They cover
/// many silos, many problems on one line, long names repeated in message prefixes, many blocks
/// and duplicate names. Others put problems after long multi-byte text on one line, or a syntax
/// error at the end.
fn scaling_inputs(n: usize) -> Vec<(&'static str, String)> {
    let silo =
        |index: usize| format!("Silo \"s{index}\" {{\n  binary {{ path = \"/bin/sh\" }}\n}}\n");
    vec![
        ("many silos", (0..n).map(silo).collect()),
        (
            "many problems on one line",
            format!("Silo \"s\" {{\n  binary {{ path = \"/bin/sh\" }}\n  tags = [{}]\n}}\n", "1,".repeat(n)),
        ),
        (
            "long label with many problems",
            format!(
                "Silo \"{}\" {{\n  binary {{ path = \"/bin/sh\", env = [{}] }}\n}}\n",
                "x".repeat(n * 4),
                "\"E\",".repeat(n)
            ),
        ),
        (
            "many unknown attributes",
            format!(
                "Silo \"s\" {{\n  binary {{ path = \"/bin/sh\" }}\n{}}}\n",
                (0..n).map(|index| format!("  unknown{index} = 1\n")).collect::<String>()
            ),
        ),
        (
            "many file blocks",
            format!(
                "Silo \"s\" {{\n  binary {{ path = \"/bin/sh\" }}\n{}}}\n",
                (0..n)
                    .map(|index| format!("  file \"f{index}\" {{\n    path = \"absent\"\n    silo_path = \"/f{index}\"\n  }}\n"))
                    .collect::<String>()
            ),
        ),
        ("duplicate names", "Silo \"same\" {\n  binary { path = \"/bin/sh\" }\n}\n".repeat(n)),
        (
            "problems after a long comment",
            format!(
                "Silo \"s\" {{\n  binary {{ path = \"/bin/sh\" }}\n  tags = [/* {} */ {}]\n}}\n",
                "é".repeat(n * 32),
                "1,".repeat(n)
            ),
        ),
        (
            "problems on a long multi-byte line",
            format!(
                "Silo \"s\" {{\n  binary {{ path = \"/bin/sh\" }}\n  tags = [\"{}\", {}]\n}}\n",
                "é".repeat(n * 32),
                "1,".repeat(n)
            ),
        ),
        (
            "syntax error at the end",
            format!(
                "Silo \"s\" {{\n{}  x = [\n",
                (0..n).map(|index| format!("  a{index} = [1, \"é\", {{ b = 2 }}]\n")).collect::<String>()
            ),
        ),
    ]
}

#[test]
fn time_grows_linearly() {
    let folder = match tempfile::tempdir() {
        Ok(folder) => folder,
        Err(error) => panic!("failed to create a temporary folder: {error}"),
    };
    let small = scaling_inputs(BASE_N);
    let large = scaling_inputs(BASE_N * GROWTH);

    let mut failures = Vec::new();
    for ((name, small_text), (_, large_text)) in small.iter().zip(&large) {
        let (small_time, large_time) = fastest_pair(small_text, large_text, folder.path());
        // Shown with --nocapture, to recalibrate the bound on another machine.
        eprintln!(
            "{name}: {} bytes in {small_time:?}, {} bytes in {large_time:?}",
            small_text.len(),
            large_text.len()
        );
        if large_time > small_time * MAX_RATIO + NOISE {
            failures.push(format!(
                "{name}: {} bytes took {small_time:?}, {} bytes took {large_time:?}",
                small_text.len(),
                large_text.len()
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "superlinear time:\n{}",
        failures.join("\n")
    );
}

/// Measures both inputs `RUNS` times, alternating, so that a slow phase of the machine hits
/// both alike, and returns the fastest time of each.
fn fastest_pair(small: &str, large: &str, base_dir: &Path) -> (Duration, Duration) {
    let mut fastest = (Duration::MAX, Duration::MAX);
    for _ in 0..RUNS {
        fastest.0 = fastest.0.min(time_load(small, base_dir));
        fastest.1 = fastest.1.min(time_load(large, base_dir));
    }
    fastest
}

fn time_load(text: &str, base_dir: &Path) -> Duration {
    let start = Instant::now();
    let result = load_str(text, "scale.hcl", base_dir);
    let elapsed = start.elapsed();
    // Every input has problems; a success would mean the input does not test what it names.
    assert!(
        result.is_err() || text.starts_with("Silo \"s0\""),
        "input loaded without problems"
    );
    elapsed
}
