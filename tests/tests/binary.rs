//! Black-box runs of the real `broadside` binary.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use broadside_tests::broadside_binary;
use broadside_tests::smtp_sink::free_port;

/// Kills the child process on drop, so a failing test leaves nothing running.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn demo_sends_to_every_sample_subscriber_exactly_once() {
    let output = Command::new(broadside_binary()).args(["demo", "--subscribers", "1000"]).output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "demo failed:\n{stdout}\n{}", String::from_utf8_lossy(&output.stderr));
    let last = stdout.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("demo: recipients=1000 delivered=1000 duplicates=0 failed=0 seconds="),
        "last line: {last}"
    );
}

/// Runs a client subcommand and returns its stdout; panics with stderr on failure.
/// The client finds the admin key the first `serve` wrote into `data_dir`.
fn cli(server: &str, data_dir: &std::path::Path, args: &[&str]) -> String {
    let output = Command::new(broadside_binary())
        .arg("--server")
        .arg(server)
        .args(args)
        .env("BROADSIDE__DATA_DIR", data_dir)
        .output()
        .unwrap();
    assert!(output.status.success(), "broadside {args:?} failed: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8(output.stdout).unwrap()
}

fn wait_for_port(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "broadside serve did not listen on {port}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn serve_then_cli_sends_a_campaign_into_capture_and_sigterm_drains() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port().unwrap();
    let admin = free_port().unwrap();
    let mut child = Command::new(broadside_binary())
        .args(["serve", "--roles", "all"])
        .env("BROADSIDE__DATA_DIR", dir.path())
        .env("BROADSIDE__SERVER__GRPC_ADDR", format!("127.0.0.1:{port}"))
        .env("BROADSIDE__SERVER__ADMIN_ADDR", format!("127.0.0.1:{admin}"))
        .env("BROADSIDE__SERVER__HTTP_ADDR", "127.0.0.1:0")
        .env("BROADSIDE__FEEDBACK__INBOUND_ADDR", "127.0.0.1:0")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let serve = KillOnDrop(child);
    wait_for_port(port);
    let server = format!("http://127.0.0.1:{port}");

    let list = cli(&server, dir.path(), &["lists", "create", "Friends"]);
    let list = list.split('\t').next().unwrap().trim().to_owned();
    for (email, name) in [("ada@example.com", "Ada"), ("alan@example.org", "Alan"), ("grace@example.net", "Grace")] {
        cli(
            &server,
            dir.path(),
            &[
                "subscribers",
                "add",
                email,
                "--list",
                &list,
                "--name",
                name,
                "--attr",
                "city=Lyon",
                "--attr",
                "visits=3",
            ],
        );
    }
    let listed = cli(&server, dir.path(), &["subscribers", "list", "--list", &list]);
    assert_eq!(listed.lines().count(), 3, "{listed}");
    let template = cli(
        &server,
        dir.path(),
        &[
            "templates",
            "create",
            "--subject",
            "Hi {{ subscriber.display_name }}",
            "--text",
            "Hello {{ subscriber.display_name }} ({{ subscriber.attributes.visits }} visits)\nUnsubscribe: {{ unsubscribe_url }}\n{{ postal_address }}",
        ],
    );
    let template = template.split('\t').next().unwrap().trim().to_owned();
    // Without a postal address the campaign is refused, naming what is missing.
    let refused = Command::new(broadside_binary())
        .args(["--server", &server, "campaigns", "create", "--template", &template, "--list", &list])
        .args(["--from", "news@example.com"])
        .env("BROADSIDE__DATA_DIR", dir.path())
        .output()
        .unwrap();
    let message = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success() && message.contains("campaign.postal_address"), "{message}");
    let campaign = cli(
        &server,
        dir.path(),
        &[
            "campaigns",
            "create",
            "--template",
            &template,
            "--list",
            &list,
            "--from",
            "news@example.com",
            "--postal-address",
            "News Ltd, 1 Rue de la Paix, Lyon",
        ],
    );
    let campaign = campaign.split('\t').next().unwrap().trim().to_owned();
    cli(&server, dir.path(), &["campaigns", "start", &campaign]);
    let waited = cli(&server, dir.path(), &["campaigns", "get", &campaign, "--wait"]);
    assert!(waited.trim_end().ends_with("state=completed recipients=3 delivered=3 failed=0 deferred=0"), "{waited}");

    let messages = broadside_tests::read_messages(&dir.path().join("outbox")).unwrap();
    assert_eq!(messages.len(), 3);
    assert!(messages.iter().any(|m| m.contains("Hello Ada (3 visits)")));

    // Bad input through the CLI: plain message naming the field, non-zero exit.
    let refused = Command::new(broadside_binary())
        .args(["--server", &server, "subscribers", "add", "not-an-address", "--list", &list])
        .env("BROADSIDE__DATA_DIR", dir.path())
        .output()
        .unwrap();
    assert!(!refused.status.success());
    let message = String::from_utf8_lossy(&refused.stderr);
    assert!(message.contains("InvalidArgument") && message.contains("subscriber.email"), "{message}");

    // SIGTERM: drains and exits 0, logging the shutdown.
    let pid = serve.0.id().to_string();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    let mut serve = serve;
    let status = serve.0.wait().unwrap();
    assert!(status.success(), "serve exited with {status}");
    let logs: Vec<String> = BufReader::new(stderr).lines().map_while(Result::ok).collect();
    assert!(logs.iter().any(|l| l.contains("broadside node stopped")), "{logs:#?}");
}

