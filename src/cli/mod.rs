//! The command line besides `serve`: `hearty sagas list|show` (saga
//! inspection from a terminal, against a running server, through the API's
//! own response types), `hearty token` (a staff member's token),
//! `hearty broker-users` (one RabbitMQ user per role) and `hearty backup` /
//! `hearty restore` (a live owner's folder).

pub mod backup;
mod broker_users;
mod token;

pub use broker_users::{BrokerUsers, broker_users};
pub use token::{MAX_STAFF_TTL, staff_token};

use anyhow::{Context, bail};
use serde::de::DeserializeOwned;

use crate::api::contract::responses::{ErrorBody, SagaView};
use crate::config::Secret;

/// A running server and the credential to call it with.
pub struct Server<'a> {
    pub url: &'a str,
    /// A manager's token.
    pub token: Option<&'a Secret>,
}

/// `GET url`, decoded as `T`; a 4xx or 5xx is an error with the server's
/// detail.
fn get_json<T: DeserializeOwned>(server: &Server<'_>, path: &str) -> anyhow::Result<T> {
    let url = format!("{}{path}", server.url.trim_end_matches('/'));
    let mut req = reqwest::blocking::Client::builder()
        .timeout(std::time::Duration::from_secs(30))
        .build()?
        .get(&url)
        .header("Accept", "application/json");
    if let Some(t) = server.token {
        req = req.bearer_auth(t.expose());
    }
    let res = req.send().with_context(|| format!("requesting {url}"))?;
    let status = res.status();
    let body = res.bytes().with_context(|| format!("reading {url}"))?;
    if status.is_client_error() || status.is_server_error() {
        let detail = serde_json::from_slice::<ErrorBody>(&body)
            .map(|e| e.detail)
            .unwrap_or_else(|_| String::from_utf8_lossy(&body).into_owned());
        bail!("{url}: {status} {detail}");
    }
    serde_json::from_slice(&body).with_context(|| format!("{url} did not answer a saga"))
}

fn text<T: std::fmt::Display>(v: Option<T>) -> String {
    v.map_or_else(|| "-".into(), |v| v.to_string())
}

/// `hearty sagas list`: one line per saga.
pub fn sagas_list(server: &Server<'_>, state: Option<&str>, limit: u32) -> anyhow::Result<String> {
    let mut path = format!("/sagas?limit={limit}");
    if let Some(s) = state {
        path.push_str(&format!("&state={s}"));
    }
    let sagas: Vec<SagaView> = get_json(server, &path)?;
    let mut out = format!(
        "{:>8}  {:<13} {:<11} {:<10} {}\n",
        "ID", "STATE", "ORDER", "STEP", "REASON"
    );
    for s in sagas {
        out.push_str(&format!(
            "{:>8}  {:<13} {:<11} {:<10} {}\n",
            s.id,
            s.state.as_str(),
            text(s.order_status),
            text(s.current_step),
            s.reason.unwrap_or_default()
        ));
    }
    Ok(out)
}

/// `hearty sagas show ID`: why a saga is where it is.
pub fn sagas_show(server: &Server<'_>, id: &str) -> anyhow::Result<String> {
    let s: SagaView = get_json(server, &format!("/sagas/{id}"))?;
    let (name, version) = s
        .definition
        .as_ref()
        .map_or(("-".to_owned(), 0), |d| (d.name.clone(), d.version));
    let mut out = format!(
        "saga {} ({name} v{version}): {}, order {}\n",
        s.id,
        s.state.as_str(),
        text(s.order_status)
    );
    if let Some(r) = &s.reason {
        out.push_str(&format!("reason: {r}\n"));
    }
    if let Some(Some(w)) = &s.waiting_on {
        out.push_str(&format!(
            "waiting on: {} ({}) since {}, attempt {}, next retry {}, last error {}\n",
            w.step,
            w.direction,
            text(w.since.as_ref()),
            w.attempts,
            text(w.next_attempt_at.as_ref()),
            text(w.last_error.as_ref())
        ));
    }
    out.push_str("\nsteps:\n");
    for st in &s.steps {
        out.push_str(&format!(
            "  {:<9} {:<13} attempts {:<3} started {:<25} finished {:<25} {}\n",
            st.name,
            format!("{:?}", st.status),
            st.attempts,
            text(st.started_at.as_ref()),
            text(st.finished_at.as_ref()),
            st.error.as_deref().unwrap_or("")
        ));
    }
    let in_flight = s.in_flight.unwrap_or_default();
    if !in_flight.is_empty() {
        out.push_str("\nmessages in flight:\n");
        for m in in_flight {
            out.push_str(&format!("  {} → {}\n", m.message_id, text(m.queue)));
        }
    }
    out.push_str("\nhistory:\n");
    for h in s.history.unwrap_or_default() {
        let what = match (h.from, &h.step) {
            (Some(from), _) => format!("{} → {}", from.as_str(), h.to.as_str()),
            (None, Some(step)) => {
                format!("{step} {}", text(h.step_status.map(|s| format!("{s:?}"))))
            }
            _ => h.to.as_str().to_owned(),
        };
        let by = h.by.map(|b| format!(" (by {b})")).unwrap_or_default();
        out.push_str(&format!(
            "  {}  {:<32} {:<30} {}{by}\n",
            h.at,
            h.event,
            what,
            h.detail.unwrap_or_default()
        ));
    }
    Ok(out)
}
