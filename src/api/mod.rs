//! The REST API (actix-web). Paths and field names follow PRODUCT.md; every
//! error is a JSON `{error, detail}` with a 4xx status for the caller's
//! mistakes.

pub mod access;
mod catalog;
pub mod contract;
mod customers;
mod docs;
pub mod error;
pub mod guard;
mod known;
pub use known::{FOOD_ANSWER_TTL, KNOWN_CUSTOMERS, KnownCustomers, KnownFoods};
mod limits;
pub use limits::Limits;
mod ops;
pub use ops::Probes;
mod orders;
mod outcome;
mod placing;
mod records;
mod reviews;
mod sagas;
mod ui;

use std::sync::Arc;
use std::time::Duration;

use actix_web::dev::HttpServiceFactory;
use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};

use crate::auth::{Authenticator, Caller};
use crate::cluster::owners::{AskError, Keyed, Owners, Protocol};
use crate::orchestrator::requests::{OrchestratorProtocol, Outcome, Request};
use crate::partition::OwnerRole;
use crate::saga::breaker::Breakers;
use crate::saga::definition::SagaDefinition;
use crate::storage::{Db, Page};
use crate::transport::Transport;
use crate::workers::requests::WorkerProtocol;
use error::ApiError;

/// The orchestrator's role, as the owner client names it.
const ORCHESTRATOR: OwnerRole = OwnerRole::Orchestrator;

/// What every handler can reach.
pub struct ApiState {
    /// The owners of the orchestrator's partitions (this process, or others
    /// over request/reply): sagas, orders, customers, reviews.
    pub orchestrators: Owners<OrchestratorProtocol>,
    /// The owners of the workers' partitions (this process, or others over
    /// request/reply): the workers' records and the food catalog.
    pub workers: Owners<WorkerProtocol>,
    /// The saga definition, to show sagas' steps.
    pub def: Arc<SagaDefinition>,
    /// Verifies callers and issues customers' tokens.
    pub auth: Arc<Authenticator>,
    /// How long a customer's token is valid.
    pub customer_token_ttl: Duration,
    /// How long `POST /orders` waits for the payment.
    pub order_timeout: Duration,
    /// The read models' databases.
    pub views: ViewDbs,
    /// The namespace's names, to name queues in inspection output.
    pub topology: crate::transport::Topology,
    /// Base URL of the RabbitMQ management UI, for links.
    pub management_url: String,
    /// Customers their owners have confirmed (an order checks its customer
    /// once per process, not once per order).
    pub known_customers: Arc<KnownCustomers>,
    /// The kitchen's latest answers about foods (for a second).
    pub known_foods: Arc<KnownFoods>,
}

/// The read models' databases, read by the API.
#[derive(Clone)]
pub struct ViewDbs {
    pub my_orders: Db,
    pub catalog: Db,
    pub reviews: Db,
}

impl ApiState {
    /// Asks the owner of the partition of `key` (an order's, a saga's or a
    /// customer's id).
    async fn ask_orchestrator(
        &self,
        caller: &Caller,
        key: i64,
        request: Request,
    ) -> Result<Outcome, AskError> {
        let at = self.orchestrators.partition_of(key);
        self.orchestrators
            .one(ORCHESTRATOR, at, caller, request)
            .await
    }

    /// Creates something any orchestrator owner may take (a customer, a
    /// review): the next partition whose owner is there.
    async fn create(&self, caller: &Caller, request: Request) -> Result<Outcome, ApiError> {
        let make = |_| request.clone();
        let created = self
            .orchestrators
            .anywhere(ORCHESTRATOR, caller, make)
            .await;
        created.map_err(|unanswered| unanswered.error.into())
    }
}

/// The JSON body extractor settings: size limit and JSON errors.
pub fn json_config() -> web::JsonConfig {
    web::JsonConfig::default()
        .limit(64 * 1024)
        .content_type_required(true)
        .content_type(|mime| mime.subtype() == "json" || mime.suffix().is_some_and(|s| s == "json"))
        .error_handler(|err, _req| {
            use actix_web::error::JsonPayloadError as E;
            let api = match &err {
                E::OverflowKnownLength { .. } | E::Overflow { .. } => ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "payload_too_large",
                    "the body is larger than 64 KiB",
                ),
                E::Payload(actix_web::error::PayloadError::Io(e))
                    if e.kind() == std::io::ErrorKind::TimedOut =>
                {
                    ApiError::new(
                        StatusCode::REQUEST_TIMEOUT,
                        "request_timeout",
                        "the body did not arrive in time",
                    )
                }
                E::ContentType => ApiError::new(
                    StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    "unsupported_media_type",
                    "send a JSON body",
                ),
                E::Deserialize(e) if e.is_data() => {
                    ApiError::bad_request(format!("the body does not fit the schema: {e}"))
                }
                other => ApiError::bad_request(format!("malformed JSON: {other}")),
            };
            api.into()
        })
}

