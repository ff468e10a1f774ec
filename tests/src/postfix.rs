//! A real Postfix that generates DSNs (`deploy/local/postfix-bounce.sh`),
//! stopped on drop.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::smtp_sink::free_port;

pub struct PostfixBounce {
    dir: PathBuf,
    /// Where the sender submits mail.
    pub port: u16,
}

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/local/postfix-bounce.sh")
}

impl PostfixBounce {
    /// Starts Postfix in `dir`: DSNs for `bounce_domain` go to LMTP on
    /// `lmtp_port`, other mail to the smtp-sink on `sink_port`.
    pub fn start(dir: &Path, bounce_domain: &str, lmtp_port: u16, sink_port: u16) -> anyhow::Result<PostfixBounce> {
        // The script uses PORT and PORT + 1 (the refusing listener).
        let port = loop {
            let port = free_port()?;
            if std::net::TcpListener::bind(("127.0.0.1", port + 1)).is_ok() {
                break port;
            }
        };
        let output = Command::new("bash")
            .arg(script())
            .arg(dir)
            .args([port.to_string(), bounce_domain.to_owned(), lmtp_port.to_string(), sink_port.to_string()])
            .output()?;
        anyhow::ensure!(
            output.status.success(),
            "postfix-bounce.sh failed: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        Ok(PostfixBounce { dir: dir.to_owned(), port })
    }

    /// Postfix's own log, for failure messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("maillog")).unwrap_or_default()
    }
}

impl Drop for PostfixBounce {
    fn drop(&mut self) {
        let _ = Command::new("bash").arg(script()).arg(&self.dir).arg("stop").status();
    }
}
