//! The OpenAPI document of the HTTP API (`/openapi.json`), derived from the
//! handlers' `#[utoipa::path]` attributes and the contract types, and Swagger
//! UI (`/docs/`), both embedded: nothing is fetched at build or run time.

use std::sync::OnceLock;

use actix_web::{HttpResponse, web};
use utoipa::openapi::OpenApi as Document;
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::{Modify, OpenApi};
use utoipa_swagger_ui::SwaggerUi;

use super::contract::lenient::{IdField, QtyField};
use super::contract::responses::ErrorBody;
use super::{catalog, customers, ops, orders, records, reviews, sagas};

/// The manager's bearer token (`HEARTY_MANAGER_TOKEN`).
struct ManagerAuth;

impl Modify for ManagerAuth {
    fn modify(&self, doc: &mut Document) {
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "manager",
            SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
        );
    }
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
    modifiers(&ManagerAuth)
)]
struct ApiDoc;

/// The document, built once.
pub fn document() -> Document {
    static DOC: OnceLock<Document> = OnceLock::new();
    DOC.get_or_init(ApiDoc::openapi).clone()
}

/// Swagger UI at `/docs/`, serving the document at `/openapi.json`.
pub fn swagger() -> SwaggerUi {
    SwaggerUi::new("/docs/{_:.*}").url("/openapi.json", document())
}

/// `/docs` → `/docs/`.
pub async fn redirect() -> HttpResponse {
    HttpResponse::PermanentRedirect()
        .insert_header(("Location", "/docs/"))
        .finish()
}

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(super::resource("/docs", "GET").route(web::get().to(redirect)))
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
