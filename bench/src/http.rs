//! The bench's HTTP client: a `reqwest` client per simulated client (its
//! own keep-alive connection), behind the small interface the bench uses.
//! `BENCHMARKS.md` records what the client itself costs.

use std::time::Duration;

use anyhow::Context;

/// One simulated client: its own connection pool (one keep-alive
/// connection at a time, as it sends one request at a time).
pub struct Conn {
    base: String,
    client: reqwest::Client,
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
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .tcp_nodelay(true)
            .pool_max_idle_per_host(1)
            .build()
            .context("building the HTTP client")?;
        Ok(Conn {
            base: base.trim_end_matches('/').to_owned(),
            client,
            token,
        })
    }

    pub async fn request(
        &mut self,
        method: &str,
        path: &str,
        body: Option<&[u8]>,
    ) -> anyhow::Result<Response> {
        let method = reqwest::Method::from_bytes(method.as_bytes()).context("HTTP method")?;
        let mut req = self
            .client
            .request(method, format!("{}{path}", self.base))
            .header("Accept", "application/json");
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req
                .header("Content-Type", "application/json")
                .body(b.to_vec());
        }
        let res = req.send().await?;
        let status = res.status().as_u16();
        let body = res.bytes().await?.to_vec();
        Ok(Response { status, body })
    }
}