/// Query-string errors as JSON.
pub fn query_config() -> web::QueryConfig {
    web::QueryConfig::default()
        .error_handler(|err, _req| ApiError::bad_request(format!("bad query string: {err}")).into())
}

/// Path errors as JSON (an id that is not a number).
pub fn path_config() -> web::PathConfig {
    web::PathConfig::default()
        .error_handler(|err, _req| ApiError::not_found(format!("no such resource: {err}")).into())
}

/// An id of a path as a domain id; one that cannot be (0) names nothing.
fn path_id<T>(
    raw: i64,
    what: &str,
    make: impl Fn(i64) -> Result<T, crate::domain::DomainError>,
) -> Result<T, ApiError> {
    make(raw).map_err(|_| ApiError::not_found(format!("no {what} `{raw}`")))
}

async fn not_found(req: HttpRequest) -> Result<HttpResponse, ApiError> {
    Err(ApiError::not_found(format!(
        "no route {} {}",
        req.method(),
        req.path()
    )))
}

/// A 405 answer that says, as RFC 9110 requires, which methods the
/// resource allows.
fn method_not_allowed(req: &HttpRequest, allow: &'static str) -> HttpResponse {
    let error = ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!(
            "{} is not allowed on {}; allowed: {allow}",
            req.method(),
            req.path()
        ),
    );
    let mut res = actix_web::ResponseError::error_response(&error);
    res.headers_mut().insert(
        actix_web::http::header::ALLOW,
        actix_web::http::header::HeaderValue::from_static(allow),
    );
    res
}

/// A resource allowing the methods in `allow` (as its routes do); any other
/// method answers 405 JSON with `Allow`.
pub(crate) fn resource(path: &str, allow: &'static str) -> actix_web::Resource {
    web::resource(path).default_service(web::to(move |req: HttpRequest| async move {
        method_not_allowed(&req, allow)
    }))
}

/// Every route of the business API.
pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.app_data(json_config())
        .app_data(query_config())
        .app_data(path_config())
        .service(business())
        .service(records())
        .service(more_records())
        .service(reviews_and_ui())
        .configure(docs::routes)
        .service(ops::routes());
}

fn business() -> impl HttpServiceFactory {
    (
        resource("/customers", "POST, GET")
            .route(web::post().to(customers::create_customer))
            .route(web::get().to(customers::list_customers)),
        resource("/customers/{id}", "GET").route(web::get().to(customers::get_customer)),
        resource("/foodCatalogs", "POST, GET")
            .route(web::post().to(catalog::create_food))
            .route(web::get().to(catalog::list_foods)),
        resource("/foodCatalogs/{id}", "GET").route(web::get().to(catalog::get_food)),
        // The seed checks stock with `http DELETE /foodCatalogViews`: read
        // models are never deleted over HTTP, so DELETE reads it too.
        resource("/foodCatalogViews", "GET, DELETE")
            .route(web::get().to(catalog::food_views))
            .route(web::delete().to(catalog::seed_delete_food_views)),
        resource("/orders", "POST, GET")
            .route(web::post().to(orders::place))
            .route(web::get().to(orders::list)),
        resource("/orders/{id}", "GET").route(web::get().to(orders::get)),
        resource("/myOrders", "GET").route(web::get().to(orders::my_orders)),
    )
}

fn records() -> impl HttpServiceFactory {
    (
        resource("/pays", "GET").route(web::get().to(records::list_pays)),
        resource("/pays/{id}", "GET").route(web::get().to(records::get_pay)),
        resource("/kitchens", "GET").route(web::get().to(records::list_kitchens)),
        // The seed's gateway list spells it `/kithens`.
        resource("/kithens", "GET").route(web::get().to(records::list_kitchens)),
        resource("/kitchens/{id}", "GET, DELETE")
            .route(web::get().to(records::get_kitchen))
            .route(web::delete().to(orders::cancel)),
        resource("/kitchens/{id}/cooked", "POST").route(web::post().to(orders::cooked)),
    )
}

