//! Request bodies and query strings, as the API takes them. Each is parsed
//! whole by serde (unknown fields are refused) and judged once: a body that
//! does not fit its schema is a 400; a body that fits but names something
//! that does not exist (an unknown customer) is a 422 from the handler.

use std::borrow::Cow;

use serde::Deserialize;
use utoipa::openapi::{RefOr, Schema};
use utoipa::{IntoParams, PartialSchema, ToSchema};

use super::lenient::{
    AgeField, IdField, PriceField, QtyField, RatingField, StockField, schema_from_json,
};

/// `POST /customers`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewCustomer {
    #[schema(min_length = 1, max_length = 200)]
    pub name: String,
    #[schema(max_length = 50)]
    pub phone: Option<String>,
    #[schema(max_length = 500)]
    pub address: Option<String>,
    pub age: Option<AgeField>,
}

/// `POST /foodCatalogs` (manager).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewFood {
    #[schema(min_length = 1, max_length = 200)]
    pub name: String,
    pub stock: StockField,
    pub price: PriceField,
}

/// `POST /orders`: `{customerId, foodCatalogId, qty}`, or the seed's own
/// spelling `{customerid, foodcaltalogid, qty}` — one spelling or the
/// other, not a mix. A customer may leave their own id out.
#[derive(Debug, Deserialize)]
#[serde(try_from = "OrderFields")]
pub struct NewOrder {
    pub customer_id: Option<IdField>,
    pub food_catalog_id: IdField,
    pub qty: QtyField,
}

/// Every field `POST /orders` knows, in both spellings.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct OrderFields {
    #[serde(rename = "customerId")]
    customer_id: Option<IdField>,
    #[serde(rename = "foodCatalogId")]
    food_catalog_id: Option<IdField>,
    customerid: Option<IdField>,
    foodcaltalogid: Option<IdField>,
    qty: Option<QtyField>,
}

impl TryFrom<OrderFields> for NewOrder {
    type Error = String;

    fn try_from(f: OrderFields) -> Result<Self, String> {
        let qty = f.qty.ok_or("`qty` is required")?;
        match (
            f.customer_id,
            f.food_catalog_id,
            f.customerid,
            f.foodcaltalogid,
        ) {
            (customer_id, Some(food_catalog_id), None, None)
            | (None, None, customer_id, Some(food_catalog_id)) => Ok(NewOrder {
                customer_id,
                food_catalog_id,
                qty,
            }),
            _ => Err(
                "send `foodCatalogId` (and `customerId`), or the seed's `foodcaltalogid` (and \
                      `customerid`): the fields in one of the spellings"
                    .into(),
            ),
        }
    }
}

impl PartialSchema for NewOrder {
    fn schema() -> RefOr<Schema> {
        let shape = |customer: &str, food: &str| {
            serde_json::json!({
                "type": "object",
                "additionalProperties": false,
                "required": [food, "qty"],
                "properties": {
                    customer: { "$ref": "#/components/schemas/IdField" },
                    food: { "$ref": "#/components/schemas/IdField" },
                    "qty": { "$ref": "#/components/schemas/QtyField" }
                }
            })
        };
        schema_from_json(serde_json::json!({
            "oneOf": [shape("customerId", "foodCatalogId"), shape("customerid", "foodcaltalogid")]
        }))
    }
}

impl ToSchema for NewOrder {
    fn name() -> Cow<'static, str> {
        Cow::Borrowed("NewOrder")
    }
}

/// `POST /reviews`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewReview {
    #[schema(min_length = 1, max_length = 100)]
    pub username: String,
    #[schema(min_length = 1, max_length = 200)]
    pub productname: String,
    #[schema(min_length = 1, max_length = 5000)]
    pub content: String,
    pub rating: Option<RatingField>,
}

/// A string field's length in characters must lie in `min..=max` (what
/// the schema's `minLength`/`maxLength` say).
pub fn check_len(field: &str, value: &str, min: usize, max: usize) -> Result<(), String> {
    let n = value.chars().count();
    if n < min {
        return Err(format!("`{field}` must not be empty"));
    }
    if n > max {
        return Err(format!("`{field}` is longer than {max} characters"));
    }
    Ok(())
}

impl NewCustomer {
    pub fn check(&self) -> Result<(), String> {
        check_len("name", &self.name, 1, 200)?;
        check_len("phone", self.phone.as_deref().unwrap_or(""), 0, 50)?;
        check_len("address", self.address.as_deref().unwrap_or(""), 0, 500)
    }
}

impl NewFood {
    pub fn check(&self) -> Result<(), String> {
        check_len("name", &self.name, 1, 200)
    }
}

impl NewReview {
    pub fn check(&self) -> Result<(), String> {
        check_len("username", &self.username, 1, 100)?;
        check_len("productname", &self.productname, 1, 200)?;
        check_len("content", &self.content, 1, 5000)
    }
}

