//! minijinja templates in a sandbox: no loader (so no filesystem), no
//! environment access, a fuel limit against runaway loops, and a cap on
//! output size. Compiled templates are cached by (id, version); versions
//! are immutable, so the cache never goes stale.

use std::sync::RwLock;

use minijinja::{Environment, UndefinedBehavior, Value};

use crate::MailError;
use crate::address::check_header_value;

/// Instructions a render may spend; a loop over 1,000 attributes costs a few thousand.
const FUEL: u64 = 200_000;
/// Largest rendered part accepted.
pub const MAX_OUTPUT_BYTES: usize = 2 * 1024 * 1024;
/// Largest template source accepted.
pub const MAX_SOURCE_BYTES: usize = 512 * 1024;

/// The three parts of a template, as sources.
#[derive(Debug, Clone)]
pub struct TemplateSource<'a> {
    pub subject: &'a str,
    pub html_body: &'a str,
    pub text_body: &'a str,
}

/// The rendered parts of one message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendered {
    pub subject: String,
    pub html_body: Option<String>,
    pub text_body: Option<String>,
}

/// Renders templates; one per process, shared.
pub struct TemplateEngine {
    env: RwLock<Environment<'static>>,
}

impl Default for TemplateEngine {
    fn default() -> Self {
        Self::new()
    }
}

fn sandboxed_environment() -> Environment<'static> {
    let mut env = Environment::new();
    env.set_fuel(Some(FUEL));
    env.set_undefined_behavior(UndefinedBehavior::Chainable);
    env.set_recursion_limit(50);
    env
}

