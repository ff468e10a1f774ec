//! RFC 822-style field groups, as in `message/delivery-status` (RFC 3464),
//! `message/feedback-report` (RFC 5965) and `text/rfc822-headers`: lines of
//! `Name: value`, continued by lines that start with white space, in groups
//! separated by blank lines. Tolerant: junk lines are skipped, never fatal.

/// One group of fields, names lowercased, in order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Fields(pub Vec<(String, String)>);

impl Fields {
    /// The first value of `name` (case-insensitive).
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0.iter().find(|(key, _)| key.eq_ignore_ascii_case(name)).map(|(_, value)| value.as_str())
    }

    /// Every value of `name`.
    pub fn all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.0.iter().filter(move |(key, _)| key.eq_ignore_ascii_case(name)).map(|(_, value)| value.as_str())
    }
}

/// Longest field value kept; a longer one is cut (diagnostics can be long, not megabytes).
const MAX_VALUE: usize = 4096;

/// Splits `text` into field groups.
pub fn parse_groups(text: &str) -> Vec<Fields> {
    let mut groups = Vec::new();
    let mut current = Fields::default();
    for line in text.lines() {
        let line = line.trim_end_matches('\r');
        if line.trim().is_empty() {
            if !current.0.is_empty() {
                groups.push(std::mem::take(&mut current));
            }
            continue;
        }
        if line.starts_with([' ', '\t']) {
            if let Some((_, value)) = current.0.last_mut()
                && value.len() < MAX_VALUE
            {
                value.push(' ');
                value.push_str(line.trim());
                truncate(value);
            }
            continue;
        }
        if let Some((name, value)) = line.split_once(':') {
            let name = name.trim();
            if !name.is_empty() && name.bytes().all(|b| b.is_ascii_graphic()) {
                let mut value = value.trim().to_owned();
                truncate(&mut value);
                current.0.push((name.to_ascii_lowercase(), value));
            }
        }
    }
    if !current.0.is_empty() {
        groups.push(current);
    }
    groups
}

fn truncate(value: &mut String) {
    if value.len() > MAX_VALUE {
        let mut cut = MAX_VALUE;
        while !value.is_char_boundary(cut) {
            cut -= 1;
        }
        value.truncate(cut);
    }
}

/// `rfc822; someone@example.com` → `someone@example.com` (the type is dropped).
pub fn typed_value(value: &str) -> &str {
    value.split_once(';').map_or(value, |(_, rest)| rest).trim().trim_matches(['<', '>'])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_fields_and_continuations() {
        let text = "Reporting-MTA: dns; mx.example.com\r\n\r\nFinal-Recipient: rfc822; a@example.com\r\nAction: failed\r\nDiagnostic-Code: smtp; 550 5.1.1\r\n    user unknown\r\n\r\n\r\n";
        let groups = parse_groups(text);
        assert_eq!(groups.len(), 2);
        assert_eq!(typed_value(groups[0].get("reporting-mta").unwrap()), "mx.example.com");
        assert_eq!(groups[1].get("Diagnostic-Code"), Some("smtp; 550 5.1.1 user unknown"));
        assert_eq!(typed_value(groups[1].get("final-recipient").unwrap()), "a@example.com");
    }

    #[test]
    fn junk_is_skipped_and_values_are_capped() {
        let long = "x".repeat(10_000);
        let groups = parse_groups(&format!("no colon here\n: empty name\nA: {long}\n {long}\n"));
        assert_eq!(groups.len(), 1);
        assert!(groups[0].get("a").unwrap().len() <= MAX_VALUE);
    }
}