fn more_records() -> impl HttpServiceFactory {
    (
        resource("/deliveries", "GET").route(web::get().to(records::list_deliveries)),
        resource("/deliveries/{id}", "GET").route(web::get().to(records::get_delivery)),
        resource("/deliveries/{id}/pickedUp", "POST").route(web::post().to(orders::picked_up)),
        resource("/deliveries/{id}/delivered", "POST").route(web::post().to(orders::delivered)),
        resource("/coupons", "GET").route(web::get().to(records::list_coupons)),
        resource("/coupons/{id}", "GET").route(web::get().to(records::get_coupon)),
        resource("/sagas", "GET").route(web::get().to(sagas::list)),
        resource("/sagas/{id}", "GET").route(web::get().to(sagas::get)),
        resource("/sagas/{id}/retry", "POST").route(web::post().to(sagas::retry)),
    )
}

fn reviews_and_ui() -> impl HttpServiceFactory {
    (
        resource("/reviews", "POST, GET")
            .route(web::post().to(reviews::create_review))
            .route(web::get().to(reviews::list_reviews)),
        resource("/reviewViews", "GET").route(web::get().to(reviews::review_views)),
        // The seed spells it `/reviewView`.
        resource("/reviewView", "GET").route(web::get().to(reviews::review_views)),
        resource("/ui", "GET").route(web::get().to(ui::page)),
        resource("/ui/", "GET").route(web::get().to(ui::page)),
        resource("/ui/config.json", "GET").route(web::get().to(ui::config)),
        // The page's own paths to the sagas: a browser sends the credentials
        // it was asked for at `/ui` (Basic) to these too.
        resource("/ui/sagas", "GET").route(web::get().to(sagas::list)),
        resource("/ui/sagas/{id}", "GET").route(web::get().to(sagas::get)),
    )
}

/// The fallback of the whole app: unknown paths answer 404 JSON.
pub fn fallback() -> actix_web::Route {
    web::to(not_found)
}

/// A page of a list that every owner of `role` holds a part of, each row
/// shown as `V`; an owner that refuses the caller is a 403.
async fn listed<P: Protocol, T: Keyed, V: From<T> + serde::Serialize>(
    owners: &Owners<P>,
    role: OwnerRole,
    caller: &Caller,
    request: impl Fn(Page) -> P::Request,
    rows: impl Fn(P::Outcome) -> Option<Vec<T>>,
    page: Page,
) -> Result<HttpResponse, ApiError> {
    let page = visible(caller, page)?;
    match owners.page(role, caller, request, rows, page).await {
        Ok(list) => Ok(ok_json(&list.into_iter().map(V::from).collect::<Vec<_>>())),
        Err(AskError::Unexpected(_)) => Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "this list is not for this caller",
        )),
        Err(e) => Err(e.into()),
    }
}

/// The most rows one answer gives a caller who is not staff: a page
/// cannot be turned into a 100 MB answer.
pub const PUBLIC_PAGE: i64 = 100;

/// The deepest a caller who is not staff may page: every owner answers a
/// deep page's rows before it (to merge them), so a deep offset would make
/// one anonymous request cost every owner a large answer.
pub const PUBLIC_MAX_OFFSET: i64 = 1_000;

/// The page a query asks for (`limit`, `offset`; 400 if out of range), no
/// longer than `caller` may have.
fn visible_page(
    caller: &Caller,
    limit: Option<i64>,
    offset: Option<i64>,
) -> Result<Page, ApiError> {
    let asked = contract::requests::page(limit, offset).map_err(ApiError::bad_request)?;
    visible(caller, asked)
}

/// `page`, no longer nor deeper than a caller who is not staff may ask for
/// (a longer one is cut, a deeper one refused).
fn visible(caller: &Caller, page: Page) -> Result<Page, ApiError> {
    if caller.staff().is_some() {
        return Ok(page);
    }
    if page.offset > PUBLIC_MAX_OFFSET {
        return Err(ApiError::bad_request(format!(
            "`offset` may be at most {PUBLIC_MAX_OFFSET} (staff may page deeper)"
        )));
    }
    Ok(Page {
        limit: page.limit.min(PUBLIC_PAGE),
        ..page
    })
}

/// Plain JSON 200.
pub fn ok_json<T: serde::Serialize>(v: &T) -> HttpResponse {
    HttpResponse::Ok().json(v)
}

/// Readiness probes of a process.
pub fn ops_probes(
    dbs: Vec<Db>,
    transport: Arc<dyn Transport>,
    breakers: Breakers,
    draining: Arc<std::sync::atomic::AtomicBool>,
    caught_up: Option<Arc<std::sync::atomic::AtomicBool>>,
) -> ops::Probes {
    ops::Probes {
        dbs,
        transport,
        breakers,
        draining,
        caught_up,
    }
}

/// The routes of a process without the `api` role: health and metrics.
pub fn ops_only(cfg: &mut web::ServiceConfig) {
    cfg.service(ops::routes());
}
