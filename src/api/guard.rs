//! The guard every request passes before its handler (and before its body
//! is read): who calls (`Authorization`, verified), whether they may call
//! this route at all (`api::access`), the rate limits, a deadline for the
//! body, and the security headers of every answer.

use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use actix_web::body::MessageBody;
use actix_web::dev::{Payload, ServiceRequest, ServiceResponse};
use actix_web::error::PayloadError;
use actix_web::http::StatusCode;
use actix_web::http::header::{self, HeaderName, HeaderValue};
use actix_web::middleware::Next;
use actix_web::{FromRequest, HttpMessage, HttpRequest, ResponseError, web};
use futures_util::{Stream, StreamExt};

use super::access::{self, Denied};
use super::error::ApiError;
use super::limits::Limits;
use crate::auth::{Authenticator, Caller};
use crate::net::Proxies;

/// What the guard needs.
pub struct Guard {
    pub auth: Arc<Authenticator>,
    pub limits: Limits,
    pub proxies: Proxies,
    /// How long a client may take to send a request's body.
    pub body_timeout: Duration,
}

/// The guard, as middleware (`middleware::from_fn`).
pub async fn guard(
    mut req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let Some(guard) = req.app_data::<web::Data<Guard>>().cloned() else {
        return Err(ApiError::unavailable("the guard is not configured", 1).into());
    };
    // The path as the router matches it: percent-decoded (`/%6DyOrders` is
    // `/myOrders` to the router, so it is to the guard).
    let path = req.match_info().as_str().to_owned();
    if let Err(refusal) = admit(&guard, &path, &mut req) {
        crate::metrics::inc(&crate::metrics::METRICS.http_requests_refused_total);
        let (http, _) = req.into_parts();
        let mut res = refusal.error_response();
        secure(&path, res.headers_mut());
        return Ok(ServiceResponse::new(http, res).map_into_right_body());
    }
    let payload = req.take_payload();
    req.set_payload(Payload::Stream {
        payload: Box::pin(Deadline::new(payload, guard.body_timeout)),
    });
    let mut res = next.call(req).await?;
    secure(&path, res.headers_mut());
    Ok(res.map_into_left_body())
}

/// A refusal, answered before the handler runs.
struct Refusal {
    error: ApiError,
    /// `WWW-Authenticate`, on a 401.
    challenge: Option<&'static str>,
}

impl Refusal {
    fn error_response(&self) -> actix_web::HttpResponse {
        let mut res = self.error.error_response();
        if let Some(c) = self.challenge {
            res.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static(c));
        }
        res
    }
}

