//! DKIM signing: RSA-SHA256 (RFC 6376) and Ed25519-SHA256 (RFC 8463), with
//! keys read from `DIR/<domain>/<selector>.pem`. A message gets one
//! signature per key of its From domain (or of the nearest parent domain that
//! has keys, which still aligns under relaxed DMARC), so receivers that only
//! know RSA and those that prefer Ed25519 both verify it. mail-auth does the
//! canonicalization and hashing; aws-lc does the RSA (about twice ring's speed).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use mail_auth::common::crypto::{DkimKey, Ed25519Key, RsaKey, Sha256};
use mail_auth::common::headers::HeaderWriter;
use mail_auth::dkim::{DkimSigner as Signer, Done as Ready};
use rustls_pki_types::PrivateKeyDer;
use rustls_pki_types::pem::PemObject;

use crate::MailError;

/// Signed headers (`h=`). Listed headers a message lacks are signed as
/// absent, so nobody can add them later (RFC 6376 §5.4).
pub const SIGNED_HEADERS: [&str; 13] = [
    "From",
    "To",
    "Subject",
    "Date",
    "Message-ID",
    "List-Unsubscribe",
    "List-Unsubscribe-Post",
    "Feedback-ID",
    "List-Id",
    "Reply-To",
    "Sender",
    "MIME-Version",
    "Content-Type",
];

/// One loaded key.
struct DomainKey {
    selector: String,
    algorithm: &'static str,
    signer: Signer<DkimKey, Ready>,
}

/// Every signing key a sender holds, by domain.
#[derive(Default)]
pub struct DkimKeys {
    by_domain: HashMap<String, Vec<DomainKey>>,
}

impl std::fmt::Debug for DkimKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.describe()).finish()
    }
}

fn key_error(path: &Path, message: impl std::fmt::Display) -> MailError {
    MailError::invalid("dkim", format!("{}: {message}", path.display()))
}

/// Reads an RSA (PKCS #1 or #8) or Ed25519 (PKCS #8) private key from PEM.
fn read_key(path: &Path) -> Result<(DkimKey, &'static str), MailError> {
    let pem = std::fs::read(path).map_err(|e| key_error(path, e))?;
    let der =
        PrivateKeyDer::from_pem_slice(&pem).map_err(|e| key_error(path, format!("not a PEM private key: {e}")))?;
    if let PrivateKeyDer::Pkcs8(pkcs8) = &der
        && let Ok(key) = Ed25519Key::from_pkcs8_maybe_unchecked_der(pkcs8.secret_pkcs8_der())
    {
        return Ok((DkimKey::Ed25519(key), "ed25519"));
    }
    let key = RsaKey::<Sha256>::from_key_der(der)
        .map_err(|e| key_error(path, format!("neither an RSA nor an Ed25519 key: {e}")))?;
    Ok((DkimKey::Rsa(key), "rsa"))
}

impl DkimKeys {
    /// Loads `dir/<domain>/<selector>.pem`. A missing directory means no
    /// keys; an unreadable or malformed key file is an error naming the file.
    pub fn load(dir: &Path) -> Result<Self, MailError> {
        let mut keys = Self::default();
        let Ok(domains) = std::fs::read_dir(dir) else { return Ok(keys) };
        for domain_dir in domains.flatten().filter(|e| e.path().is_dir()) {
            let domain = domain_dir.file_name().to_string_lossy().to_ascii_lowercase();
            let mut files: Vec<PathBuf> = std::fs::read_dir(domain_dir.path())
                .map_err(|e| key_error(&domain_dir.path(), e))?
                .flatten()
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|e| e == "pem"))
                .collect();
            files.sort();
            for path in files {
                let selector = path.file_stem().unwrap_or_default().to_string_lossy().into_owned();
                let (key, algorithm) = read_key(&path)?;
                let signer = Signer::from_key(key).domain(&domain).selector(&selector).headers(SIGNED_HEADERS);
                keys.by_domain.entry(domain.clone()).or_default().push(DomainKey { selector, algorithm, signer });
            }
        }
        Ok(keys)
    }

    pub fn is_empty(&self) -> bool {
        self.by_domain.is_empty()
    }

    /// `domain selector algorithm` of every key, for logs.
    pub fn describe(&self) -> Vec<String> {
        let mut all: Vec<String> = self
            .by_domain
            .iter()
            .flat_map(|(domain, keys)| keys.iter().map(move |k| format!("{domain} {} {}", k.selector, k.algorithm)))
            .collect();
        all.sort();
        all
    }

    /// The signing domain for mail from `from_domain`: itself or its nearest parent with keys.
    pub fn signing_domain(&self, from_domain: &str) -> Option<&str> {
        let mut domain = from_domain;
        loop {
            if let Some((name, _)) = self.by_domain.get_key_value(domain) {
                return Some(name);
            }
            domain = domain.split_once('.')?.1;
        }
    }

    /// The `DKIM-Signature` header fields for `message`, one per key of the
    /// signing domain, ready to prepend. Empty when no key covers the domain.
    pub fn sign(&self, from_domain: &str, message: &[u8]) -> Result<String, MailError> {
        let Some(domain) = self.signing_domain(from_domain) else { return Ok(String::new()) };
        let mut headers = String::new();
        for key in &self.by_domain[domain] {
            let signature = key
                .signer
                .sign(message)
                .map_err(|e| MailError::failed(format!("DKIM {} signature ({domain})", key.algorithm), e))?;
            headers.push_str(&signature.to_header());
        }
        Ok(headers)
    }
}