fn part_names(key: &str) -> [(&'static str, String); 3] {
    [
        ("subject", format!("{key}/subject.txt")),
        ("html_body", format!("{key}/body.html")),
        ("text_body", format!("{key}/body.txt")),
    ]
}

fn template_error(field: &str, error: &minijinja::Error) -> MailError {
    let mut message = error.to_string();
    if let Some(line) = error.line() {
        message = format!("line {line}: {message}");
    }
    if matches!(error.kind(), minijinja::ErrorKind::OutOfFuel) {
        message = "template ran too long (out of fuel): check for unbounded loops".into();
    }
    MailError::Template { field: field.to_owned(), message }
}

impl TemplateEngine {
    pub fn new() -> Self {
        Self { env: RwLock::new(sandboxed_environment()) }
    }

    /// Compiles every part and test-renders it against `sample`, so a
    /// template that cannot render is refused when created, not when sent.
    /// Errors name the field (`subject`, `html_body`, `text_body`).
    pub fn validate(source: &TemplateSource<'_>, sample: &Value) -> Result<Rendered, MailError> {
        if source.subject.trim().is_empty() {
            return Err(MailError::invalid("subject", "is required"));
        }
        if source.html_body.trim().is_empty() && source.text_body.trim().is_empty() {
            return Err(MailError::invalid("html_body", "html_body or text_body is required"));
        }
        let mut env = sandboxed_environment();
        for ((field, name), text) in
            part_names("check").into_iter().zip([source.subject, source.html_body, source.text_body])
        {
            if text.len() > MAX_SOURCE_BYTES {
                return Err(MailError::invalid(
                    field,
                    format!("template is {} bytes, the limit is {MAX_SOURCE_BYTES}", text.len()),
                ));
            }
            env.add_template_owned(name, text.to_owned()).map_err(|e| template_error(field, &e))?;
        }
        render_parts(&env, "check", sample, true)
    }

    /// Renders a stored template version, compiling it on first use.
    pub fn render(&self, key: &str, source: &TemplateSource<'_>, context: &Value) -> Result<Rendered, MailError> {
        {
            let env = self.env.read().unwrap_or_else(|p| p.into_inner());
            if env.get_template(&format!("{key}/subject.txt")).is_ok() {
                return render_parts(&env, key, context, false);
            }
        }
        let mut env = self.env.write().unwrap_or_else(|p| p.into_inner());
        for ((field, name), text) in
            part_names(key).into_iter().zip([source.subject, source.html_body, source.text_body])
        {
            env.add_template_owned(name, text.to_owned()).map_err(|e| template_error(field, &e))?;
        }
        render_parts(&env, key, context, false)
    }
}

fn render_parts(env: &Environment<'static>, key: &str, context: &Value, strict: bool) -> Result<Rendered, MailError> {
    let [subject, html, text] = part_names(key).map(|(field, name)| -> Result<String, MailError> {
        let template = env.get_template(&name).map_err(|e| template_error(field, &e))?;
        let output = template.render(context).map_err(|e| template_error(field, &e))?;
        if output.len() > MAX_OUTPUT_BYTES {
            return Err(MailError::Template {
                field: field.into(),
                message: format!("output is over {MAX_OUTPUT_BYTES} bytes"),
            });
        }
        Ok(output)
    });
    // A subject is one header line. A template that itself renders a line
    // break there is refused when it is created (`strict`); line breaks that
    // attributes bring in at send time become spaces (and NUL goes), so no
    // value can start a new header.
    let subject = subject?;
    if strict {
        check_header_value("subject", subject.trim())?;
    }
    let subject = one_line(&subject);
    check_header_value("subject", &subject)?;
    let non_empty = |part: String| (!part.trim().is_empty()).then_some(part);
    let html_body = non_empty(html?);
    let text_body = match non_empty(text?) {
        Some(text) => Some(text),
        None => html_body.as_deref().map(html_to_text).transpose()?,
    };
    Ok(Rendered { subject, html_body, text_body })
}

/// `text` with every run of CR, LF and tab as one space, NUL removed, trimmed.
fn one_line(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for word in text.split(['\r', '\n', '\t']).map(|w| w.replace('\0', "")) {
        let word = word.trim();
        if !word.is_empty() {
            if !out.is_empty() {
                out.push(' ');
            }
            out.push_str(word);
        }
    }
    out
}

/// The text part for a template without one: the HTML rendered as plain
/// text (links kept as numbered references), wrapped at 78 columns.
fn html_to_text(html: &str) -> Result<String, MailError> {
    html2text::from_read(html.as_bytes(), 78).map_err(|e| MailError::Template {
        field: "text_body".into(),
        message: format!("deriving the text part from the HTML failed: {e}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Value {
        Value::from_serialize(serde_json::json!({
            "subscriber": {"email": "ada@example.com", "display_name": "Ada", "attributes": {"city": "London"}},
            "unsubscribe_url": "https://u.example/x"
        }))
    }

    fn source<'a>(subject: &'a str, html: &'a str, text: &'a str) -> TemplateSource<'a> {
        TemplateSource { subject, html_body: html, text_body: text }
    }

    #[test]
    fn renders_personal_fields_and_escapes_html() {
        let engine = TemplateEngine::new();
        let ctx = Value::from_serialize(serde_json::json!({
            "subscriber": {"display_name": "<Ada>", "attributes": {"city": "London"}}, "unsubscribe_url": "u"
        }));
        let out = engine
            .render(
                "t1@1",
                &source(
                    "Hi {{ subscriber.display_name }}",
                    "<p>{{ subscriber.display_name }} in {{ subscriber.attributes.city }}</p>",
                    "{{ subscriber.attributes.missing | default('friend') }}",
                ),
                &ctx,
            )
            .unwrap();
        assert_eq!(out.subject, "Hi <Ada>");
        assert_eq!(out.html_body.as_deref(), Some("<p>&lt;Ada&gt; in London</p>"));
        assert_eq!(out.text_body.as_deref(), Some("friend"));
    }

    #[test]
    fn text_part_is_derived_from_html_when_missing() {
        let out = TemplateEngine::validate(
            &source("s", "<h1>Hello</h1><p>Visit <a href=\"https://example.com/x\">our shop</a></p>", ""),
            &sample(),
        )
        .unwrap();
        let text = out.text_body.unwrap();
        assert!(
            text.contains("Hello") && text.contains("our shop") && text.contains("https://example.com/x"),
            "{text}"
        );
        assert!(!text.contains("<p>"), "{text}");
    }

    #[test]
    fn syntax_errors_name_the_field() {
        let error = TemplateEngine::validate(&source("ok", "{% if %}", ""), &sample()).unwrap_err();
        assert_eq!(error.field(), Some("html_body"));
        let error = TemplateEngine::validate(&source("", "x", ""), &sample()).unwrap_err();
        assert_eq!(error.field(), Some("subject"));
    }

    #[test]
    fn runaway_loops_and_header_injection_fail() {
        let looping = "{% for i in range(100000) %}{% for j in range(100000) %}x{% endfor %}{% endfor %}";
        let error = TemplateEngine::validate(&source("s", looping, ""), &sample()).unwrap_err();
        assert!(error.to_string().contains("fuel"), "{error}");
        let error = TemplateEngine::validate(&source("a{{ '\\r\\nBcc: x@y' }}", "b", ""), &sample()).unwrap_err();
        assert_eq!(error.field(), Some("subject"), "a template that writes a line break is refused");
        let engine = TemplateEngine::new();
        let context = Value::from_serialize(serde_json::json!({"subscriber": {"display_name": "Eve\r\nBcc: x@y\0"}}));
        let out = engine.render("t@1", &source("Hi {{ subscriber.display_name }}", "b", ""), &context).unwrap();
        assert_eq!(out.subject, "Hi Eve Bcc: x@y", "line breaks from values fold into one line");
    }

    #[test]
    fn no_environment_or_file_access() {
        let error = TemplateEngine::validate(&source("s", "{% include '/etc/passwd' %}", ""), &sample()).unwrap_err();
        assert_eq!(error.field(), Some("html_body"));
        let out = TemplateEngine::validate(&source("s", "[{{ env }}{{ environ }}]", ""), &sample()).unwrap();
        assert_eq!(out.html_body.as_deref(), Some("[]"));
    }
}