#[test]
fn bad_config_names_the_key() {
    let output = Command::new(broadside_binary())
        .args(["config", "print"])
        .env("BROADSIDE__SMTP__URL", "ftp://relay")
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("smtp.url"), "{stderr}");
    let output = Command::new(broadside_binary())
        .args(["config", "print"])
        .env("BROADSIDE__SMTP__PASSWORD", "hunter2")
        .env("BROADSIDE__SMTP__USERNAME", "u")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success() && stdout.contains("[redacted]") && !stdout.contains("hunter2"), "{stdout}");
}

/// Runs the binary with `args` and `BROADSIDE__DATA_DIR`; returns (success, stdout, stderr).
fn run(data_dir: &std::path::Path, args: &[&str]) -> (bool, String, String) {
    let output = Command::new(broadside_binary()).args(args).env("BROADSIDE__DATA_DIR", data_dir).output().unwrap();
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn cli_imports_a_csv_once_and_keys_are_managed_from_the_cli() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port().unwrap();
    let child = Command::new(broadside_binary())
        .args(["serve", "--roles", "subscribers"])
        .env("BROADSIDE__DATA_DIR", dir.path())
        .env("BROADSIDE__SERVER__GRPC_ADDR", format!("127.0.0.1:{port}"))
        .env("BROADSIDE__SERVER__ADMIN_ADDR", "127.0.0.1:0")
        .env("BROADSIDE__SERVER__HTTP_ADDR", "127.0.0.1:0")
        .env("BROADSIDE__FEEDBACK__INBOUND_ADDR", "127.0.0.1:0")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let _serve = KillOnDrop(child);
    wait_for_port(port);
    let server = format!("http://127.0.0.1:{port}");
    let list = cli(&server, dir.path(), &["lists", "create", "Imported"]);
    let list = list.split('\t').next().unwrap().trim().to_owned();
    let csv = dir.path().join("people.csv");
    let mut data = String::from("email,name,age:number\n");
    for i in 0..3000 {
        data.push_str(&format!("person{i}@example.com,Person {i},{i}\n"));
    }
    data.push_str("broken,Nobody,1\n");
    std::fs::write(&csv, data).unwrap();
    let csv = csv.to_str().unwrap();

    let (ok, out, err) =
        run(dir.path(), &["--server", &server, "subscribers", "import", csv, "--list", &list, "--dry-run"]);
    assert!(ok, "{err}");
    assert!(
        out.starts_with("dry run: would have imported 3000, updated 0, skipped 0, rejected 1 of 3001 lines"),
        "{out}"
    );
    let (ok, out, err) = run(dir.path(), &["--server", &server, "subscribers", "import", csv, "--list", &list]);
    assert!(ok, "{err}");
    assert!(out.starts_with("imported 3000, updated 0, skipped 0, rejected 1 of 3001 lines"), "{out}");
    assert!(err.contains("line 3002: email: \"broken\" has no '@'"), "{err}");
    let (ok, out, _) = run(dir.path(), &["--server", &server, "subscribers", "import", csv, "--list", &list]);
    assert!(ok && out.starts_with("already imported under request id import-"), "{out}");

    // Keys: create a read-only key, use it, revoke it.
    let (ok, key, err) = run(dir.path(), &["keys", "create", "--scopes", "read", "--description", "dashboards"]);
    assert!(ok, "{err}");
    let key = key.trim().to_owned();
    assert!(key.starts_with("bsk_"), "{key}");
    let (ok, listed, _) = run(dir.path(), &["--server", &server, "--api-key", &key, "lists", "list"]);
    assert!(ok && listed.contains("Imported"), "{listed}");
    let (ok, _, err) = run(dir.path(), &["--server", &server, "--api-key", &key, "lists", "create", "Nope"]);
    assert!(!ok && err.contains("PermissionDenied"), "{err}");
    let (_, keys, _) = run(dir.path(), &["keys", "list"]);
    assert!(keys.lines().any(|l| l.contains("active\tread\tdashboards")), "{keys}");
    let id = key.split('_').nth(1).unwrap().to_owned();
    let (ok, _, err) = run(dir.path(), &["keys", "revoke", &id]);
    assert!(ok, "{err}");
    let (ok, _, err) = run(dir.path(), &["--server", &server, "--api-key", &key, "lists", "list"]);
    assert!(!ok && err.contains("revoked"), "{err}");
    let (ok, out, _) = run(dir.path(), &["tenants", "create", "acme"]);
    assert!(ok && out.contains("admin key (shown once"), "{out}");
    let (ok, _, err) = run(dir.path(), &["tenants", "create", "Bad Name"]);
    assert!(!ok && err.contains("lowercase"), "{err}");
}

