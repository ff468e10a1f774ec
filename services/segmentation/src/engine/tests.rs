use proptest::prelude::*;
use serde_json::{Map, json};

use super::naive::{NaiveBehavior, NaiveEvent, matches};
use super::*;
use crate::rule::{Activity, Behavior, Engagement, Field, Measure, Op, PropertyTest, Rule, Test, Value};

const NOW: i64 = 1_780_000_000_000;

fn id(n: u8) -> String {
    format!("{:032x}", 0x0193_0000_0000_0000_0000_0000_0000_0000u128 + u128::from(n))
}

fn arb_json() -> impl Strategy<Value = serde_json::Value> {
    prop_oneof![
        prop::sample::select(vec!["DE", "de", "x", "Xy", "y"]).prop_map(|s| json!(s)),
        prop::sample::select(vec![-1.0, 0.0, 1.5, 3.0, 30.0]).prop_map(|n| json!(n)),
        any::<bool>().prop_map(|b| json!(b)),
        Just(serde_json::Value::Null),
    ]
}

fn arb_row(n: u8) -> impl Strategy<Value = Row> {
    (
        prop::sample::select(vec!["ada@example.com", "Bob@Example.org", "carol@x.de", ""]),
        prop::sample::select(vec!["Ada", "bob", "", "Xy"]),
        prop::sample::select(crate::rule::STATUSES.to_vec()),
        0i64..4,
        prop::collection::btree_map(prop::sample::select(vec!["a", "b", "c"]), arb_json(), 0..3),
        prop::collection::btree_map(
            prop::sample::select(vec!["l1", "l2"]),
            prop::sample::select(vec!["confirmed", "unconfirmed", "unsubscribed"]),
            0..3,
        ),
    )
        .prop_map(move |(email, name, status, age, attributes, subscriptions)| Row {
            id: id(n),
            email: email.into(),
            display_name: name.into(),
            status: status.into(),
            created_at: NOW - age * 40 * 86_400_000,
            attributes: attributes.into_iter().map(|(k, v)| (k.to_owned(), v)).collect::<Map<_, _>>(),
            subscriptions: subscriptions.into_iter().map(|(l, s)| (l.to_owned(), s.to_owned())).collect(),
        })
}

fn arb_field() -> impl Strategy<Value = Field> {
    prop_oneof![
        Just(Field::Email),
        Just(Field::DisplayName),
        prop::sample::select(vec!["a", "b", "c"]).prop_map(|k| Field::Attribute(k.into())),
    ]
}

fn arb_value() -> impl Strategy<Value = Value> {
    prop_oneof![
        prop::sample::select(vec!["DE", "de", "x", "Xy", "ada@example.com", "bob"]).prop_map(|s| Value::Text(s.into())),
        prop::sample::select(vec![-1.0, 0.0, 1.5, 3.0]).prop_map(Value::Number),
        any::<bool>().prop_map(Value::Bool),
    ]
}

fn arb_op() -> impl Strategy<Value = Op> {
    prop::sample::select(vec![Op::Eq, Op::Ne, Op::Lt, Op::Le, Op::Gt, Op::Ge])
}

fn arb_leaf() -> impl Strategy<Value = Rule> {
    prop_oneof![
        (arb_field(), arb_op(), arb_value()).prop_map(|(field, op, value)| Rule::Compare { field, op, value }),
        (arb_field(), prop::collection::vec(arb_value(), 1..3)).prop_map(|(field, values)| Rule::In { field, values }),
        (arb_field(), prop::sample::select(vec!["d", "X", "@example", ""]))
            .prop_map(|(field, t)| Rule::Contains { field, text: t.into() }),
        (arb_field(), prop::sample::select(vec!["d", "a", "b"]))
            .prop_map(|(field, t)| Rule::StartsWith { field, text: t.into() }),
        arb_field().prop_map(|field| Rule::Exists { field }),
        prop::sample::select(crate::rule::STATUSES.to_vec()).prop_map(|s| Rule::Compare {
            field: Field::Status,
            op: Op::Eq,
            value: Value::Text(s.into())
        }),
        (arb_op(), 0i64..200).prop_map(|(op, days)| Rule::Compare {
            field: Field::CreatedAt,
            op,
            value: Value::Ago(days * 86_400)
        }),
        prop::sample::select(vec!["l1", "l2", "l3"]).prop_map(|l| Rule::InList(l.into())),
        (
            prop::sample::select(Activity::ALL.to_vec()),
            prop::option::of(prop::sample::select(vec![86_400i64, 30 * 86_400])),
            prop::option::of(prop::sample::select(vec!["c1", "c2", "c9"])),
            arb_op(),
            0u32..3,
        )
            .prop_map(|(activity, within, campaign, op, n)| Rule::Engaged(Engagement {
                activity,
                within,
                campaign: campaign.map(str::to_owned),
                count: (op, n)
            })),
    ]
}