/// Authenticates, decides and counts; the caller goes into the request's
/// extensions for the handler.
fn admit(guard: &Guard, path: &str, req: &mut ServiceRequest) -> Result<(), Refusal> {
    let peer = req
        .peer_addr()
        .map_or(IpAddr::from([127, 0, 0, 1]), |a| a.ip());
    // Every `X-Forwarded-For` line, in order: a proxy that appends a line of
    // its own leaves the client's first; the last hops are the proxies'.
    let forwarded: Vec<&str> = req
        .headers()
        .get_all("X-Forwarded-For")
        .filter_map(|v| v.to_str().ok())
        .collect();
    let forwarded = forwarded.join(",");
    let client = crate::net::client_key(guard.proxies.client(peer, Some(&forwarded)));
    // The inspection page asks a browser for the token (Basic, the token as
    // password); everything else asks for a bearer token.
    let challenge = if path.starts_with("/ui") {
        "Basic realm=\"Hearty inspection\", charset=\"UTF-8\""
    } else {
        "Bearer realm=\"Hearty\""
    };
    let matched = req.resource_map().match_pattern(path);
    let pattern = matched.clone().unwrap_or_else(|| path.to_owned());
    let rule = access::rule_of(req.method(), &pattern);
    // Probes never authenticate: a balancer's checks carry no credential.
    let caller = if pattern.starts_with("/health/") {
        Caller::anonymous()
    } else {
        let header = req
            .headers()
            .get(header::AUTHORIZATION)
            .map(|v| v.to_str().unwrap_or("\u{0}"));
        let unauthorized = |detail: String| Refusal {
            error: ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", detail),
            challenge: Some(challenge),
        };
        // A browser sends Basic credentials it was once asked for to every
        // path of the site, from any page that makes it: they are taken
        // only where they are asked for, to read (no cross-site request
        // can act with them).
        let page = path.starts_with("/ui") || path.starts_with("/docs");
        if header.is_some_and(is_basic) && !(page && req.method() == actix_web::http::Method::GET) {
            return Err(unauthorized(
                "Basic credentials are taken only by the inspection page and the documentation \
                 (GET); send `Authorization: Bearer <token>`"
                    .into(),
            ));
        }
        let caller = guard
            .auth
            .authenticate(header)
            .map_err(|e| unauthorized(e.to_string()))?;
        // What goes on to the owners is a token of minutes, not the
        // caller's own (which may live for days, or for ever).
        guard
            .auth
            .for_owners(caller)
            .map_err(|e| unauthorized(e.to_string()))?
    };
    // An unknown path goes on to its 404, a method a route does not take to
    // its 405; a route without a row is the manager's only.
    let access = match rule {
        Some(rule) => Some(rule.access),
        None if matched.is_some() && !access::has_rules(&pattern) => Some(access::UNLISTED),
        None => None,
    };
    if let Some(access) = access {
        access.decide(&caller).map_err(|denied| match denied {
            Denied::Unauthenticated => Refusal {
                error: ApiError::new(
                    StatusCode::UNAUTHORIZED,
                    "unauthorized",
                    "sign in: send `Authorization: Bearer <token>`",
                ),
                challenge: Some(challenge),
            },
            Denied::Forbidden => Refusal {
                error: ApiError::new(
                    StatusCode::FORBIDDEN,
                    "forbidden",
                    format!("a {} may not do this", role_name(&caller)),
                ),
                challenge: None,
            },
        })?;
        if let Some(limit) = rule.and_then(|r| r.limit)
            && let Err(wait) = guard.limits.check(limit, &caller, client)
        {
            let secs = wait.as_secs().max(1);
            return Err(Refusal {
                error: ApiError {
                    retry_after: Some(secs),
                    ..ApiError::new(
                        StatusCode::TOO_MANY_REQUESTS,
                        "too_many_requests",
                        format!("too many requests; try again in {secs} s"),
                    )
                },
                challenge: None,
            });
        }
    }
    req.extensions_mut().insert(caller);
    Ok(())
}

/// Whether an `Authorization` header carries Basic credentials.
fn is_basic(header: &str) -> bool {
    header
        .trim_start()
        .get(..6)
        .is_some_and(|s| s.eq_ignore_ascii_case("basic "))
}

fn role_name(caller: &Caller) -> &'static str {
    match caller.who() {
        crate::auth::Who::Anonymous => "anonymous caller",
        crate::auth::Who::Customer { .. } => "customer",
        crate::auth::Who::Staff { role, .. } => role.as_str(),
    }
}

/// The security headers of every answer: nothing sniffed, framed or
/// referred; pages may run only their own scripts and styles.
fn secure(path: &str, headers: &mut header::HeaderMap) {
    let page = path.starts_with("/ui") || path.starts_with("/docs");
    let csp = if page {
        "default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; \
         img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; \
         form-action 'none'"
    } else {
        "default-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
    };
    for (name, value) in [
        (header::CONTENT_SECURITY_POLICY, csp),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::REFERRER_POLICY, "no-referrer"),
        (
            HeaderName::from_static("cross-origin-resource-policy"),
            "same-origin",
        ),
    ] {
        headers.insert(name, HeaderValue::from_static(value));
    }
    if !page {
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
}

/// The caller the guard admitted (anonymous where it did not run).
impl FromRequest for Caller {
    type Error = actix_web::Error;
    type Future = std::future::Ready<Result<Self, Self::Error>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let caller = req.extensions().get::<Caller>().cloned();
        std::future::ready(Ok(caller.unwrap_or_else(Caller::anonymous)))
    }
}

/// A request body that must arrive within a deadline: after it, the body
/// ends with a timeout (the extractor answers 408).
struct Deadline {
    inner: Payload,
    sleep: Pin<Box<tokio::time::Sleep>>,
    expired: bool,
}

impl Deadline {
    fn new(inner: Payload, within: Duration) -> Self {
        Deadline {
            inner,
            sleep: Box::pin(tokio::time::sleep(within)),
            expired: false,
        }
    }
}

impl Stream for Deadline {
    type Item = Result<actix_web::web::Bytes, PayloadError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.expired {
            return Poll::Ready(None);
        }
        if let Poll::Ready(item) = self.inner.poll_next_unpin(cx) {
            return Poll::Ready(item);
        }
        if self.sleep.as_mut().poll(cx).is_ready() {
            self.expired = true;
            let late = std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "the request body did not arrive in time",
            );
            return Poll::Ready(Some(Err(PayloadError::Io(late))));
        }
        Poll::Pending
    }
}
