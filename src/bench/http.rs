//! A minimal HTTP/1.1 client with keep-alive, enough to drive the API from
//! many concurrent connections without pulling a client crate into the
//! binary. It speaks only what the bench needs: a request line, a few
//! headers, a JSON body, and responses with `Content-Length`.

use std::time::Duration;

use anyhow::{Context, bail};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// One keep-alive connection.
pub struct Conn {
    host: String,
    stream: Option<BufReader<TcpStream>>,
    token: Option<String>,
}

/// A response: status and body.
pub struct Response {
    pub status: u16,
    pub body: Vec<u8>,
}

impl Conn {
    /// `base` is `http://host:port`.
    pub fn new(base: &str, token: Option<String>) -> anyhow::Result<Self> {
        let host = base
            .strip_prefix("http://")
            .context("the bench speaks http:// only")?
            .trim_end_matches('/')
            .to_owned();
        Ok(Conn {
            host,
            stream: None,
            token,
        })
    }

    pub async fn request(
        &mut self,
        method: &str,
        path: &str,
        body: Option<&[u8]>,
    ) -> anyhow::Result<Response> {
        // One retry on a connection the server closed while idle.
        match self.try_request(method, path, body).await {
            Ok(r) => Ok(r),
            Err(_) => {
                self.stream = None;
                self.try_request(method, path, body).await
            }
        }
    }

    async fn try_request(
        &mut self,
        method: &str,
        path: &str,
        body: Option<&[u8]>,
    ) -> anyhow::Result<Response> {
        if self.stream.is_none() {
            let s = TcpStream::connect(&self.host).await?;
            s.set_nodelay(true)?;
            self.stream = Some(BufReader::new(s));
        }
        let stream = self.stream.as_mut().context("connected")?;
        let mut head = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nAccept: application/json\r\n",
            self.host
        );
        if let Some(t) = &self.token {
            head.push_str(&format!("Authorization: Bearer {t}\r\n"));
        }
        let body = body.unwrap_or_default();
        if !body.is_empty() || method == "POST" {
            head.push_str(&format!(
                "Content-Type: application/json\r\nContent-Length: {}\r\n",
                body.len()
            ));
        }
        head.push_str("\r\n");
        let w = stream.get_mut();
        w.write_all(head.as_bytes()).await?;
        w.write_all(body).await?;
        let read = async {
            let mut line = String::new();
            stream.read_line(&mut line).await?;
            let status: u16 = line
                .split_whitespace()
                .nth(1)
                .and_then(|s| s.parse().ok())
                .context("malformed status line")?;
            let mut length = 0usize;
            let mut close = false;
            loop {
                line.clear();
                if stream.read_line(&mut line).await? == 0 {
                    bail!("connection closed in the headers");
                }
                let l = line.trim_end();
                if l.is_empty() {
                    break;
                }
                let lower = l.to_ascii_lowercase();
                if let Some(v) = lower.strip_prefix("content-length:") {
                    length = v.trim().parse().unwrap_or(0);
                }
                if lower.starts_with("connection:") && lower.contains("close") {
                    close = true;
                }
            }
            let mut body = vec![0; length];
            stream.read_exact(&mut body).await?;
            Ok::<_, anyhow::Error>((status, body, close))
        };
        let (status, body, close) = tokio::time::timeout(Duration::from_secs(60), read)
            .await
            .context("no response within 60 s")??;
        if close {
            self.stream = None;
        }
        Ok(Response { status, body })
    }
}
