//! Customers: signing up, and reading them.

use actix_web::{HttpResponse, web};

use super::contract::requests::{IdPath, NewCustomer as NewCustomerBody, PageQuery, page};
use super::contract::responses::{CustomerRecord, ErrorBody, SignedUp};
use super::error::ApiError;
use super::{ApiState, ORCHESTRATOR, listed, ok_json, outcome, path_id};
use crate::auth::Caller;
use crate::domain::{CustomerId, Millis};
use crate::orchestrator::requests::{Outcome, Request};
use crate::orchestrator::store::customers::NewCustomer;

type State = web::Data<ApiState>;

/// Registers a customer.
#[utoipa::path(
    post,
    path = "/customers",
    operation_id = "createCustomer",
    tag = "customers",
    request_body = NewCustomerBody,
    responses(
        (status = 201, description = "created, with the customer's token", body = SignedUp,
            links(("GetCustomer" = (operation_id = "getCustomer", parameters(("id" = "$response.body#/id")))))),
        (status = 400, description = "the body does not fit the schema", body = ErrorBody),
        (status = 413, description = "body larger than 64 KiB", body = ErrorBody),
        (status = 415, description = "not JSON", body = ErrorBody),
        (status = 503, description = "storage unavailable", body = ErrorBody),
    )
)]
pub async fn create_customer(
    state: State,
    caller: Caller,
    body: web::Json<NewCustomerBody>,
) -> Result<HttpResponse, ApiError> {
    let c = body.into_inner();
    c.check().map_err(ApiError::bad_request)?;
    let customer = NewCustomer {
        age: c.age.map(|a| a.0),
        phone: c.phone.unwrap_or_default(),
        address: c.address.unwrap_or_default(),
        name: c.name,
    };
    // Any partition's owner takes a new customer, with an id of its own.
    let created = match state
        .create(&caller, Request::CreateCustomer { customer })
        .await?
    {
        Outcome::Customer(c) => c,
        other => return Err(outcome::other(other, "customer")),
    };
    // The customer's credential: with it they order, and read what is theirs.
    let issued = state
        .auth
        .customer_token(created.id, &created.name, state.customer_token_ttl)
        .map_err(|e| ApiError::unavailable(e.to_string(), 1))?;
    Ok(HttpResponse::Created().json(SignedUp {
        customer: CustomerRecord::from(created),
        token: issued.token.expose().to_owned(),
        token_expires_at: Millis(i64::try_from(issued.expires_at).unwrap_or(i64::MAX) * 1000)
            .to_rfc3339(),
    }))
}

/// Customers, by id.
#[utoipa::path(
    get,
    path = "/customers",
    operation_id = "listCustomers",
    tag = "customers",
    params(PageQuery),
    responses(
        (status = 200, description = "customers ordered by id", body = [CustomerRecord]),
        (status = 400, description = "bad query", body = ErrorBody),
        (status = 503, description = "storage unavailable", body = ErrorBody),
    )
)]
pub async fn list_customers(
    state: State,
    caller: Caller,
    q: web::Query<PageQuery>,
) -> Result<HttpResponse, ApiError> {
    let page = page(q.limit, q.offset).map_err(ApiError::bad_request)?;
    let rows = Outcome::customers;
    let request = |page| Request::Customers { page };
    listed::<_, _, CustomerRecord>(
        &state.orchestrators,
        ORCHESTRATOR,
        &caller,
        request,
        rows,
        page,
    )
    .await
}

/// One customer.
#[utoipa::path(
    get,
    path = "/customers/{id}",
    operation_id = "getCustomer",
    tag = "customers",
    params(IdPath),
    responses(
        (status = 200, description = "the customer", body = CustomerRecord),
        (status = 404, description = "no such customer", body = ErrorBody),
        (status = 503, description = "storage unavailable", body = ErrorBody),
    )
)]
pub async fn get_customer(
    state: State,
    caller: Caller,
    path: web::Path<IdPath>,
) -> Result<HttpResponse, ApiError> {
    let id = path_id(path.id, "customer", CustomerId::new)?;
    let asked = Request::Customer { customer: id };
    match state.ask_orchestrator(&caller, id.get(), asked).await? {
        Outcome::Customer(c) => Ok(ok_json(&CustomerRecord::from(c))),
        other => Err(outcome::other(other, &format!("customer {id}"))),
    }
}
