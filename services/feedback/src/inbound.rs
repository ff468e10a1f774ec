//! The inbound listener: SMTP (RFC 5321) and LMTP (RFC 2033) on one port;
//! the client's EHLO/HELO or LHLO picks the protocol. It accepts mail only
//! for the VERP bounce domain, the feedback-loop mailboxes and the
//! unsubscribe mailto address, and answers the final dot only after the
//! message is classified, stored and acted on, so a 250 never loses a report
//! and a failure (4xx) makes the MTA retry.

use std::sync::Arc;

use tokio::io::{AsyncBufReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::Feedback;

/// Longest command line (RFC 5321 §4.5.3.1.4: 512 with CRLF; some clients send more).
const MAX_COMMAND: usize = 2048;
/// Longest text line inside DATA (RFC 5321: 1000 with CRLF; tolerated up to this).
const MAX_DATA_LINE: usize = 64 * 1024;
/// Recipients per transaction (RFC 5321 §4.5.3.1.8 minimum).
const MAX_RECIPIENTS: usize = 100;

/// Accepts connections until `shutdown`, `feedback.max_connections` at a time.
pub async fn serve(listener: TcpListener, feedback: Feedback, shutdown: CancellationToken) -> anyhow::Result<()> {
    let slots = Arc::new(Semaphore::new(feedback.settings.config.max_connections));
    let local = listener.local_addr()?;
    tracing::info!(addr = %local, "inbound SMTP/LMTP listening");
    loop {
        let (mut stream, peer) = tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    tracing::warn!(%error, "inbound accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tracing::warn!(%peer, "inbound connection refused: feedback.max_connections reached");
            let _ = stream.write_all(b"421 4.3.2 Too many connections, try again later\r\n").await;
            continue;
        };
        let feedback = feedback.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let _slot = slot;
            if let Err(error) = Session::new(feedback).run(stream, shutdown).await {
                tracing::debug!(%error, %peer, "inbound session ended with an error");
            }
        });
    }
}

/// One SMTP/LMTP session's state.
struct Session {
    feedback: Feedback,
    greeted: bool,
    lmtp: bool,
    mail_from: Option<String>,
    recipients: Vec<String>,
}

enum Line {
    Text(Vec<u8>),
    TooLong,
    Closed,
}

impl Session {
    fn new(feedback: Feedback) -> Self {
        Self { feedback, greeted: false, lmtp: false, mail_from: None, recipients: Vec::new() }
    }

