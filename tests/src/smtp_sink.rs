//! Postfix's `smtp-sink` as a real SMTP receiver that dumps every message.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running `smtp-sink`, killed on drop.
pub struct SmtpSink {
    child: Child,
    pub port: u16,
    pub dump_dir: PathBuf,
}

/// Where Debian installs it.
pub const SMTP_SINK: &str = "/usr/sbin/smtp-sink";

impl SmtpSink {
    /// Starts `smtp-sink` on a free loopback port, dumping each message into
    /// `dump_dir`. `extra` passes options such as `-r RCPT` (soft-reject).
    pub fn start(dump_dir: &Path, extra: &[&str]) -> anyhow::Result<SmtpSink> {
        anyhow::ensure!(
            Path::new(SMTP_SINK).exists(),
            "{SMTP_SINK} is missing: install Debian's postfix package (the test command does)"
        );
        std::fs::create_dir_all(dump_dir)?;
        let port = free_port()?;
        let template = format!("{}/%Y%m%d%H%M%S.", dump_dir.display());
        let child = Command::new(SMTP_SINK)
            .args(["-u", "nobody", "-d", &template])
            .args(extra)
            .arg(format!("127.0.0.1:{port}"))
            .arg("256")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        // nobody must be able to write the dumps.
        let _ = Command::new("chmod").args(["0777", &dump_dir.display().to_string()]).status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            anyhow::ensure!(Instant::now() < deadline, "smtp-sink did not listen on {port}");
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(SmtpSink { child, port, dump_dir: dump_dir.to_owned() })
    }

    pub fn url(&self) -> String {
        format!("smtp://127.0.0.1:{}", self.port)
    }
}

impl Drop for SmtpSink {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A free loopback port (bound then released).
pub fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}