/// The largest `offset` a list takes.
pub const MAX_OFFSET: i64 = 1_000_000_000;

/// Declares a list's query string: its filters, then `limit` and
/// `offset`, as every list takes them.
macro_rules! list_query {
    ($(#[$doc:meta])* $name:ident { $($(#[$attr:meta])* $field:ident: $ty:ty),* $(,)? }) => {
        $(#[$doc])*
        #[derive(Debug, Deserialize, IntoParams)]
        #[into_params(parameter_in = Query)]
        pub struct $name {
            $($(#[$attr])* pub $field: $ty,)*
            /// How many (default 100).
            #[param(minimum = 1, maximum = 100000)]
            pub limit: Option<i64>,
            /// How many to skip (default 0).
            #[param(minimum = 0, maximum = 1000000000)]
            pub offset: Option<i64>,
        }
    };
}

list_query!(
    /// `limit` and `offset` of every list.
    PageQuery {}
);

list_query!(
    /// A worker's list: paging and the order it belongs to.
    RecordQuery {
        #[serde(rename = "orderId")]
        #[param(minimum = 1, maximum = 999999999999999999_i64)]
        order_id: Option<i64>,
    }
);

list_query!(
    /// Orders and my orders: paging and the customer.
    CustomerQuery {
        #[serde(rename = "customerId")]
        #[param(minimum = 1, maximum = 999999999999999999_i64)]
        customer_id: Option<i64>,
    }
);

list_query!(
    /// Sagas: paging and the operator's filters (every one given must
    /// hold), and the cursor `after`.
    SagaQuery {
        #[param(value_type = Option<crate::saga::machine::SagaState>)]
        state: Option<String>,
        /// The step the saga is busy with or stuck on (a step of the saga
        /// file, e.g. `kitchen`; another name is a 422).
        step: Option<String>,
        #[serde(rename = "customerId")]
        #[param(minimum = 1, maximum = 999999999999999999_i64)]
        customer_id: Option<i64>,
        /// The order's food catalog item.
        #[serde(rename = "foodId")]
        #[param(minimum = 1, maximum = 999999999999999999_i64)]
        food_id: Option<i64>,
        /// Created at or after this time (RFC 3339, e.g. `2026-12-07T20:00:00Z`).
        #[serde(rename = "createdFrom")]
        #[param(format = DateTime)]
        created_from: Option<String>,
        /// Created before this time (RFC 3339).
        #[serde(rename = "createdTo")]
        #[param(format = DateTime)]
        created_to: Option<String>,
        /// Last changed at or after this time (RFC 3339).
        #[serde(rename = "updatedFrom")]
        #[param(format = DateTime)]
        updated_from: Option<String>,
        /// Last changed before this time (RFC 3339).
        #[serde(rename = "updatedTo")]
        #[param(format = DateTime)]
        updated_to: Option<String>,
        /// Not finished (`Running`, `Compensating`, `Failed`) and without a
        /// transition for at least this long (a step being retried or timing
        /// out changes with each attempt): `90s`, `5m`, `2h`, `1d`.
        #[serde(rename = "waitingLongerThan")]
        #[param(pattern = r"^[0-9]{1,12}(ms|s|m|h|d)$")]
        waiting_longer_than: Option<String>,
        /// The cursor: sagas with a larger id only (the last id of the page
        /// before; a full page names the next one in its `Link` header).
        #[param(minimum = 0, maximum = 999999999999999999_i64)]
        after: Option<i64>,
    }
);

/// `{id}` of a path: a positive id.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub struct IdPath {
    #[param(minimum = 1, maximum = 999999999999999999_i64)]
    pub id: i64,
}

/// `limit` (default 100, 1..=100000) and `offset` (default 0,
/// 0..=[`MAX_OFFSET`]), as the schema states them.
pub fn page(limit: Option<i64>, offset: Option<i64>) -> Result<crate::storage::Page, String> {
    let limit = limit.unwrap_or(100);
    let offset = offset.unwrap_or(0);
    if !(1..=100_000).contains(&limit) {
        return Err("`limit` must be between 1 and 100000".into());
    }
    if !(0..=MAX_OFFSET).contains(&offset) {
        return Err(format!("`offset` must be between 0 and {MAX_OFFSET}"));
    }
    Ok(crate::storage::Page { limit, offset })
}

/// A positive id filter, as the schema states it.
pub fn id_filter<T>(
    name: &str,
    raw: Option<i64>,
    make: impl Fn(i64) -> Result<T, crate::domain::DomainError>,
) -> Result<Option<T>, String> {
    raw.map(|v| {
        if v > super::lenient::IdField::MAX {
            return Err(format!("`{name}` has more than 18 digits"));
        }
        make(v).map_err(|e| format!("`{name}`: {e}"))
    })
    .transpose()
}
