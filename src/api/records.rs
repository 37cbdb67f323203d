//! The workers' records (payments, kitchen tickets, deliveries, coupons):
//! lists gathered from every owner, and one order's record. A record's id is
//! its order's.

use actix_web::{HttpResponse, web};

use super::contract::requests::{IdPath, RecordQuery, id_filter};
use super::contract::responses::{
    CouponRecord, DeliveryRecord, ErrorBody, PayRecord, RecordView, TicketRecord,
};
use super::error::ApiError;
use super::{ApiState, listed, ok_json, path_id};
use crate::auth::Caller;
use crate::domain::{OrderId, WorkerKind};
use crate::partition::OwnerRole;
use crate::workers::requests::{Outcome, Record, Request};

type State = web::Data<ApiState>;

/// The record of one order kept by `kind`'s owners. The kitchen keeps
/// tickets by food: any of its owners may have one; the others keep an
/// order's record in its partition.
async fn record(
    state: &ApiState,
    caller: &Caller,
    kind: WorkerKind,
    id: OrderId,
) -> Result<Option<Record>, ApiError> {
    let role = OwnerRole::Worker(kind);
    let asked = Request::Record { order: id };
    let outcomes = if kind == WorkerKind::Kitchen {
        state.workers.all(role, caller, asked).await?
    } else {
        let at = state.workers.partition_of(id.get());
        vec![state.workers.one(role, at, caller, asked).await?]
    };
    for outcome in outcomes {
        match outcome {
            Outcome::Record(Some(found)) => return Ok(Some(found)),
            Outcome::Record(None) => {}
            _ => return Err(ApiError::unavailable("a worker answered oddly", 1)),
        }
    }
    Ok(None)
}

/// Declares the list and get endpoints of one worker's records.
macro_rules! worker_records {
    ($list:ident, $get:ident, $kind:ident, $record:ty, $path:literal, $path_id:literal,
     $list_op:literal, $get_op:literal, $tag:literal, $what:literal) => {
        #[doc = concat!("The ", $what, " records, by id (an order's id).")]
        #[utoipa::path(
                    get,
                    path = $path,
                    operation_id = $list_op,
                    tag = $tag,
                    params(RecordQuery),
                    responses(
                        (status = 200, description = "records ordered by id", body = [$record]),
                        (status = 400, description = "bad query", body = ErrorBody),
                        (status = 503, description = "storage unavailable", body = ErrorBody),
                    )
                )]
        pub async fn $list(
            state: State,
            caller: Caller,
            q: web::Query<RecordQuery>,
        ) -> Result<HttpResponse, ApiError> {
            let page = super::visible_page(&caller, q.limit, q.offset)?;
            let order =
                id_filter("orderId", q.order_id, OrderId::new).map_err(ApiError::bad_request)?;
            let role = OwnerRole::Worker(WorkerKind::$kind);
            let request = |page| Request::Records { page, order };
            listed::<_, _, RecordView>(&state.workers, role, &caller, request, Outcome::records, page)
                .await
        }

        #[doc = concat!("The ", $what, " of order `id`.")]
        #[utoipa::path(
                    get,
                    path = $path_id,
                    operation_id = $get_op,
                    tag = $tag,
                    params(IdPath),
                    responses(
                        (status = 200, description = "the record", body = $record),
                        (status = 404, description = "none for this order", body = ErrorBody),
                        (status = 503, description = "storage unavailable", body = ErrorBody),
                    )
                )]
        pub async fn $get(
            state: State,
            caller: Caller,
            path: web::Path<IdPath>,
        ) -> Result<HttpResponse, ApiError> {
            let id = path_id(path.id, $what, OrderId::new)?;
            match record(&state, &caller, WorkerKind::$kind, id).await? {
                Some(found) => Ok(ok_json(&RecordView::from(found))),
                None => Err(ApiError::not_found(format!(concat!("no ", $what, " {}"), id))),
            }
        }
    };
}

worker_records!(
    list_pays,
    get_pay,
    Pay,
    PayRecord,
    "/pays",
    "/pays/{id}",
    "listPays",
    "getPay",
    "payments",
    "payment"
);
worker_records!(
    list_kitchens,
    get_kitchen,
    Kitchen,
    TicketRecord,
    "/kitchens",
    "/kitchens/{id}",
    "listKitchens",
    "getKitchen",
    "kitchen",
    "kitchen ticket"
);
worker_records!(
    list_deliveries,
    get_delivery,
    Delivery,
    DeliveryRecord,
    "/deliveries",
    "/deliveries/{id}",
    "listDeliveries",
    "getDelivery",
    "deliveries",
    "delivery"
);
worker_records!(
    list_coupons,
    get_coupon,
    Coupon,
    CouponRecord,
    "/coupons",
    "/coupons/{id}",
    "listCoupons",
    "getCoupon",
    "coupons",
    "coupon"
);