    async fn run(mut self, stream: TcpStream, shutdown: CancellationToken) -> std::io::Result<()> {
        let (read, mut write) = stream.into_split();
        let mut reader = BufReader::new(read);
        let host = self.feedback.settings.hostname.clone();
        reply(&mut write, &format!("220 {host} Broadside feedback ESMTP/LMTP ready")).await?;
        loop {
            let line = tokio::select! {
                _ = shutdown.cancelled() => {
                    return reply(&mut write, "421 4.3.2 Shutting down, try again later").await;
                }
                line = self.read_line(&mut reader, MAX_COMMAND) => line?,
            };
            let line = match line {
                Line::Closed => return Ok(()),
                Line::TooLong => {
                    reply(&mut write, "500 5.5.2 Line too long").await?;
                    continue;
                }
                Line::Text(line) => String::from_utf8_lossy(&line).trim_end().to_owned(),
            };
            let (verb, argument) = line.split_once(' ').unwrap_or((&line, ""));
            let verb = verb.to_ascii_uppercase();
            let max = self.feedback.settings.config.max_message_bytes;
            match verb.as_str() {
                "EHLO" | "LHLO" => {
                    (self.greeted, self.lmtp) = (true, verb == "LHLO");
                    self.reset();
                    let greeting = format!(
                        "250-{host}\r\n250-SIZE {max}\r\n250-8BITMIME\r\n250-PIPELINING\r\n250 ENHANCEDSTATUSCODES"
                    );
                    reply(&mut write, &greeting).await?;
                }
                "HELO" => {
                    (self.greeted, self.lmtp) = (true, false);
                    self.reset();
                    reply(&mut write, &format!("250 {host}")).await?;
                }
                "MAIL" => {
                    let answer = self.mail(argument, max);
                    reply(&mut write, &answer).await?;
                }
                "RCPT" => {
                    let answer = self.rcpt(argument);
                    reply(&mut write, &answer).await?;
                }
                "DATA" => {
                    if self.recipients.is_empty() {
                        reply(&mut write, "503 5.5.1 RCPT first").await?;
                        continue;
                    }
                    reply(&mut write, "354 End data with <CR><LF>.<CR><LF>").await?;
                    let Some(message) = self.read_data(&mut reader, max).await? else {
                        reply(&mut write, &format!("552 5.3.4 Message exceeds the size limit of {max} bytes")).await?;
                        self.reset();
                        continue;
                    };
                    let answer = self.deliver(&message).await;
                    let replies = if self.lmtp { self.recipients.len() } else { 1 };
                    for _ in 0..replies {
                        reply(&mut write, &answer).await?;
                    }
                    self.reset();
                }
                "RSET" => {
                    self.reset();
                    reply(&mut write, "250 2.0.0 OK").await?;
                }
                "NOOP" => reply(&mut write, "250 2.0.0 OK").await?,
                "VRFY" => reply(&mut write, "252 2.5.0 Cannot verify, send some mail").await?,
                "QUIT" => return reply(&mut write, "221 2.0.0 Bye").await,
                _ => reply(&mut write, "502 5.5.2 Command not recognized").await?,
            }
        }
    }

    fn reset(&mut self) {
        self.mail_from = None;
        self.recipients.clear();
    }

    fn mail(&mut self, argument: &str, max: usize) -> String {
        if !self.greeted {
            return "503 5.5.1 Say EHLO or LHLO first".into();
        }
        let Some(path) = path_argument(argument, "FROM:") else {
            return "501 5.5.4 Syntax: MAIL FROM:<address>".into();
        };
        let size = argument
            .split_whitespace()
            .filter_map(|p| p.strip_prefix("SIZE=").or_else(|| p.strip_prefix("size=")))
            .find_map(|n| n.parse::<usize>().ok());
        if size.is_some_and(|size| size > max) {
            return format!("552 5.3.4 Message exceeds the size limit of {max} bytes");
        }
        self.mail_from = Some(path);
        self.recipients.clear();
        "250 2.1.0 OK".into()
    }

    fn rcpt(&mut self, argument: &str) -> String {
        if self.mail_from.is_none() {
            return "503 5.5.1 MAIL first".into();
        }
        let Some(path) = path_argument(argument, "TO:") else {
            return "501 5.5.4 Syntax: RCPT TO:<address>".into();
        };
        if self.recipients.len() >= MAX_RECIPIENTS {
            return "452 4.5.3 Too many recipients".into();
        }
        if !self.accepts(&path) {
            return format!("550 5.1.1 <{path}>: not a feedback address of this server");
        }
        self.recipients.push(path);
        "250 2.1.5 OK".into()
    }

    /// The bounce domain (any local part), the complaint mailboxes and the unsubscribe address.
    fn accepts(&self, address: &str) -> bool {
        let settings = &self.feedback.settings;
        let address = address.to_ascii_lowercase();
        let domain = address.rsplit_once('@').map_or("", |(_, domain)| domain);
        domain == settings.bounce_domain.to_ascii_lowercase()
            || address == format!("unsubscribe@{}", settings.domain.to_ascii_lowercase())
            || settings.complaint_addresses().contains(&address)
    }

