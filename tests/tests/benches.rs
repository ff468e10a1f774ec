//! Every benchmark script runs here at a smoke size, so a change that breaks
//! one fails the test command instead of rotting until someone benchmarks.

use std::path::PathBuf;
use std::process::Command;

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).parent().expect("repository root").to_owned()
}

/// The numbers of a `name: key=value ...` line.
fn line_values(output: &str, name: &str) -> std::collections::HashMap<String, f64> {
    let line = output
        .lines()
        .find(|l| l.starts_with(&format!("{name}: ")))
        .unwrap_or_else(|| panic!("no {name}: line in\n{output}"));
    line.split_whitespace()
        .filter_map(|w| w.split_once('='))
        .filter_map(|(k, v)| v.parse().ok().map(|v| (k.to_owned(), v)))
        .collect()
}

/// `bench/classify.sh` over the bounce fixtures: every message parsed and
/// given a recipient, the peer (flufl.bounce) run beside it, the ratio printed.
#[test]
fn classify_bench_runs_on_the_fixture_corpus() {
    let root = repo_root();
    let corpus = root.join("services/feedback/fixtures/bounces");
    let files = walk(&corpus);
    let output = Command::new("bash")
        .arg(root.join("bench/classify.sh"))
        .arg(&corpus)
        .env("BROADSIDE_BIN", broadside_tests::broadside_binary())
        .output()
        .expect("run bench/classify.sh");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "bench/classify.sh failed\n{stdout}\n{}", String::from_utf8_lossy(&output.stderr));
    let ours = line_values(&stdout, "classify");
    assert_eq!(ours["files"], files as f64, "{stdout}");
    assert_eq!(ours["parsed"], files as f64, "every fixture is a bounce, complaint or auto-reply:\n{stdout}");
    assert_eq!(ours["with_recipient"], files as f64, "every fixture names its recipient:\n{stdout}");
    assert!(ours["msgs_per_s"] > 0.0, "{stdout}");
    let peer = line_values(&stdout, "peer");
    assert_eq!(peer["files"], files as f64, "{stdout}");
    let ratio = line_values(&stdout, "ratio");
    assert!(ratio.contains_key("speed") && ratio.contains_key("with_recipient"), "{stdout}");
}

fn walk(dir: &std::path::Path) -> usize {
    std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|entry| match entry.path().is_dir() {
            true => walk(&entry.path()),
            false => usize::from(entry.path().extension().is_some_and(|e| e == "eml")),
        })
        .sum()
}
