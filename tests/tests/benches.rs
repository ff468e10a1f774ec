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

/// Runs `bench/NAME.sh ARGS` with the release binary (tests/run.sh builds it);
/// returns its standard output, failing with its output when it fails.
fn bench(name: &str, args: &[&str]) -> String {
    let root = repo_root();
    let binary = root.join("target/release/broadside");
    assert!(binary.exists(), "{} is missing: run tests/run.sh (it builds it)", binary.display());
    let output = Command::new("bash")
        .arg(root.join(format!("bench/{name}.sh")))
        .args(args)
        .env("BROADSIDE_BIN", &binary)
        .output()
        .unwrap_or_else(|e| panic!("run bench/{name}.sh: {e}"));
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "bench/{name}.sh {args:?} failed\n{stdout}\n{stderr}");
    eprintln!("{stdout}");
    stdout
}

/// `bench/send.sh 300`: one sender replica delivers every job; the line has
/// its rate, CPU per message and memory beside smtp-source and Postfix.
#[test]
fn send_bench_delivers_every_message() {
    let out = bench("send", &["300"]);
    let send = line_values(&out, "send");
    assert_eq!(send["messages"], 300.0, "{out}");
    for key in ["msgs_per_s", "ceiling_msgs_per_s", "postfix_msgs_per_s", "vs_postfix", "rss_mb", "cpu_ms_per_msg"] {
        assert!(send.get(key).is_some_and(|v| *v > 0.0), "{key} missing or zero in\n{out}");
    }
}

/// `bench/import.sh 500`: every row imported, PostgreSQL's COPY beside it,
/// the store's bytes per row and the server's peak memory printed.
#[test]
fn import_bench_imports_every_row() {
    let out = bench("import", &["500"]);
    let import = line_values(&out, "import");
    assert_eq!(import["rows"], 500.0, "{out}");
    for key in ["rows_per_s", "postgres_copy_rows_per_s", "ratio", "bytes_per_row", "peak_mib"] {
        assert!(import.get(key).is_some_and(|v| *v > 0.0), "{key} missing or zero in\n{out}");
    }
}

/// `bench/segment.sh 1000`: the script itself fails when Broadside's and
/// PostgreSQL's counts differ; the line carries both timings.
#[test]
fn segment_bench_counts_agree_with_postgres() {
    let out = bench("segment", &["1000"]);
    let segment = line_values(&out, "segment");
    assert_eq!(segment["subscribers"], 1000.0, "{out}");
    for key in ["count_p50_ms", "postgres_ms", "bytes_per_subscriber", "behavior_count_p50_ms", "behavior_ratio"] {
        assert!(segment.get(key).is_some_and(|v| *v > 0.0), "{key} missing or zero in\n{out}");
    }
}

/// `bench/distributed-scaling.sh 300`: clusters of 1, 2 and 4 senders on
/// Kafka and Cassandra, each against the smtp-source ceiling (runs in the
/// nextest `cluster` group: it shares the engines with the fault tests).
#[test]
fn distributed_scaling_bench_runs_three_clusters() {
    let out = bench("distributed-scaling", &["300"]);
    let lines: Vec<&str> = out.lines().filter(|l| l.starts_with("scaling: senders=")).collect();
    assert_eq!(lines.len(), 3, "{out}");
    assert!(out.lines().filter(|l| l.contains("distributed: ")).all(|l| l.contains("lost=0")), "{out}");
    assert!(line_values(&out, "scaling").contains_key("vs_ceiling"), "{out}");
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