/// A key written by [`keygen`], with its DNS record.
#[derive(Debug, Clone)]
pub struct GeneratedKey {
    pub path: PathBuf,
    pub selector: String,
    pub algorithm: &'static str,
    /// Owner name of the TXT record.
    pub dns_name: String,
    /// TXT record value.
    pub dns_value: String,
}

/// Writes an RSA-2048 key for `selector` and an Ed25519 key for
/// `<selector>-ed25519` under `dir/<domain>/` (mode 0600, never overwriting),
/// and returns the TXT records to publish.
pub fn keygen(dir: &Path, domain: &str, selector: &str) -> Result<Vec<GeneratedKey>, MailError> {
    use aws_lc_rs::encoding::{AsDer, Pkcs8V1Der, PublicKeyX509Der};
    use aws_lc_rs::signature::KeyPair;

    let domain = domain.trim().trim_end_matches('.').to_ascii_lowercase();
    let valid_label = |s: &str| !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.');
    if !valid_label(&domain) || !domain.contains('.') {
        return Err(MailError::invalid("domain", format!("{domain:?} is not a domain name")));
    }
    if !valid_label(selector) {
        return Err(MailError::invalid("selector", "use letters, digits, '-' and '.'"));
    }
    let folder = dir.join(&domain);
    std::fs::create_dir_all(&folder).map_err(|e| key_error(&folder, e))?;
    let failed = |what: &str| MailError::Build(format!("generating the {what} key failed"));

    let rsa = aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).map_err(|_| failed("RSA"))?;
    let rsa_private: Pkcs8V1Der<'_> = rsa.as_der().map_err(|_| failed("RSA"))?;
    let rsa_public: PublicKeyX509Der<'_> = rsa.public_key().as_der().map_err(|_| failed("RSA"))?;
    let ed = aws_lc_rs::signature::Ed25519KeyPair::generate().map_err(|_| failed("Ed25519"))?;
    let ed_private = ed.to_pkcs8v1().map_err(|_| failed("Ed25519"))?;
    let ed_public = ed.public_key().as_ref().to_vec();

    let mut written = Vec::new();
    for (selector, algorithm, private, public) in [
        (selector.to_owned(), "rsa", rsa_private.as_ref().to_vec(), rsa_public.as_ref().to_vec()),
        (format!("{selector}-ed25519"), "ed25519", ed_private.as_ref().to_vec(), ed_public),
    ] {
        let path = folder.join(format!("{selector}.pem"));
        let pem = pem_encode("PRIVATE KEY", &private);
        write_new(&path, pem.as_bytes())?;
        written.push(GeneratedKey {
            dns_name: format!("{selector}._domainkey.{domain}"),
            dns_value: format!("v=DKIM1; k={algorithm}; p={}", STANDARD.encode(public)),
            path,
            selector,
            algorithm,
        });
    }
    Ok(written)
}

fn pem_encode(label: &str, der: &[u8]) -> String {
    let body = STANDARD.encode(der);
    let lines: Vec<&str> = body.as_bytes().chunks(64).map(|c| std::str::from_utf8(c).unwrap_or_default()).collect();
    format!("-----BEGIN {label}-----\n{}\n-----END {label}-----\n", lines.join("\n"))
}

/// Creates `path` with mode 0600; refuses to replace a key that exists.
fn write_new(path: &Path, bytes: &[u8]) -> Result<(), MailError> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::AlreadyExists {
            key_error(path, "exists; choose another selector (keys are never overwritten)")
        } else {
            key_error(path, e)
        }
    })?;
    file.write_all(bytes).map_err(|e| key_error(path, e))
}

/// A TXT value split into strings of at most 255 bytes, as zone files and
/// DNS providers want it (RFC 7208 §3.3 style).
pub fn txt_strings(value: &str) -> String {
    value.as_bytes().chunks(255).map(|c| format!("\"{}\"", String::from_utf8_lossy(c))).collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keygen_writes_loadable_keys_and_signs_with_both() {
        let dir = tempfile::tempdir().unwrap();
        let generated = keygen(dir.path(), "Example.COM", "s1").unwrap();
        assert_eq!(generated.len(), 2);
        assert_eq!(generated[0].dns_name, "s1._domainkey.example.com");
        assert!(generated[1].dns_value.starts_with("v=DKIM1; k=ed25519; p="));
        let keys = DkimKeys::load(dir.path()).unwrap();
        assert_eq!(keys.describe(), ["example.com s1 rsa", "example.com s1-ed25519 ed25519"]);
        assert_eq!(keys.signing_domain("news.example.com"), Some("example.com"));
        assert_eq!(keys.signing_domain("example.org"), None);
        let message = b"From: a@example.com\r\nTo: b@example.org\r\nSubject: hi\r\n\r\nbody\r\n";
        let headers = keys.sign("example.com", message).unwrap();
        assert_eq!(headers.matches("DKIM-Signature:").count(), 2, "{headers}");
        assert!(headers.contains("a=rsa-sha256") && headers.contains("a=ed25519-sha256"));
        assert!(keys.sign("example.org", message).unwrap().is_empty());
        let again = keygen(dir.path(), "example.com", "s1").unwrap_err();
        assert!(again.to_string().contains("exists"), "{again}");
    }

    #[test]
    fn malformed_key_files_are_named() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("example.com")).unwrap();
        std::fs::write(dir.path().join("example.com/bad.pem"), "not a key").unwrap();
        let error = DkimKeys::load(dir.path()).unwrap_err();
        assert!(error.to_string().contains("bad.pem"), "{error}");
    }

    #[test]
    fn long_txt_values_are_split() {
        let value = "p=".to_owned() + &"A".repeat(400);
        let split = txt_strings(&value);
        assert_eq!(split.matches('"').count(), 4);
    }
}
