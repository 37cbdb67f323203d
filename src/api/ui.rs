//! The saga inspection page: one embedded HTML file (no CDN, no build step)
//! that polls the JSON API.

use actix_web::{HttpResponse, web};
use serde_json::json;

use super::ApiState;

const PAGE: &str = include_str!("ui.html");

pub async fn page() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        .insert_header(("Cache-Control", "no-cache"))
        .body(PAGE)
}

/// What the page needs to link to the broker's management UI.
pub async fn config(state: web::Data<ApiState>) -> HttpResponse {
    HttpResponse::Ok().json(json!({
        "namespace": state.topology.namespace,
        "managementUrl": state.management_url,
    }))
}