/// `broadside feedback classify` on DSNs from a real Postfix and on ARF reports.
#[test]
fn feedback_classify_prints_the_verdict_of_a_saved_dsn_and_an_arf_report() {
    let dir = tempfile::tempdir().unwrap();
    let fixtures = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../services/feedback/fixtures");
    let dsn = fixtures.join("bounces/postfix/relay-550.eml");
    let (ok, out, err) =
        run(dir.path(), &["feedback", "classify", dsn.to_str().unwrap(), "--rcpt", "bnc+x@bounces.example"]);
    assert!(ok, "{err}");
    let verdict: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(verdict["kind"], "bounce");
    assert_eq!((verdict["reason"].as_str(), verdict["hard"].as_bool()), (Some("user_unknown"), Some(true)));
    assert_eq!(verdict["recipient"], "gone@refuse.test");
    assert_eq!(verdict["status"], "5.1.1");
    assert_eq!(verdict["rule"], "dsn");
    assert_eq!(verdict["reporting_mta"], "relay.broadside.test");
    assert_eq!(verdict["recipients"][0]["remote_mta"], "127.0.0.1");
    assert!(verdict["diagnostic"].as_str().unwrap().starts_with("550 5.1.1 <gone@refuse.test>"), "{out}");
    assert_eq!(verdict["hints"]["verp"][0], "bnc+x@bounces.example");

    let arf = fixtures.join("bounces/arf/abuse.eml");
    let (ok, out, err) = run(dir.path(), &["feedback", "classify", arf.to_str().unwrap()]);
    assert!(ok, "{err}");
    let verdict: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!((verdict["kind"].as_str(), verdict["reason"].as_str()), (Some("complaint"), Some("complaint")));
    assert_eq!(
        (verdict["feedback_type"].as_str(), verdict["recipient"].as_str()),
        (Some("abuse"), Some("reader@yahoo.com"))
    );

    // A DSN a real Postfix wrote about six recipients: each with its own status, reason and hardness.
    let six = fixtures.join("bounces/postfix/six-recipients.eml");
    let (ok, out, err) = run(dir.path(), &["feedback", "classify", six.to_str().unwrap()]);
    assert!(ok, "{err}");
    let verdict: serde_json::Value = serde_json::from_str(&out).unwrap();
    let recipients: Vec<(&str, &str, &str, bool)> = verdict["recipients"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["address"].as_str().unwrap(),
                r["status"].as_str().unwrap(),
                r["reason"].as_str().unwrap(),
                r["hard"].as_bool().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        recipients,
        [
            ("someone@nosuch-domain.invalid", "5.4.4", "host_unknown", true),
            ("stranger@other.test", "5.7.1", "rejected", false),
            ("blocked@rcv.test", "5.7.1", "blocked", false),
            ("full@rcv.test", "5.2.2", "mailbox_full", false),
            ("moved@rcv.test", "5.1.6", "has_moved", true),
            ("nosuch@rcv.test", "5.1.1", "user_unknown", true),
        ],
        "{out}"
    );
    // An ARF report without Original-Rcpt-To: the recipient is the returned message's To.
    let arf = fixtures.join("bounces/arf/recipient-in-returned-message.eml");
    let (ok, out, err) = run(dir.path(), &["feedback", "classify", arf.to_str().unwrap()]);
    assert!(ok, "{err}");
    let verdict: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        (verdict["kind"].as_str(), verdict["recipient"].as_str()),
        (Some("complaint"), Some("reader.person@example.net"))
    );
    assert_eq!(verdict["recipients"][0]["reason"], "complaint");
    assert_eq!(verdict["recipients"][0]["hard"], false);

    // A directory: one JSON line per message; --summary: the bench line.
    let (ok, out, err) = run(dir.path(), &["feedback", "classify", fixtures.join("bounces/qmail").to_str().unwrap()]);
    assert!(ok, "{err}");
    assert_eq!(out.lines().count(), 2, "{out}");
    assert!(out.lines().all(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["file"].is_string()), "{out}");
    let (ok, out, err) =
        run(dir.path(), &["feedback", "classify", "--summary", fixtures.join("bounces").to_str().unwrap()]);
    assert!(ok, "{err}");
    assert!(out.starts_with("classify: files=") && out.contains("reason: user_unknown="), "{out}");

    let (ok, _, err) = run(dir.path(), &["feedback", "classify", "/nonexistent.eml"]);
    assert!(!ok && err.contains("/nonexistent.eml"), "{err}");
}

