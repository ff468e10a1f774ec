//! `scylla://[USER@]HOST:PORT,HOST:PORT/KEYSPACE?dc=DC&...`: everything the
//! backend needs to reach a cluster, parsed once with errors that name the
//! option. Passwords come from a file (`password_file=`), never the URL.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use scylla::statement::{Consistency, SerialConsistency};

use crate::{Result, StoreError};

/// A parsed `scylla://` URL.
#[derive(Debug, Clone, PartialEq)]
pub struct ScyllaUri {
    pub hosts: Vec<String>,
    pub keyspace: String,
    /// The local datacenter: requests go to its replicas (token-aware) and
    /// never fail over to another DC.
    pub dc: Option<String>,
    /// Replication factor in `dc` that `broadside migrate` creates the keyspace with.
    pub replication_factor: u32,
    /// Every read and write except the LWT ones.
    pub consistency: Consistency,
    /// The Paxos phase of LWT (email uniqueness, ledger claims, campaign state).
    pub serial_consistency: SerialConsistency,
    pub request_timeout: Duration,
    pub connect_timeout: Duration,
    pub user: Option<String>,
    pub password_file: Option<PathBuf>,
    pub tls: bool,
    pub ca_file: Option<PathBuf>,
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
}

fn invalid(message: impl Into<String>) -> StoreError {
    StoreError::Invalid { field: "store.url".into(), message: message.into() }
}

fn consistency(name: &str) -> Result<Consistency> {
    Ok(match name.to_ascii_lowercase().as_str() {
        "one" => Consistency::One,
        "local_one" => Consistency::LocalOne,
        "quorum" => Consistency::Quorum,
        "local_quorum" => Consistency::LocalQuorum,
        "each_quorum" => Consistency::EachQuorum,
        "all" => Consistency::All,
        other => {
            return Err(invalid(format!(
                "consistency={other:?}: use local_quorum (default), quorum, each_quorum, local_one, one or all"
            )));
        }
    })
}

fn millis(key: &str, value: &str) -> Result<Duration> {
    match value.parse::<u64>() {
        Ok(ms) if ms > 0 => Ok(Duration::from_millis(ms)),
        _ => Err(invalid(format!("{key}={value:?}: a positive number of milliseconds"))),
    }
}

