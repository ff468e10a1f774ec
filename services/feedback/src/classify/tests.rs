//! Every fixture under `fixtures/bounces/` is a test: its row in
//! `fixtures/bounces/verdicts.tsv` gives the expected kind, rule, reason,
//! hardness, status and recipients. One test per family, so a regression
//! names the MTA it broke.

use super::*;

fn root() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/bounces")
}

fn fixture(path: &str) -> Vec<u8> {
    let path = root().join(path);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// One row of verdicts.tsv.
struct Expected {
    path: String,
    kind: String,
    rule: String,
    reason: String,
    hard: bool,
    status: String,
    recipients: Vec<String>,
}

fn expectations() -> Vec<Expected> {
    let table = std::fs::read_to_string(root().join("verdicts.tsv")).expect("fixtures/bounces/verdicts.tsv");
    table
        .lines()
        .enumerate()
        .filter(|(_, line)| !line.trim().is_empty() && !line.starts_with('#'))
        .map(|(n, line)| {
            let cells: Vec<&str> = line.split('\t').collect();
            assert_eq!(cells.len(), 7, "verdicts.tsv line {}: 7 tab-separated cells expected", n + 1);
            Expected {
                path: cells[0].into(),
                kind: cells[1].into(),
                rule: cells[2].into(),
                reason: cells[3].into(),
                hard: cells[4] == "hard",
                status: cells[5].into(),
                recipients: cells[6].split_whitespace().map(str::to_owned).collect(),
            }
        })
        .collect()
}

/// Checks every fixture of `family` (its directory) against its row.
fn check_family(family: &str) {
    let rows: Vec<Expected> =
        expectations().into_iter().filter(|e| e.path.starts_with(&format!("{family}/"))).collect();
    assert!(!rows.is_empty(), "no fixtures for {family} in verdicts.tsv");
    let mut failures = Vec::new();
    for row in rows {
        let verdict = classify(&fixture(&row.path), &[]);
        // `address` or, for reports naming several, `address:reason:status`.
        let detailed = row.recipients.iter().any(|r| r.contains(':'));
        let got_recipients: Vec<String> = verdict
            .recipients
            .iter()
            .map(|r| match detailed {
                true => format!("{}:{}:{}", r.address.to_lowercase(), r.reason, r.status),
                false => r.address.to_lowercase(),
            })
            .collect();
        let got = (
            verdict.kind.as_str(),
            verdict.rule.as_str(),
            verdict.reason.as_str(),
            verdict.hard,
            verdict.status.as_str(),
            got_recipients,
        );
        let want = (
            row.kind.as_str(),
            row.rule.as_str(),
            row.reason.as_str(),
            row.hard,
            row.status.as_str(),
            row.recipients.iter().map(|r| r.to_lowercase()).collect::<Vec<_>>(),
        );
        if got != want {
            failures
                .push(format!("{}:\n  want {want:?}\n  got  {got:?}\n  diagnostic {:?}", row.path, verdict.diagnostic));
        }
    }
    assert!(failures.is_empty(), "{} fixture(s) wrong:\n{}", failures.len(), failures.join("\n"));
}

macro_rules! families {
    ($($family:ident),* $(,)?) => {
        $(#[test] fn $family() { check_family(stringify!($family)); })*

        /// Every fixture directory is one of the families above, and every fixture has a row.
        #[test]
        fn every_fixture_is_tested() {
            let known = [$(stringify!($family)),*];
            let rows: Vec<String> = expectations().into_iter().map(|e| e.path).collect();
            for dir in std::fs::read_dir(root()).unwrap().flatten().filter(|d| d.path().is_dir()) {
                let family = dir.file_name().to_string_lossy().into_owned();
                assert!(known.contains(&family.as_str()), "fixtures/bounces/{family}: add it to the families! list");
                for file in std::fs::read_dir(dir.path()).unwrap().flatten() {
                    let path = format!("{family}/{}", file.file_name().to_string_lossy());
                    assert!(rows.contains(&path), "fixtures/bounces/{path} has no row in verdicts.tsv");
                }
            }
        }
    };
}

families!(
    postfix,
    exim,
    opensmtpd,
    sendmail,
    qmail,
    courier,
    exchange,
    gmail,
    google_groups,
    yahoo,
    icloud,
    zoho,
    gmx,
    mailru,
    yandex,
    kddi,
    docomo,
    amazon_ses,
    amazon_workmail,
    mimecast,
    mcafee,
    trendmicro,
    messagelabs,
    domino,
    imail,
    mailmarshal,
    apache_james,
    biglobe,
    verizon,
    surfcontrol,
    mailfoundry,
    generic,
    arf,
    auto_reply,
);

#[test]
fn every_recipient_of_a_multi_recipient_dsn_has_its_own_verdict() {
    let verdict = classify(&fixture("postfix/relay-550.eml"), &[]);
    assert_eq!(verdict.reporting_mta, "relay.broadside.test");
    assert!(verdict.diagnostic.starts_with("550 5.1.1"), "{}", verdict.diagnostic);
    assert_eq!(verdict.hints.verp, vec!["bnc+abcdefgh@bounces.broadside.localhost".to_owned()]);
    assert_eq!(verdict.hints.tokens, vec!["k1.TOKEN.SIG".to_owned()]);
    assert_eq!(verdict.hints.message_id, "c1.s1@broadside.localhost");
}

#[test]
fn arf_hints() {
    let verdict = classify(&fixture("arf/abuse.eml"), &[]);
    assert_eq!(verdict.feedback_type, "abuse");
    assert_eq!(verdict.reporting_mta, "broadside.localhost");
    assert_eq!(verdict.hints.tokens, vec!["TOKEN".to_owned()]);
    assert!(verdict.hints.verp.contains(&"bnc+TAG@bounces.broadside.localhost".to_owned()));
}

#[test]
fn the_config_knows_every_reason() {
    let names: Vec<&str> = Reason::ALL.iter().map(|r| r.as_str()).collect();
    assert_eq!(names, broadside_config::BOUNCE_REASONS);
}

#[test]
fn anything_else_is_unknown_and_nothing_panics() {
    let verdict = classify(b"Subject: hello\r\n\r\nJust a note, see you at 5.", &[]);
    assert_eq!((verdict.kind, verdict.rule.as_str()), (Kind::Unknown, "none"));
    // A postmaster's note naming an address, with no code and no failure wording, suppresses nobody.
    let note = b"From: postmaster@example.org\r\nSubject: Mail delivery failed\r\n\r\nPlease write to\r\n  office@example.org\r\ninstead.\r\n";
    let verdict = classify(note, &[]);
    assert_eq!((verdict.kind, verdict.recipients.len()), (Kind::Unknown, 0), "{verdict:#?}");
    for junk in [&b""[..], b"\0\0\0", b"Content-Type: multipart/report; boundary=x\r\n\r\n--x\r\nContent-Type: message/delivery-status\r\n\r\n:::\r\n--x--"] {
        let _ = classify(junk, &[]);
    }
}

/// A 20 MB message and MIME nested 100 deep are classified without panic or blow-up.
#[test]
fn huge_and_deeply_nested_messages() {
    let mut big = fixture("postfix/relay-550.eml");
    let filler = "x".repeat(998) + "\r\n";
    let insert_at = big.windows(6).position(|w| w == b"Hello\n").unwrap_or(big.len());
    let tail = big.split_off(insert_at);
    while big.len() < 20 * 1024 * 1024 {
        big.extend_from_slice(filler.as_bytes());
    }
    big.extend(tail);
    assert_eq!(classify(&big, &[]).recipient, "gone@refuse.test");

    let mut nested = String::from("Subject: deep\r\n");
    for depth in 0..100 {
        nested.push_str(&format!("Content-Type: multipart/mixed; boundary=\"b{depth}\"\r\n\r\n--b{depth}\r\n"));
    }
    nested.push_str("Content-Type: text/plain\r\n\r\nThis is the qmail-send program\r\n<deep@example.com>:\r\nno mailbox (#5.1.1)\r\n");
    for depth in (0..100).rev() {
        nested.push_str(&format!("--b{depth}--\r\n"));
    }
    let _ = classify(nested.as_bytes(), &[]);
}

mod properties {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

        /// Damaged real reports (bytes flipped, cut, spliced) never panic.
        #[test]
        fn damaged_reports_never_panic(
            which in 0usize..4,
            cut in 0usize..4000,
            flips in proptest::collection::vec((0usize..4000, any::<u8>()), 0..20),
        ) {
            let names = ["postfix/relay-550.eml", "postfix/unknown-user-local.eml", "arf/abuse.eml", "exim/mailbox-full-transcribed.eml"];
            let mut raw = fixture(names[which]);
            for (at, byte) in flips {
                if !raw.is_empty() {
                    let len = raw.len();
                    raw[at % len] = byte;
                }
            }
            raw.truncate(cut.min(raw.len()));
            let _ = classify(&raw, &[]);
        }

        #[test]
        fn arbitrary_bytes_never_panic(raw in proptest::collection::vec(any::<u8>(), 0..2000)) {
            let _ = classify(&raw, &["bnc+x@y".into()]);
        }
    }
}
