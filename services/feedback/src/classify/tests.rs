use super::*;

fn fixture(name: &str) -> Vec<u8> {
    let path = format!("{}/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn check(name: &str, kind: Kind, class: Class, rule: &str, recipient: &str, status: &str) -> Verdict {
    let verdict = classify(&fixture(name), &[]);
    assert_eq!(
        (verdict.kind, verdict.class, verdict.rule.as_str(), verdict.recipient.as_str(), verdict.status.as_str()),
        (kind, class, rule, recipient, status),
        "{name}: {verdict:#?}"
    );
    verdict
}

#[test]
fn postfix_dsns_saved_from_a_real_postfix() {
    let unknown = check("postfix-unknown-user.eml", Kind::Bounce, Class::Hard, "dsn", "nosuchuser@local.test", "5.1.1");
    assert_eq!(unknown.reporting_mta, "relay.broadside.test");
    assert!(unknown.diagnostic.contains("unknown user"), "{}", unknown.diagnostic);
    let relayed = check("postfix-550-relay.eml", Kind::Bounce, Class::Hard, "dsn", "gone@refuse.test", "5.1.1");
    assert!(relayed.diagnostic.starts_with("550 5.1.1"), "{}", relayed.diagnostic);
    assert_eq!(relayed.hints.verp, vec!["bnc+abcdefgh@bounces.broadside.localhost".to_owned()]);
    assert_eq!(relayed.hints.tokens, vec!["k1.TOKEN.SIG".to_owned()]);
    assert_eq!(relayed.hints.message_id, "c1.s1@broadside.localhost");
}

#[test]
fn arf_complaint() {
    let verdict = check("arf.eml", Kind::Complaint, Class::Complaint, "arf", "reader@yahoo.com", "");
    assert_eq!(verdict.feedback_type, "abuse");
    assert_eq!(verdict.reporting_mta, "broadside.localhost");
    assert_eq!(verdict.hints.tokens, vec!["TOKEN".to_owned()]);
    assert!(verdict.hints.verp.contains(&"bnc+TAG@bounces.broadside.localhost".to_owned()));
}

#[test]
fn plain_text_bounces_of_each_mta() {
    check("qmail.eml", Kind::Bounce, Class::Hard, "qmail", "nobody@example.net", "5.1.1");
    check("exim.eml", Kind::Bounce, Class::MailboxFull, "exim", "full.box@example.org", "5.2.2");
    check("sendmail.eml", Kind::Bounce, Class::Hard, "sendmail", "gone@example.com", "5.1.1");
    check("exchange.eml", Kind::Bounce, Class::Hard, "exchange", "ghost@contoso.com", "5.1.10");
    check("gmail.eml", Kind::Bounce, Class::Hard, "gmail", "missing.person@gmail.com", "5.1.1");
    check("yahoo.eml", Kind::Bounce, Class::Hard, "yahoo", "nobody.here@yahoo.com", "5.0.0");
    check("postfix-text.eml", Kind::Bounce, Class::Block, "postfix_text", "spamtrap@example.com", "5.7.1");
}

#[test]
fn auto_replies_are_not_bounces() {
    check("autoreply.eml", Kind::AutoReply, Class::AutoReply, "auto_reply", "jane@example.com", "");
}

#[test]
fn anything_else_is_unknown_and_nothing_panics() {
    let verdict = classify(b"Subject: hello\r\n\r\nJust a note, see you at 5.", &[]);
    assert_eq!((verdict.kind, verdict.rule.as_str()), (Kind::Unknown, "none"));
    for junk in [&b""[..], b"\0\0\0", b"Content-Type: multipart/report; boundary=x\r\n\r\n--x\r\nContent-Type: message/delivery-status\r\n\r\n:::\r\n--x--"] {
        let _ = classify(junk, &[]);
    }
}

/// A 20 MB message and MIME nested 100 deep are classified without panic or blow-up.
#[test]
fn huge_and_deeply_nested_messages() {
    let mut big = fixture("postfix-550-relay.eml");
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
            let names = ["postfix-550-relay.eml", "postfix-unknown-user.eml", "arf.eml", "exim.eml"];
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