impl ScyllaUri {
    pub fn parse(raw: &str) -> Result<Self> {
        let rest = raw.strip_prefix("scylla://").ok_or_else(|| invalid(format!("{raw:?} is not a scylla:// URL")))?;
        let (authority, path) =
            rest.split_once('/').ok_or_else(|| invalid("scylla:// needs a keyspace: scylla://HOST:9042/KEYSPACE"))?;
        let (keyspace, query) = path.split_once('?').unwrap_or((path, ""));
        let (user, hosts) = match authority.rsplit_once('@') {
            Some((user, _)) if user.contains(':') => {
                return Err(invalid("put the password in a file and name it with password_file=, not in the URL"));
            }
            Some((user, hosts)) => (Some(user.to_owned()), hosts),
            None => (None, authority),
        };
        let hosts: Vec<String> = hosts.split(',').filter(|h| !h.is_empty()).map(str::to_owned).collect();
        if hosts.is_empty() {
            return Err(invalid("scylla:// needs at least one HOST:PORT"));
        }
        let valid_name = |name: &str| {
            !name.is_empty()
                && name.len() <= 48
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                && !name.starts_with('_')
        };
        if !valid_name(keyspace) {
            return Err(invalid(format!("keyspace {keyspace:?}: letters, digits and _ (at most 48)")));
        }
        let mut uri = ScyllaUri {
            hosts,
            keyspace: keyspace.to_owned(),
            dc: None,
            replication_factor: 3,
            consistency: Consistency::LocalQuorum,
            serial_consistency: SerialConsistency::LocalSerial,
            request_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(5),
            user,
            password_file: None,
            tls: false,
            ca_file: None,
            cert_file: None,
            key_file: None,
        };
        let mut seen = HashMap::new();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').ok_or_else(|| invalid(format!("{pair:?}: expected KEY=VALUE")))?;
            if seen.insert(key.to_owned(), ()).is_some() {
                return Err(invalid(format!("{key} is given twice")));
            }
            match key {
                "dc" => uri.dc = Some(value.to_owned()),
                "rf" => {
                    uri.replication_factor = value
                        .parse()
                        .ok()
                        .filter(|rf| (1..=9).contains(rf))
                        .ok_or_else(|| invalid(format!("rf={value:?}: a replication factor from 1 to 9")))?
                }
                "consistency" => uri.consistency = consistency(value)?,
                "serial_consistency" => {
                    uri.serial_consistency = match value.to_ascii_lowercase().as_str() {
                        "serial" => SerialConsistency::Serial,
                        "local_serial" => SerialConsistency::LocalSerial,
                        _ => return Err(invalid(format!("serial_consistency={value:?}: serial or local_serial"))),
                    }
                }
                "timeout_ms" => uri.request_timeout = millis(key, value)?,
                "connect_timeout_ms" => uri.connect_timeout = millis(key, value)?,
                "user" => uri.user = Some(value.to_owned()),
                "password_file" => uri.password_file = Some(PathBuf::from(value)),
                "tls" => {
                    uri.tls = match value {
                        "true" | "1" => true,
                        "false" | "0" => false,
                        _ => return Err(invalid(format!("tls={value:?}: true or false"))),
                    }
                }
                "ca_file" => uri.ca_file = Some(PathBuf::from(value)),
                "cert_file" => uri.cert_file = Some(PathBuf::from(value)),
                "key_file" => uri.key_file = Some(PathBuf::from(value)),
                other => {
                    return Err(invalid(format!(
                        "unknown option {other:?} (known: dc, rf, consistency, serial_consistency, timeout_ms, \
                         connect_timeout_ms, user, password_file, tls, ca_file, cert_file, key_file)"
                    )));
                }
            }
        }
        if uri.user.is_some() != uri.password_file.is_some() {
            return Err(invalid("user and password_file go together"));
        }
        if (uri.ca_file.is_some() || uri.cert_file.is_some()) && !uri.tls {
            return Err(invalid("ca_file and cert_file need tls=true"));
        }
        if uri.tls && uri.ca_file.is_none() {
            return Err(invalid("tls=true needs ca_file= (the PEM of the CA that signed the nodes' certificates)"));
        }
        if uri.cert_file.is_some() != uri.key_file.is_some() {
            return Err(invalid("cert_file and key_file go together (client certificate authentication)"));
        }
        Ok(uri)
    }

    /// The URL with a different keyspace (tests use a fresh one per run).
    pub fn with_keyspace(&self, keyspace: &str) -> Self {
        Self { keyspace: keyspace.to_owned(), ..self.clone() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_options() {
        let uri = ScyllaUri::parse("scylla://h1:9042,h2:9042/broadside?dc=eu-west&rf=3").unwrap();
        assert_eq!(uri.hosts, ["h1:9042", "h2:9042"]);
        assert_eq!((uri.keyspace.as_str(), uri.dc.as_deref()), ("broadside", Some("eu-west")));
        assert_eq!(uri.consistency, Consistency::LocalQuorum);
        assert_eq!(uri.serial_consistency, SerialConsistency::LocalSerial);
        let uri = ScyllaUri::parse(
            "scylla://app@h1:9042/ks?consistency=quorum&serial_consistency=serial&timeout_ms=800\
             &password_file=/run/secrets/scylla&tls=true&ca_file=/etc/ca.pem",
        )
        .unwrap();
        assert_eq!((uri.user.as_deref(), uri.consistency), (Some("app"), Consistency::Quorum));
        assert_eq!(uri.serial_consistency, SerialConsistency::Serial);
        assert_eq!(uri.request_timeout, Duration::from_millis(800));
        assert!(uri.tls);
    }

    #[test]
    fn errors_name_the_option() {
        for (url, needle) in [
            ("scylla://h1:9042", "needs a keyspace"),
            ("scylla:///ks", "at least one HOST"),
            ("scylla://h1/ks-prod", "keyspace \"ks-prod\""),
            ("scylla://h1/ks?rf=0", "rf=\"0\""),
            ("scylla://h1/ks?consistency=most", "consistency=\"most\""),
            ("scylla://h1/ks?timeout_ms=soon", "timeout_ms"),
            ("scylla://h1/ks?colour=blue", "unknown option \"colour\""),
            ("scylla://app:secret@h1/ks", "password_file"),
            ("scylla://app@h1/ks", "user and password_file"),
            ("scylla://h1/ks?tls=true", "needs ca_file"),
            ("scylla://h1/ks?dc=a&dc=b", "dc is given twice"),
        ] {
            let error = ScyllaUri::parse(url).unwrap_err().to_string();
            assert!(error.contains(needle), "{url}: {error}");
        }
    }
}