/// `broadside feedback reclassify` finds stored messages whose verdict today's rules change, and `--apply` stores it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn feedback_reclassify_reports_and_applies_changed_verdicts() {
    use broadside_store::{FeedbackRecord, PageRequest, new_id, now_millis};
    let dir = tempfile::tempdir().unwrap();
    let fixtures = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../services/feedback/fixtures");
    let raw = std::fs::read(fixtures.join("bounces/sendmail/user-unknown.eml")).unwrap();
    let id = new_id();
    {
        let store = broadside_tests::open_store(dir.path()).await.unwrap();
        // As an older rule set would have stored it: unknown.
        let stale = FeedbackRecord {
            id: id.clone(),
            time: now_millis(),
            kind: "unknown".into(),
            class: "unknown".into(),
            rule: "none".into(),
            verdict: "unattributed".into(),
            raw,
            ..Default::default()
        };
        store.insert_feedback(stale).await.unwrap();
    }
    let (ok, out, err) = run(dir.path(), &["feedback", "reclassify"]);
    assert!(ok, "{err}");
    assert!(out.contains(&id) && out.contains("unknown unknown (none) -> bounce user_unknown (sendmail)"), "{out}");
    assert!(err.contains("1 would change"), "{err}");
    let (ok, _, err) = run(dir.path(), &["feedback", "reclassify", "--apply"]);
    assert!(ok && err.contains("1 changed"), "{err}");
    let store = broadside_tests::open_store(dir.path()).await.unwrap();
    let page = store.list_feedback("", None, false, PageRequest::new(10, "")).await.unwrap();
    let record = page.items.iter().find(|r| r.id == id).unwrap();
    assert_eq!(
        (record.kind.as_str(), record.class.as_str(), record.status_code.as_str()),
        ("bounce", "user_unknown", "5.1.1")
    );
    assert_eq!(record.verdict, "unattributed", "no signed attribution: still no action");
    let (ok, out, _) = run(dir.path(), &["feedback", "reclassify"]);
    assert!(ok && out.is_empty(), "nothing left to change: {out}");
}

/// A bad rule is shown with a caret under the bad token, before anything is sent.
#[test]
fn segments_cli_shows_rule_errors_with_a_caret() {
    let dir = tempfile::tempdir().unwrap();
    let (ok, _, err) = run(
        dir.path(),
        &["--server", "http://127.0.0.1:9", "segments", "preview", "--rule", "attributes.age > 30 and contry = \"DE\""],
    );
    assert!(!ok);
    assert!(err.contains("invalid rule: line 1, column 25: unknown field `contry`"), "{err}");
    assert!(err.contains("attributes.age > 30 and contry = \"DE\"\n                        ^^^^^^"), "{err}");
    assert!(err.contains("did you mean attributes.contry?"), "{err}");
}

/// `migrate --store scylla://...` names a bad option, and says which hosts
/// it could not reach (no ScyllaDB node runs here; the store suite runs
/// against one when BROADSIDE_TEST_SCYLLA_URI is set). `serve` on a
/// ScyllaDB store refuses the embedded bus before connecting anywhere.
#[test]
fn scylla_store_errors_name_the_option_and_the_hosts() {
    let dir = tempfile::tempdir().unwrap();
    let (ok, _, stderr) = run(dir.path(), &["migrate", "--store", "scylla://127.0.0.1:9042/broadside?colour=blue"]);
    assert!(!ok && stderr.contains("unknown option \"colour\""), "{stderr}");
    let (ok, _, stderr) = run(dir.path(), &["migrate", "--store", "scylla://127.0.0.1:9042/broad-side"]);
    assert!(!ok && stderr.contains("keyspace \"broad-side\""), "{stderr}");
    let unreachable = "scylla://127.0.0.1:9/broadside?connect_timeout_ms=500";
    let (ok, _, stderr) = run(dir.path(), &["migrate", "--store", unreachable]);
    assert!(!ok && stderr.contains("127.0.0.1:9"), "{stderr}");
    let output = Command::new(broadside_binary())
        .args(["serve"])
        .env("BROADSIDE__DATA_DIR", dir.path())
        .env("BROADSIDE__STORE__URL", unreachable)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success() && stderr.contains("bus.url = kafka://"), "{stderr}");
}
