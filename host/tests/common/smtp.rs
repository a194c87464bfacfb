//! A real SMTP receiver over TCP that keeps every mail.
//!
//! Written here because the SMTP-server crate of the field
//! (mailin-embedded) does not build without a TLS backend, and its rustls
//! backend brings a second crypto provider (aws-lc, a C build) into the
//! test build. The server side of plain SMTP is a page of code.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex, PoisonError};

/// A received mail: envelope sender and recipients, and the message.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Mail {
    /// `MAIL FROM`.
    pub from: String,
    /// `RCPT TO`, in order.
    pub recipients: Vec<String>,
    /// Headers and body as sent.
    pub message: String,
}

impl Mail {
    /// The value of header `name` (first occurrence, unfolded).
    pub fn header(&self, name: &str) -> Option<String> {
        let prefix = format!("{}:", name.to_ascii_lowercase());
        let mut lines = self.message.split("\r\n").peekable();
        while let Some(line) = lines.next() {
            if line.is_empty() {
                return None;
            }
            if line.to_ascii_lowercase().starts_with(&prefix) {
                let mut value = line[prefix.len()..].trim().to_owned();
                while let Some(next) = lines.peek().filter(|l| l.starts_with([' ', '\t'])) {
                    value.push(' ');
                    value.push_str(next.trim());
                    lines.next();
                }
                return Some(value);
            }
        }
        None
    }
}

/// One SMTP session (RFC 5321, the commands a client like lettre sends
/// without TLS or AUTH), keeping each mail that ends with `.`.
fn session(stream: TcpStream, mails: &Mutex<Vec<Mail>>) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut writer = stream;
    let mut reply = |text: &str| writer.write_all(format!("{text}\r\n").as_bytes());
    reply("220 sink.test ESMTP")?;
    let mut mail = Mail::default();
    let mut line = String::new();
    loop {
        line.clear();
        if reader.read_line(&mut line)? == 0 {
            return Ok(());
        }
        let command = line.trim_end().to_owned();
        let upper = command.to_ascii_uppercase();
        let address = |prefix: &str| {
            command[prefix.len()..]
                .trim()
                .trim_start_matches('<')
                .split('>')
                .next()
                .unwrap_or_default()
                .to_owned()
        };
        if upper.starts_with("EHLO") {
            reply("250-sink.test\r\n250-8BITMIME\r\n250 SMTPUTF8")?;
        } else if upper.starts_with("HELO") {
            reply("250 sink.test")?;
        } else if upper.starts_with("MAIL FROM:") {
            mail = Mail {
                from: address("MAIL FROM:"),
                ..Mail::default()
            };
            reply("250 OK")?;
        } else if upper.starts_with("RCPT TO:") {
            mail.recipients.push(address("RCPT TO:"));
            reply("250 OK")?;
        } else if upper == "DATA" {
            reply("354 end with <CRLF>.<CRLF>")?;
            loop {
                line.clear();
                if reader.read_line(&mut line)? == 0 {
                    return Ok(());
                }
                if line == ".\r\n" {
                    break;
                }
                let unstuffed = line.strip_prefix('.').unwrap_or(&line);
                mail.message.push_str(unstuffed);
            }
            mails
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(std::mem::take(&mut mail));
            reply("250 OK queued")?;
        } else if upper == "QUIT" {
            reply("221 bye")?;
            return Ok(());
        } else if upper == "RSET" || upper == "NOOP" {
            reply("250 OK")?;
        } else {
            reply("502 not implemented")?;
        }
    }
}

/// The receiver, serving on a thread for the rest of the test process.
pub struct SmtpSink {
    /// Its port on 127.0.0.1.
    pub port: u16,
    mails: Arc<Mutex<Vec<Mail>>>,
}

impl SmtpSink {
    /// Serves on a free port.
    pub fn start() -> SmtpSink {
        SmtpSink::on(TcpListener::bind("127.0.0.1:0").expect("a free port"))
    }

    /// Serves on `listener`.
    pub fn on(listener: TcpListener) -> SmtpSink {
        let port = listener.local_addr().expect("bound").port();
        let mails = Arc::new(Mutex::new(Vec::new()));
        let shared = Arc::clone(&mails);
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let mails = Arc::clone(&shared);
                std::thread::spawn(move || session(stream, &mails));
            }
        });
        SmtpSink { port, mails }
    }

    /// The mails received so far.
    pub fn mails(&self) -> Vec<Mail> {
        self.mails
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}