fn arb_property_test() -> impl Strategy<Value = PropertyTest> {
    let test = prop_oneof![
        (arb_op(), arb_value()).prop_map(|(op, v)| Test::Compare(op, v)),
        prop::collection::vec(arb_value(), 1..3).prop_map(Test::In),
        prop::sample::select(vec!["bk", "X", ""]).prop_map(|t| Test::Contains(t.into())),
        prop::sample::select(vec!["BK-", "bk-1", "x"]).prop_map(|t| Test::StartsWith(t.into())),
        Just(Test::Exists),
    ];
    (prop::sample::select(vec!["amount", "sku", "gift"]), test)
        .prop_map(|(property, test)| PropertyTest { property: property.into(), test })
}

fn arb_behavior() -> impl Strategy<Value = Rule> {
    let measure = prop_oneof![
        (arb_op(), 0u32..4).prop_map(|(op, n)| Measure::Count(op, n)),
        Just(Measure::Count(Op::Ge, 1)),
        (arb_op(), prop::sample::select(vec![0.0, 10.0, 25.0, 100.0])).prop_map(|(op, value)| Measure::Sum {
            property: "amount".into(),
            op,
            value
        }),
        (prop::sample::select(vec![Op::Lt, Op::Le, Op::Gt, Op::Ge]), 0i64..(50 * 86_400))
            .prop_map(|(op, ago)| Measure::Last { op, value: Value::Ago(ago) }),
    ];
    (
        prop::sample::select(vec!["purchase", "login", "never"]),
        prop::option::of(prop::sample::select(vec![86_400i64, 7 * 86_400, 30 * 86_400, 12_345])),
        prop::collection::vec(arb_property_test(), 0..3),
        measure,
    )
        .prop_map(|(event, within, filter, measure)| {
            Rule::Behavior(Behavior { event: event.into(), within, filter, measure })
        })
}

fn arb_behaviors() -> impl Strategy<Value = Vec<NaiveBehavior>> {
    let properties = (
        prop::option::of(prop::sample::select(vec![json!(5), json!(20.0), json!(-3), json!("12"), json!(true)])),
        prop::option::of(prop::sample::select(vec![json!("BK-1"), json!("bk-2"), json!("TOY-1"), json!(7)])),
        prop::option::of(any::<bool>().prop_map(|b| json!(b))),
    )
        .prop_map(|(amount, sku, gift)| {
            let mut map = Map::new();
            amount.map(|v| map.insert("amount".into(), v));
            sku.map(|v| map.insert("sku".into(), v));
            gift.map(|v| map.insert("gift".into(), v));
            map
        });
    prop::collection::vec(
        (0u8..12, prop::sample::select(vec!["purchase", "login"]), 0i64..(60 * 86_400), properties),
        0..40,
    )
    .prop_map(|events| {
        events
            .into_iter()
            .map(|(n, name, ago, properties)| NaiveBehavior {
                subscriber: id(n),
                name: name.into(),
                time_ms: NOW - ago * 1000,
                properties,
            })
            .collect()
    })
}

pub(crate) fn arb_rule() -> impl Strategy<Value = Rule> {
    prop_oneof![3 => arb_leaf(), 2 => arb_behavior()].prop_recursive(4, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 2..4).prop_map(Rule::All),
            prop::collection::vec(inner.clone(), 2..4).prop_map(Rule::Any),
            inner.prop_map(|r| Rule::Not(Box::new(r))),
        ]
    })
}

fn arb_events() -> impl Strategy<Value = Vec<NaiveEvent>> {
    prop::collection::vec(
        (
            0u8..12,
            prop::sample::select(Activity::ALL.to_vec()),
            prop::sample::select(vec!["c1", "c2"]),
            0i64..(60 * 86_400),
        ),
        0..30,
    )
    .prop_map(|events| {
        events
            .into_iter()
            .map(|(n, activity, campaign, ago)| NaiveEvent {
                subscriber: id(n),
                activity,
                campaign: campaign.into(),
                time_ms: NOW - ago * 1000,
            })
            .collect()
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1500, ..ProptestConfig::default() })]

    /// The projection's answer equals the row-by-row answer, for random rules and data,
    /// including rows updated and erased after they were first loaded.
    #[test]
    fn engine_equals_the_naive_evaluator(
        rows in (0u8..12).prop_flat_map(|n| prop::collection::vec(0u8..12, n as usize).prop_flat_map(|ids| ids.into_iter().map(arb_row).collect::<Vec<_>>())),
        updates in prop::collection::vec(arb_row(3), 0..2),
        erased in prop::collection::vec(0u8..12, 0..2),
        events in arb_events(),
        behaviors in arb_behaviors(),
        rule in arb_rule(),
    ) {
        let mut projection = Projection::default();
        let mut latest: std::collections::BTreeMap<String, Row> = Default::default();
        for row in rows.iter().chain(&updates) {
            projection.upsert(row);
            // Memberships a row does not name stay as they were.
            let mut merged = row.clone();
            if let Some(before) = latest.get(&row.id) {
                let mut lists: std::collections::BTreeMap<String, String> = before.subscriptions.iter().cloned().collect();
                lists.extend(row.subscriptions.iter().cloned());
                merged.subscriptions = lists.into_iter().collect();
            }
            latest.insert(row.id.clone(), merged);
        }
        for event in &events {
            if latest.contains_key(&event.subscriber) {
                projection.engage(&event.subscriber, event.activity, &event.campaign, event.time_ms);
            }
        }
        for event in &behaviors {
            if latest.contains_key(&event.subscriber) {
                projection.track(&event.subscriber, &event.name, event.time_ms, &event.properties);
            }
        }
        for n in &erased {
            projection.erase(&id(*n));
            latest.remove(&id(*n));
        }
        let live: Vec<NaiveEvent> = events.iter().filter(|e| latest.contains_key(&e.subscriber)).cloned().collect();
        let tracked: Vec<NaiveBehavior> = behaviors.iter().filter(|e| latest.contains_key(&e.subscriber)).cloned().collect();
        let rule = rule.normalize();
        let got: Vec<String> = projection.evaluate(&rule, NOW).iter().map(|d| projection.id(d)).collect();
        let want: Vec<String> = latest.values().filter(|row| matches(&rule, row, &live, &tracked, NOW)).map(|r| r.id.clone()).collect();
        let mut got_sorted = got.clone();
        got_sorted.sort();
        prop_assert_eq!(got_sorted, want, "rule: {}", rule);
    }
}

