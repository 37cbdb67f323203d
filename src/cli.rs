//! The operator commands of the `hearty` binary besides `serve`:
//! `hearty sagas list|show` (against a running server) and
//! `hearty views rebuild` (against a data folder).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use anyhow::{Context, bail};
use serde_json::Value;

/// `GET url` over plain HTTP/1.1; answers the status and the body.
pub fn http_get(url: &str) -> anyhow::Result<(u16, String)> {
    let rest = url
        .strip_prefix("http://")
        .context("only http:// URLs are supported")?;
    let (host, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let mut stream = TcpStream::connect(host).with_context(|| format!("connecting to {host}"))?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nAccept: application/json\r\nConnection: close\r\n\r\n"
    )?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .context("malformed HTTP response")?;
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .context("malformed HTTP status line")?;
    let chunked = head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked");
    let body = if chunked {
        dechunk(body)
    } else {
        body.to_owned()
    };
    Ok((status, body))
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        body = rest[n..].trim_start_matches("\r\n");
    }
    out
}

fn get_json(url: &str) -> anyhow::Result<Value> {
    let (status, body) = http_get(url)?;
    let v: Value =
        serde_json::from_str(&body).with_context(|| format!("{url} did not answer JSON"))?;
    if status >= 400 {
        bail!(
            "{url}: {status} {}",
            v["detail"]
                .as_str()
                .unwrap_or(v["error"].as_str().unwrap_or(""))
        );
    }
    Ok(v)
}

fn text(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// `hearty sagas list`: one line per saga.
pub fn sagas_list(base: &str, state: Option<&str>, limit: u32) -> anyhow::Result<String> {
    let mut url = format!("{}/sagas?limit={limit}", base.trim_end_matches('/'));
    if let Some(s) = state {
        url.push_str(&format!("&state={s}"));
    }
    let sagas = get_json(&url)?;
    let mut out = format!(
        "{:>8}  {:<13} {:<11} {:<10} {}\n",
        "ID", "STATE", "ORDER", "STEP", "REASON"
    );
    for s in sagas.as_array().into_iter().flatten() {
        out.push_str(&format!(
            "{:>8}  {:<13} {:<11} {:<10} {}\n",
            text(&s["id"]),
            text(&s["state"]),
            text(&s["orderStatus"]),
            text(&s["currentStep"]),
            s["reason"].as_str().unwrap_or("")
        ));
    }
    Ok(out)
}

/// `hearty sagas show ID`: why a saga is where it is.
pub fn sagas_show(base: &str, id: &str) -> anyhow::Result<String> {
    let s = get_json(&format!("{}/sagas/{id}", base.trim_end_matches('/')))?;
    let mut out = format!(
        "saga {} ({} v{}): {}, order {}\n",
        text(&s["id"]),
        text(&s["definition"]["name"]),
        text(&s["definition"]["version"]),
        text(&s["state"]),
        text(&s["orderStatus"])
    );
    if let Some(r) = s["reason"].as_str() {
        out.push_str(&format!("reason: {r}\n"));
    }
    if let Some(w) = s["waitingOn"].as_object() {
        out.push_str(&format!(
            "waiting on: {} ({}) since {}, attempt {}, next retry {}, last error {}\n",
            text(&w["step"].clone()),
            text(&w["direction"].clone()),
            text(&w["since"].clone()),
            text(&w["attempts"].clone()),
            text(&w["nextAttemptAt"].clone()),
            text(&w["lastError"].clone())
        ));
    }
    out.push_str("\nsteps:\n");
    for st in s["steps"].as_array().into_iter().flatten() {
        out.push_str(&format!(
            "  {:<9} {:<13} attempts {:<3} started {:<25} finished {:<25} {}\n",
            text(&st["name"]),
            text(&st["status"]),
            text(&st["attempts"]),
            text(&st["startedAt"]),
            text(&st["finishedAt"]),
            st["error"].as_str().unwrap_or("")
        ));
    }
    let in_flight = s["inFlight"].as_array().cloned().unwrap_or_default();
    if !in_flight.is_empty() {
        out.push_str("\nmessages in flight:\n");
        for m in in_flight {
            out.push_str(&format!(
                "  {} → {}\n",
                text(&m["messageId"]),
                text(&m["queue"])
            ));
        }
    }
    out.push_str("\nhistory:\n");
    for h in s["history"].as_array().into_iter().flatten() {
        let what = match (&h["from"], &h["step"]) {
            (Value::String(from), _) => format!("{from} → {}", text(&h["to"])),
            (_, Value::String(step)) => format!("{step} {}", text(&h["stepStatus"])),
            _ => text(&h["to"]),
        };
        out.push_str(&format!(
            "  {}  {:<32} {:<30} {}\n",
            text(&h["at"]),
            text(&h["event"]),
            what,
            h["detail"].as_str().unwrap_or("")
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::dechunk;

    #[test]
    fn chunked_bodies() {
        assert_eq!(dechunk("4\r\nWiki\r\n5\r\npedia\r\n0\r\n\r\n"), "Wikipedia");
    }
}
