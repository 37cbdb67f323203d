//! The OpenAPI document of the HTTP API (`/openapi.json`), derived from the
//! handlers' `#[utoipa::path]` attributes and the contract types, and Swagger
//! UI (`/docs/`), both embedded: nothing is fetched at build or run time.

use std::sync::OnceLock;

use actix_web::{HttpResponse, web};
use utoipa::openapi::OpenApi as Document;
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityRequirement, SecurityScheme};
use utoipa::openapi::{ContentBuilder, Ref, RefOr, Response, ResponseBuilder};
use utoipa::{Modify, OpenApi};
use utoipa_swagger_ui::SwaggerUi;

use super::contract::lenient::{IdField, QtyField};
use super::contract::responses::ErrorBody;
use super::{catalog, customers, ops, orders, records, reviews, sagas};

/// Bearer tokens: a customer's (answered at sign-up), a staff member's
/// (`hearty token`), or the manager's static one (`HEARTY_MANAGER_TOKEN`).
/// Which callers each operation takes is `api::access`; an operation the
/// anonymous may call lists an empty requirement too.
struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, doc: &mut Document) {
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
        );
        for (path, item) in doc.paths.paths.iter_mut() {
            for (method, op) in [
                ("GET", item.get.as_mut()),
                ("POST", item.post.as_mut()),
                ("DELETE", item.delete.as_mut()),
            ] {
                let (Some(op), Some(rule)) = (
                    op,
                    super::access::RULES
                        .iter()
                        .find(|r| r.path == path && r.method == method),
                ) else {
                    continue;
                };
                op.security = Some(security_of(&rule.access));
                for (status, what) in guard_answers(rule, op.request_body.is_some()) {
                    op.responses
                        .responses
                        .entry(status.to_owned())
                        .or_insert_with(|| error_response(what));
                }
            }
        }
    }
}

/// What the guard may answer before an operation runs (`api::guard`): 401
/// for a missing or bad credential, 403 for a role without the right, 429
/// over a rate limit, 408 for a body that does not arrive in time.
fn guard_answers(rule: &super::access::Rule, has_body: bool) -> Vec<(&'static str, &'static str)> {
    let mut answers = Vec::new();
    if rule.path.starts_with("/health/") {
        return answers;
    }
    answers.push(("401", "no credential where one is needed, or a bad one"));
    let a = &rule.access;
    let everyone = [a.anonymous, a.customer, a.kitchen, a.delivery, a.manager]
        .iter()
        .all(|x| *x != super::access::Allow::No);
    if !everyone {
        answers.push(("403", "the caller's role may not do this"));
    }
    if rule.limit.is_some() {
        answers.push(("429", "over a rate limit; Retry-After"));
    }
    if has_body {
        answers.push(("408", "the body did not arrive in time"));
    }
    answers
}

fn error_response(description: &str) -> RefOr<Response> {
    let content = ContentBuilder::new()
        .schema(Some(Ref::from_schema_name("ErrorBody")))
        .build();
    RefOr::T(
        ResponseBuilder::new()
            .description(description)
            .content("application/json", content)
            .build(),
    )
}

/// The security requirements of an operation: the bearer scheme, or none
/// where anonymous callers are welcome too.
fn security_of(access: &super::access::Access) -> Vec<SecurityRequirement> {
    let mut requirements = vec![SecurityRequirement::new::<&str, [&str; 0], &str>(
        "bearer",
        [],
    )];
    if access.anonymous != super::access::Allow::No {
        requirements.push(SecurityRequirement::default());
    }
    requirements
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Hearty",
        description = "Breakfast orders run as sagas (pay → kitchen → delivery → coupon) by one orchestrator actor per order. Numbers in request bodies may be sent as strings of digits, as httpie does. Errors are `{error, detail}`; 400 means the request does not fit this document, 422 that it fits but names something that does not exist (or a total too large), 409 that the order's state refuses it.",
        license(name = "MIT")
    ),
    paths(
        customers::create_customer,
        customers::list_customers,
        customers::get_customer,
        catalog::create_food,
        catalog::list_foods,
        catalog::get_food,
        catalog::food_views,
        catalog::seed_delete_food_views,
        orders::place,
        orders::list,
        orders::get,
        orders::my_orders,
        orders::cancel,
        orders::cooked,
        orders::picked_up,
        orders::delivered,
        records::list_pays,
        records::get_pay,
        records::list_kitchens,
        records::get_kitchen,
        records::list_deliveries,
        records::get_delivery,
        records::list_coupons,
        records::get_coupon,
        reviews::create_review,
        reviews::list_reviews,
        reviews::review_views,
        sagas::list,
        sagas::get,
        sagas::retry,
        ops::live,
        ops::ready,
        ops::metrics,
    ),
    components(schemas(ErrorBody, IdField, QtyField)),
    modifiers(&BearerAuth)
)]
struct ApiDoc;

/// The document, built once.
pub fn document() -> Document {
    static DOC: OnceLock<Document> = OnceLock::new();
    DOC.get_or_init(ApiDoc::openapi).clone()
}

/// Swagger UI at `/docs/`, serving the document at `/docs/openapi.json`
/// (where a browser sends the credentials it was asked for at `/docs`).
pub fn swagger() -> SwaggerUi {
    SwaggerUi::new("/docs/{_:.*}").url("/docs/openapi.json", document())
}

/// `/openapi.json`: the document.
pub async fn openapi() -> HttpResponse {
    HttpResponse::Ok().json(document())
}

/// `/docs` → `/docs/`.
pub async fn redirect() -> HttpResponse {
    HttpResponse::PermanentRedirect()
        .insert_header(("Location", "/docs/"))
        .finish()
}

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(super::resource("/docs", "GET").route(web::get().to(redirect)))
        .service(super::resource("/openapi.json", "GET").route(web::get().to(openapi)))
        .service(swagger());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_document_names_every_path_and_resolves_every_reference() {
        let doc = document();
        for path in [
            "/orders",
            "/kitchens/{id}",
            "/sagas/{id}",
            "/myOrders",
            "/reviewViews",
            "/health/ready",
        ] {
            assert!(doc.paths.paths.contains_key(path), "{path}");
        }
        let text = serde_json::to_string(&doc).expect("serializes");
        let schemas = doc
            .components
            .as_ref()
            .map(|c| &c.schemas)
            .expect("components");
        for part in text.split("\"$ref\":\"#/components/schemas/").skip(1) {
            let name = part.split('"').next().unwrap_or("");
            assert!(schemas.contains_key(name), "unresolved reference to {name}");
        }
    }
}
