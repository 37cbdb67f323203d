//! The OpenAPI document of the HTTP API (`/openapi.json`) and Swagger UI
//! (`/docs/`), both embedded: nothing is fetched at build or run time.

use std::sync::OnceLock;

use actix_web::{HttpResponse, web};
use utoipa::openapi::OpenApi;
use utoipa_swagger_ui::SwaggerUi;

const DOCUMENT: &str = include_str!("openapi.json");

/// The parsed document (checked by a unit test, so parsing cannot fail).
pub fn document() -> OpenApi {
    static DOC: OnceLock<OpenApi> = OnceLock::new();
    DOC.get_or_init(|| {
        // The embedded file is valid: `the_document_parses` checks it.
        serde_json::from_str(DOCUMENT).unwrap_or_else(|e| panic!("embedded openapi.json: {e}"))
    })
    .clone()
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
    fn the_document_parses_and_names_every_path() {
        let doc: OpenApi = serde_json::from_str(DOCUMENT).expect("valid OpenAPI");
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
    }
}
