//! Open and click tracking in a rendered HTML part: every `http(s)` link
//! (except the unsubscribe link and our own pages) goes through
//! `{public_url}/c/{token}`, whose signed token carries the original URL so
//! the redirect can never be turned into an open redirector; a 1×1 pixel
//! `{public_url}/o/{token}` closes the body. lol_html rewrites the HTML as a
//! stream, so markup it does not touch stays byte for byte.

use std::cell::Cell;
use std::rc::Rc;

use lol_html::html_content::ContentType;
use lol_html::{RewriteStrSettings, element, end_tag, rewrite_str};

use crate::MailError;
use crate::token::{PURPOSE_CLICK, PURPOSE_OPEN, TokenSigner, UnsubscribeClaims};

/// Rewrites `html` for tracking. `claims` names the recipient (tenant,
/// subscriber, list, campaign); `public_url` is where the feedback role's HTTP is.
pub fn add_tracking(
    html: &str,
    public_url: &str,
    signer: &TokenSigner,
    claims: &UnsubscribeClaims<'_>,
) -> Result<String, MailError> {
    let base = public_url.trim_end_matches('/');
    let token = |purpose: &str, url: &str| {
        signer.sign(&UnsubscribeClaims { purpose: purpose.into(), url: url.into(), ..claims.clone() })
    };
    let pixel = format!(
        "<img src=\"{base}/o/{}\" width=\"1\" height=\"1\" alt=\"\" style=\"display:block;border:0;width:1px;height:1px\">",
        token(PURPOSE_OPEN, "")
    );
    let closed = Rc::new(Cell::new(false));
    let settings = RewriteStrSettings::new()
        .append_element_content_handler(element!("a[href]", |el| {
            let href = decode_entities(&el.get_attribute("href").unwrap_or_default());
            let trimmed = href.trim();
            let web = trimmed.starts_with("https://") || trimmed.starts_with("http://");
            if web && !trimmed.starts_with(base) && !el.has_attribute("data-no-track") {
                el.set_attribute("href", &format!("{base}/c/{}", token(PURPOSE_CLICK, trimmed)))?;
            }
            Ok(())
        }))
        .append_element_content_handler(element!("body", |el| {
            if let Some(handlers) = el.end_tag_handlers() {
                let (pixel, closed) = (pixel.clone(), closed.clone());
                handlers.push(end_tag!(move |end| {
                    end.before(&pixel, ContentType::Html);
                    closed.set(true);
                    Ok(())
                }));
            }
            Ok(())
        }));
    let rewritten = rewrite_str(html, settings).map_err(|error| MailError::failed("tracking links", error))?;
    Ok(if closed.get() { rewritten } else { rewritten + &pixel })
}

/// The value an HTML attribute stands for: character references decoded
/// (`&amp;`, `&#x2f;` as minijinja's auto-escape writes them, `&#47;`, ...).
fn decode_entities(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len());
    let mut rest = raw;
    while let Some(at) = rest.find('&') {
        out.push_str(&rest[..at]);
        rest = &rest[at..];
        let Some(end) = rest[..rest.len().min(12)].find(';') else {
            out.push('&');
            rest = &rest[1..];
            continue;
        };
        let name = &rest[1..end];
        let decoded = match name {
            "amp" => Some('&'),
            "lt" => Some('<'),
            "gt" => Some('>'),
            "quot" => Some('"'),
            "apos" => Some('\''),
            _ => name
                .strip_prefix("#x")
                .or_else(|| name.strip_prefix("#X"))
                .map(|hex| u32::from_str_radix(hex, 16))
                .or_else(|| name.strip_prefix('#').map(str::parse::<u32>))
                .and_then(Result::ok)
                .and_then(char::from_u32),
        };
        match decoded {
            Some(c) => {
                out.push(c);
                rest = &rest[end + 1..];
            }
            None => {
                out.push('&');
                rest = &rest[1..];
            }
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims() -> UnsubscribeClaims<'static> {
        UnsubscribeClaims::new("t", "s", "l", "c")
    }

    #[test]
    fn links_go_through_signed_redirects_and_a_pixel_closes_the_body() {
        let signer = TokenSigner::new("k1", b"key");
        let html = "<html><body><p>Hi</p><a href=\"https://shop.example/a?x=1&amp;y=2\">Shop</a> \
                    <a href=\"https://lists.example/u/TOKEN\">Unsubscribe</a> <a href=\"mailto:x@y\">Mail</a> \
                    <a href=\"https://keep.example\" data-no-track>Keep</a></body></html>";
        let out = add_tracking(html, "https://lists.example", &signer, &claims()).unwrap();
        let click = out.split("href=\"https://lists.example/c/").nth(1).unwrap().split('"').next().unwrap();
        let claims = signer.verify(click).unwrap();
        assert_eq!((&*claims.purpose, &*claims.url), (PURPOSE_CLICK, "https://shop.example/a?x=1&y=2"));
        assert!(out.contains("href=\"https://lists.example/u/TOKEN\""), "our own links stay: {out}");
        assert!(out.contains("href=\"mailto:x@y\"") && out.contains("href=\"https://keep.example\""), "{out}");
        let pixel = out.split("/o/").nth(1).unwrap().split('"').next().unwrap();
        assert_eq!(signer.verify(pixel).unwrap().purpose, PURPOSE_OPEN);
        assert!(out.ends_with("></body></html>"), "the pixel goes before </body>: {out}");
    }

    #[test]
    fn escaped_urls_are_decoded_before_signing() {
        assert_eq!(
            decode_entities("https:&#x2f;&#x2f;a.example&#47;b?x=1&amp;y=2&bogus;&"),
            "https://a.example/b?x=1&y=2&bogus;&"
        );
    }

    #[test]
    fn fragments_without_a_body_get_the_pixel_at_the_end() {
        let signer = TokenSigner::new("k1", b"key");
        let out = add_tracking("<p>Hi</p>", "https://lists.example/", &signer, &claims()).unwrap();
        assert!(out.starts_with("<p>Hi</p><img src=\"https://lists.example/o/"), "{out}");
    }
}
