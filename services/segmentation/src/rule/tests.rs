use proptest::prelude::*;

use super::*;

#[test]
fn parses_the_documented_examples() {
    let text = "attributes.country in [\"DE\", \"AT\"] and attributes.age >= 18 and in_list(\"weekly\")\n  and status = \"active\" and (opened(within: 30d) or clicked(campaign: \"c1\"))\n  and not bounced(count >= 2) and created_at > now() - 90d";
    let rule = parse(text).unwrap();
    let Rule::All(parts) = &rule else { panic!("{rule:?}") };
    assert_eq!(parts.len(), 7);
    assert_eq!(
        rule.to_string(),
        "attributes.country in [\"DE\", \"AT\"] and attributes.age >= 18 and in_list(\"weekly\") and status = \"active\" and (opened(within: 30d) or clicked(campaign: \"c1\")) and not bounced(count >= 2) and created_at > now() - 90d"
    );
    assert_eq!(parse("created_at >= \"2026-01-31\"").unwrap().to_string(), "created_at >= \"2026-01-31T00:00:00Z\"");
    assert_eq!(
        parse("in_list('lists/abc') or email contains \"@x\"").unwrap().to_string(),
        "in_list(\"abc\") or email contains \"@x\""
    );
    assert_eq!(
        parse("attributes.score > -1.5").unwrap(),
        Rule::Compare { field: Field::Attribute("score".into()), op: Op::Gt, value: Value::Number(-1.5) }
    );
}

#[test]
fn behavioral_rules_print_canonically() {
    for (text, canonical) in [
        (r#"did("purchase", within: 30d, count >= 2)"#, r#"did("purchase", within: 30d, count >= 2)"#),
        (r#"sum("purchase.amount", within: 90d) > 100"#, r#"sum("purchase.amount", within: 90d) > 100"#),
        (r#"last("login") < now() - 60d"#, r#"last("login") < now() - 60d"#),
        (
            r#"did("purchase", where: sku starts_with "BK-" and amount >= 20, within: 7d)"#,
            r#"did("purchase", within: 7d, where: sku starts_with "BK-" and amount >= 20)"#,
        ),
        (r#"did("purchase", count >= 1) and not did("login")"#, r#"did("purchase") and not did("login")"#),
    ] {
        let rule = parse(text).unwrap();
        assert_eq!(rule.to_string(), canonical);
        assert_eq!(parse(canonical).unwrap(), rule);
    }
}

#[test]
fn errors_name_line_column_and_hint() {
    let error = parse("attributes.country = \"DE\" and\n  contry = \"FR\"").unwrap_err();
    assert_eq!((error.line, error.column, error.width), (2, 3, 6));
    assert!(error.message.contains("unknown field `contry`"), "{error}");
    assert!(error.hint.as_deref().unwrap().contains("attributes.contry"), "{error}");
    assert_eq!(error.caret("attributes.country = \"DE\" and\n  contry = \"FR\""), "  contry = \"FR\"\n  ^^^^^^");
    let cases = [
        ("status = \"gone\"", "not a status"),
        ("attributes.a =", "expected a value"),
        ("opened(within: 30x)", "unknown duration unit"),
        ("opened(since: 3d)", "unknown argument `since`"),
        ("frobnicate(1)", "unknown function `frobnicate`"),
        ("(attributes.a = 1", "expected `)`"),
        ("attributes.a = 1 attributes.b = 2", "unexpected `attributes.b`"),
        ("created_at > 5", "created_at is a time"),
        ("attributes.a > now()", "is not a time"),
        ("email = \"x", "unterminated text"),
        ("", "empty"),
        ("attributes.a @ 1", "unexpected character"),
        ("did(purchase)", "event name in quotes"),
        ("sum(\"purchase\") > 1", "sum takes \"event.property\""),
        ("sum(\"purchase.amount\") > \"x\"", "compares with a number"),
        ("last(\"login\") = now()", "compares with <, <=, > or >="),
        ("last(\"login\") < 5", "is a time"),
        ("did(\"purchase\", where: sku)", "expected a comparison after `sku`"),
        ("did(\"purchase\", campaign: \"c\")", "unexpected `campaign`"),
        ("sum(\"purchase.amount\", count >= 2) > 1", "unexpected `count`"),
    ];
    for (text, expected) in cases {
        let error = parse(text).unwrap_err();
        assert!(error.to_string().contains(expected), "{text:?}: {error}");
        assert!(error.column >= 1 && error.line >= 1);
    }
}

#[test]
fn limits_hold() {
    let deep = format!("{}attributes.a = 1{}", "(".repeat(40), ")".repeat(40));
    assert!(parse(&deep).unwrap_err().message.contains("deeper"));
    let wide = vec!["attributes.a = 1"; 300].join(" or ");
    assert!(parse(&wide).unwrap_err().message.contains("more than"));
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 500, ..ProptestConfig::default() })]

    /// Canonical text parses back to the same tree; the proto tree converts back to it too.
    #[test]
    fn text_tree_and_proto_round_trip(rule in crate::engine::tests::arb_rule()) {
        let rule = rule.normalize();
        let text = rule.to_string();
        let parsed = parse(&text).map_err(|e| TestCaseError::fail(format!("{text}: {e}")))?;
        prop_assert_eq!(&parsed, &rule, "text: {}", text);
        prop_assert_eq!(parsed.to_string(), text.clone());
        let tree = proto::to_proto(&rule);
        let back = proto::from_proto(&tree, "tree").map_err(|e| TestCaseError::fail(format!("{text}: {e:?}")))?;
        prop_assert_eq!(back, rule);
    }

    /// No input makes the parser panic.
    #[test]
    fn any_text_parses_or_errs(text in "[a-z_.()\\[\\]\"', <>=!0-9:-]{0,60}") {
        if let Err(error) = parse(&text) {
            prop_assert!(error.line >= 1 && error.column >= 1);
        }
    }
}