    async fn deliver(&self, message: &[u8]) -> String {
        match self.feedback.handle_message(message, &self.recipients, None).await {
            Ok(handled) => format!(
                "250 2.0.0 Handled as {} ({})",
                if handled.verdict.rule == "mailto" { "unsubscribe" } else { handled.verdict.kind.as_str() },
                handled.action
            ),
            Err(error) => {
                tracing::warn!(%error, "inbound message not recorded, the sender will retry");
                "451 4.3.0 Temporary failure recording the message, try again later".into()
            }
        }
    }

    async fn read_line<R: AsyncBufReadExt + Unpin>(&self, reader: &mut R, max: usize) -> std::io::Result<Line> {
        let mut line = Vec::new();
        let timeout = self.feedback.settings.command_timeout();
        loop {
            let available = match tokio::time::timeout(timeout, reader.fill_buf()).await {
                Ok(result) => result?,
                Err(_) => return Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "client idle too long")),
            };
            if available.is_empty() {
                return Ok(if line.is_empty() { Line::Closed } else { Line::Text(line) });
            }
            let (used, done) = match available.iter().position(|b| *b == b'\n') {
                Some(at) => (at + 1, true),
                None => (available.len(), false),
            };
            if line.len() < max {
                line.extend_from_slice(&available[..used.min(max - line.len())]);
            }
            let over = line.len() >= max && !done;
            reader.consume(used);
            if done {
                return Ok(if line.len() >= max && line.last() != Some(&b'\n') {
                    Line::TooLong
                } else {
                    Line::Text(line)
                });
            }
            if over {
                // Skip the rest of the over-long line.
                continue;
            }
        }
    }

    /// Reads DATA up to the lone dot, undoing dot-stuffing. `None` when the
    /// message exceeded `max` (read to its end and discarded).
    async fn read_data<R: AsyncBufReadExt + Unpin>(
        &self,
        reader: &mut R,
        max: usize,
    ) -> std::io::Result<Option<Vec<u8>>> {
        let mut message = Vec::new();
        let mut too_big = false;
        loop {
            let line = match self.read_line(reader, MAX_DATA_LINE).await? {
                Line::Closed => return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "closed in DATA")),
                Line::TooLong => {
                    too_big = true;
                    continue;
                }
                Line::Text(line) => line,
            };
            if line == b".\r\n" || line == b".\n" {
                return Ok((!too_big).then_some(message));
            }
            let line = line.strip_prefix(b".").unwrap_or(&line);
            if message.len() + line.len() > max {
                too_big = true;
            }
            if !too_big {
                message.extend_from_slice(line);
            }
        }
    }
}

/// `FROM:<a@b> SIZE=1` → `a@b` (`<>` gives an empty path).
fn path_argument(argument: &str, prefix: &str) -> Option<String> {
    let rest = argument.trim_start();
    let head = rest.get(..prefix.len())?;
    if !head.eq_ignore_ascii_case(prefix) {
        return None;
    }
    let rest = rest[prefix.len()..].trim_start();
    let path = rest.strip_prefix('<')?.split_once('>')?.0;
    Some(path.rsplit_once(':').map_or(path, |(_, address)| address).to_owned())
}

async fn reply<W: AsyncWrite + Unpin>(write: &mut W, text: &str) -> std::io::Result<()> {
    write.write_all(text.as_bytes()).await?;
    write.write_all(b"\r\n").await?;
    write.flush().await
}

#[cfg(test)]
mod tests {
    use super::path_argument;

    #[test]
    fn paths() {
        assert_eq!(path_argument("FROM:<a@b.c> SIZE=10", "FROM:").as_deref(), Some("a@b.c"));
        assert_eq!(path_argument("from: <>", "FROM:").as_deref(), Some(""));
        assert_eq!(path_argument("TO:<@relay:x@y.z>", "TO:").as_deref(), Some("x@y.z"));
        assert_eq!(path_argument("TO:x@y", "TO:"), None);
        assert_eq!(path_argument("", "TO:"), None);
    }
}
