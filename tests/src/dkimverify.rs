//! Verifies DKIM signatures with Debian's python3-dkim (dkimpy, the library
//! behind `dkimverify`), an implementation independent of ours. There is no
//! DNS here, so the TXT records `broadside dkim keygen` printed are handed to
//! dkimpy's verifier through its `dnsfunc` hook; everything else (header
//! selection, canonicalization, hashing, RSA and Ed25519) is dkimpy's own.

use std::collections::HashMap;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

/// Debian's interpreter, which has python3-dkim (the PATH one may not).
pub const PYTHON: &str = "/usr/bin/python3";

const VERIFY: &str = r#"
import json, sys, dkim
records = json.loads(sys.argv[1])
index = int(sys.argv[2])
message = sys.stdin.buffer.read()
def dns(name, timeout=5):
    if isinstance(name, bytes):
        name = name.decode()
    value = records.get(name.rstrip('.'))
    return value.encode() if value is not None else None
ok = dkim.DKIM(message).verify(idx=index, dnsfunc=dns)
print("signature ok" if ok else "signature verification failed")
sys.exit(0 if ok else 1)
"#;

/// Parses `NAME. IN TXT ( "part" "part" )` lines into name → joined value.
pub fn parse_txt_records(output: &str) -> HashMap<String, String> {
    output
        .lines()
        .filter_map(|line| {
            let (name, rest) = line.split_once(". IN TXT")?;
            let value: String = rest.split('"').skip(1).step_by(2).collect();
            Some((name.trim().to_owned(), value))
        })
        .collect()
}

/// Runs dkimpy on signature number `index`; `Ok(())` when it verifies,
/// otherwise the verifier's words.
pub fn verify(message: &[u8], records: &HashMap<String, String>, index: usize) -> anyhow::Result<Result<(), String>> {
    anyhow::ensure!(
        Path::new(PYTHON).exists(),
        "{PYTHON} is missing: install Debian's python3-dkim and python3-nacl (the test command does)"
    );
    let mut child = Command::new(PYTHON)
        .args(["-c", VERIFY, &serde_json::to_string(records)?, &index.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    child.stdin.take().expect("stdin").write_all(message)?;
    let output = child.wait_with_output()?;
    let words = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    Ok(if output.status.success() { Ok(()) } else { Err(words) })
}
