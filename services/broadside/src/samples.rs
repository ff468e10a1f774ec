//! The sample data of `broadside demo` and `broadside subscribers sample`:
//! realistic names, addresses and attributes, and a personal template.

use broadside_proto::v1::*;

const FIRST_NAMES: [&str; 40] = [
    "Ada",
    "Alan",
    "Grace",
    "Linus",
    "Margaret",
    "Dennis",
    "Barbara",
    "Ken",
    "Frances",
    "Donald",
    "Radia",
    "Edsger",
    "Hedy",
    "John",
    "Katherine",
    "Tim",
    "Sophie",
    "Guido",
    "Anita",
    "Bjarne",
    "Shafi",
    "Niklaus",
    "Lynn",
    "Leslie",
    "Mary",
    "Vint",
    "Jean",
    "Robert",
    "Adele",
    "Claude",
    "Annie",
    "Larry",
    "Ida",
    "Yukihiro",
    "Joan",
    "James",
    "Evelyn",
    "Rob",
    "Carol",
    "Brian",
];
const LAST_NAMES: [&str; 25] = [
    "Lovelace",
    "Turing",
    "Hopper",
    "Torvalds",
    "Hamilton",
    "Ritchie",
    "Liskov",
    "Thompson",
    "Allen",
    "Knuth",
    "Perlman",
    "Dijkstra",
    "Lamarr",
    "Backus",
    "Johnson",
    "Berners-Lee",
    "Wilson",
    "Rossum",
    "Borg",
    "Stroustrup",
    "Goldwasser",
    "Wirth",
    "Conway",
    "Lamport",
    "Keller",
];
const CITIES: [&str; 8] = ["Lyon", "Berlin", "Osaka", "Austin", "Lagos", "Lima", "Oslo", "Pune"];
const PLANS: [&str; 3] = ["free", "pro", "team"];

/// One sample subscriber, deterministic in `index`.
pub fn sample_subscriber(index: usize, list: &str) -> Subscriber {
    let first = FIRST_NAMES[index % FIRST_NAMES.len()];
    let last = LAST_NAMES[(index / FIRST_NAMES.len()) % LAST_NAMES.len()];
    let domain = ["example.com", "example.org", "example.net"][index % 3];
    let email = format!("{}.{}.{index}@{domain}", first.to_lowercase(), last.to_lowercase());
    let attributes = serde_json::json!({
        "city": CITIES[index % CITIES.len()],
        "plan": PLANS[index % PLANS.len()],
        "signup_year": 2015 + (index % 10) as i64,
    });
    Subscriber {
        email,
        display_name: format!("{first} {last}"),
        attributes: Some(broadside_proto::convert::json_to_struct(attributes.as_object().expect("object"))),
        lists: vec![list.to_owned()],
        ..Default::default()
    }
}

/// The sender's address the demo's messages show (CAN-SPAM requires one).
pub const DEMO_POSTAL_ADDRESS: &str = "Broadside Demo, 1 Example Street, Springfield";

/// The demo template: personal subject, HTML and text parts.
pub fn sample_template() -> Template {
    Template {
        display_name: "Demo digest".into(),
        subject: "{{ subscriber.display_name }}, your {{ subscriber.attributes.city }} digest".into(),
        html_body: "<h1>Hello {{ subscriber.display_name }}</h1>\n<p>Here is what happened in {{ subscriber.attributes.city }} \
                    this week. You are on the <b>{{ subscriber.attributes.plan }}</b> plan since {{ subscriber.attributes.signup_year }}.</p>\n\
                    <p><a href=\"{{ unsubscribe_url }}\">Unsubscribe</a> &middot; {{ postal_address }}</p>"
            .into(),
        text_body: "Hello {{ subscriber.display_name }},\n\nHere is what happened in {{ subscriber.attributes.city }} this week.\n\
                    Plan: {{ subscriber.attributes.plan }} (since {{ subscriber.attributes.signup_year }}).\n\n\
                    Unsubscribe: {{ unsubscribe_url }}\n{{ postal_address }}\n"
            .into(),
        ..Default::default()
    }
}