#[test]
fn a_five_clause_rule_on_a_small_base() {
    let mut projection = Projection::default();
    for n in 0..10u8 {
        let mut attributes = Map::new();
        attributes.insert("country".into(), json!(if n % 2 == 0 { "DE" } else { "FR" }));
        attributes.insert("age".into(), json!(20 + n));
        projection.upsert(&Row {
            id: id(n),
            email: format!("p{n}@example.com"),
            status: "active".into(),
            created_at: NOW - i64::from(n) * 86_400_000,
            attributes,
            subscriptions: vec![("weekly".into(), "confirmed".into())],
            ..Default::default()
        });
    }
    projection.engage(&id(2), Activity::Opened, "c1", NOW - 1000);
    projection.engage(&id(4), Activity::Opened, "c1", NOW - 40 * 86_400_000);
    let rule = crate::rule::parse(
        "attributes.country = \"DE\" and attributes.age >= 21 and in_list(\"weekly\") and opened(within: 30d) and created_at > now() - 5d",
    )
    .unwrap();
    let members: Vec<String> = projection.evaluate(&rule, NOW).iter().map(|d| projection.id(d)).collect();
    assert_eq!(members, vec![id(2)]);
}

#[test]
fn the_documented_behavioral_rules() {
    let mut projection = Projection::default();
    for n in 0..4u8 {
        projection.upsert(&Row {
            id: id(n),
            email: format!("p{n}@example.com"),
            status: "active".into(),
            ..Default::default()
        });
    }
    let day = 86_400_000;
    let purchase = |sku: &str, amount: f64| json!({"sku": sku, "amount": amount}).as_object().cloned().unwrap();
    // 0: two purchases this month, 120 in total. 1: one purchase of 150. 2: two toys, long ago. 3: nothing.
    projection.track(&id(0), "purchase", NOW - 2 * day, &purchase("BK-1", 70.0));
    projection.track(&id(0), "purchase", NOW - 10 * day, &purchase("BK-2", 50.0));
    projection.track(&id(1), "purchase", NOW - 5 * day, &purchase("TOY-1", 150.0));
    projection.track(&id(2), "purchase", NOW - 50 * day, &purchase("TOY-2", 10.0));
    projection.track(&id(2), "purchase", NOW - 51 * day, &purchase("TOY-3", 10.0));
    projection.track(&id(0), "login", NOW - day, &Map::new());
    projection.track(&id(1), "login", NOW - 70 * day, &Map::new());
    fn of(projection: &Projection, rule: &str) -> Vec<String> {
        let rule = crate::rule::parse(rule).unwrap();
        projection.evaluate(&rule, NOW).iter().map(|d| projection.id(d)).collect()
    }
    let members = |rule: &str| of(&projection, rule);
    assert_eq!(members(r#"did("purchase", within: 30d, count >= 2)"#), [id(0)]);
    assert_eq!(members(r#"did("purchase", count >= 2)"#), [id(0), id(2)]);
    assert_eq!(members(r#"sum("purchase.amount", within: 90d) > 100"#), [id(0), id(1)]);
    assert_eq!(members(r#"sum("purchase.amount", within: 90d) < 100"#), [id(2), id(3)], "no purchases sum to 0");
    assert_eq!(members(r#"last("login") < now() - 60d"#), [id(1)], "never logged in is not 'before'");
    assert_eq!(members(r#"did("purchase", where: sku starts_with "BK-")"#), [id(0)]);
    assert_eq!(members(r#"not did("purchase", within: 30d)"#), [id(2), id(3)]);
    projection.erase(&id(0));
    assert_eq!(of(&projection, r#"did("purchase", where: sku starts_with "bk-")"#), Vec::<String>::new());
}
