//! Every malformed request gets a 4xx JSON `{error, detail}`: never a 500,
//! never a panic.

use reqwest::{Method, StatusCode};

use crate::helpers::{Broker, Options, spawn_app, token};

struct Case {
    what: &'static str,
    method: Method,
    path: &'static str,
    body: Option<String>,
    token: Option<&'static str>,
    expect: StatusCode,
}

fn case(
    what: &'static str,
    method: Method,
    path: &'static str,
    body: Option<&str>,
    expect: u16,
) -> Case {
    Case {
        what,
        method,
        path,
        body: body.map(str::to_owned),
        // The manager may call every route: what is wrong is the input.
        token: Some(token()),
        expect: StatusCode::from_u16(expect).expect("status"),
    }
}

#[actix_web::test]
async fn bad_requests_get_clear_json_errors() {
    let app = spawn_app(Broker::InProcess, Options::default())
        .await
        .expect("in-process app");
    let customer = app.seed_customer().await;
    let food = app.seed_food(100).await;
    assert_eq!((customer, food), (1, 1));

    let huge = format!("{{\"name\":\"{}\"}}", "x".repeat(70 * 1024));
    let mut cases = vec![
        case(
            "malformed JSON",
            Method::POST,
            "/orders",
            Some("{\"qty\": "),
            400,
        ),
        case("not an object", Method::POST, "/orders", Some("[1,2]"), 400),
        case(
            "qty is not a number",
            Method::POST,
            "/orders",
            Some(r#"{"qty":"ten","foodCatalogId":1,"customerId":1}"#),
            400,
        ),
        case(
            "qty is zero",
            Method::POST,
            "/orders",
            Some(r#"{"qty":0,"foodCatalogId":1,"customerId":1}"#),
            400,
        ),
        case(
            "qty is negative",
            Method::POST,
            "/orders",
            Some(r#"{"qty":"-3","foodCatalogId":1,"customerId":1}"#),
            400,
        ),
        case(
            "qty is huge",
            Method::POST,
            "/orders",
            Some(r#"{"qty":99999999999,"foodCatalogId":1,"customerId":1}"#),
            400,
        ),
        case(
            "qty is fractional",
            Method::POST,
            "/orders",
            Some(r#"{"qty":1.5,"foodCatalogId":1,"customerId":1}"#),
            400,
        ),
        case(
            "qty missing",
            Method::POST,
            "/orders",
            Some(r#"{"foodCatalogId":1,"customerId":1}"#),
            400,
        ),
        case(
            "unknown customer",
            Method::POST,
            "/orders",
            Some(r#"{"qty":1,"foodCatalogId":1,"customerId":42}"#),
            422,
        ),
        case(
            "unknown food",
            Method::POST,
            "/orders",
            Some(r#"{"qty":1,"foodCatalogId":42,"customerId":1}"#),
            422,
        ),
        // Ids are positive in the schema: 0 does not fit it (400), while a
        // positive id that names nobody is a 422.
        case(
            "customer id zero",
            Method::POST,
            "/orders",
            Some(r#"{"qty":1,"foodCatalogId":1,"customerId":0}"#),
            400,
        ),
        case(
            "both spellings of a field",
            Method::POST,
            "/orders",
            Some(r#"{"qty":1,"foodCatalogId":1,"customerId":1,"customerid":1}"#),
            400,
        ),
        case(
            "a mix of the two spellings",
            Method::POST,
            "/orders",
            Some(r#"{"qty":1,"customerId":1,"foodcaltalogid":1}"#),
            400,
        ),
        case(
            "an 18-digit id written as a float names nobody",
            Method::POST,
            "/orders",
            Some(r#"{"qty":1,"foodCatalogId":1,"customerId":1e17}"#),
            422,
        ),
        case(
            "an unknown field",
            Method::POST,
            "/customers",
            Some(r#"{"name":"a","nickname":"b"}"#),
            400,
        ),
        case(
            "a name that is a number",
            Method::POST,
            "/customers",
            Some(r#"{"name":129}"#),
            400,
        ),
        case(
            "wrong type for customer",
            Method::POST,
            "/orders",
            Some(r#"{"qty":1,"foodCatalogId":1,"customerId":{"a":1}}"#),
            400,
        ),
        case(
            "oversize body",
            Method::POST,
            "/customers",
            Some(huge.as_str()),
            413,
        ),
        case(
            "customer without name",
            Method::POST,
            "/customers",
            Some(r#"{"phone":"1"}"#),
            400,
        ),
        case(
            "customer with absurd age",
            Method::POST,
            "/customers",
            Some(r#"{"name":"a","age":"-4"}"#),
            400,
        ),
        case("unknown order", Method::GET, "/orders/999", None, 404),
        case(
            "order id not a number",
            Method::GET,
            "/orders/abc",
            None,
            404,
        ),
        case("unknown saga", Method::GET, "/sagas/999", None, 404),
        case(
            "unknown customer path",
            Method::GET,
            "/customers/0",
            None,
            404,
        ),
        case("unknown route", Method::GET, "/nothing/here", None, 404),
        case("wrong method", Method::PUT, "/orders", Some("{}"), 405),
        case("limit zero", Method::GET, "/orders?limit=0", None, 400),
        case(
            "limit too big",
            Method::GET,
            "/orders?limit=100001",
            None,
            400,
        ),
        case(
            "limit not a number",
            Method::GET,
            "/pays?limit=abc",
            None,
            400,
        ),
        case(
            "negative offset",
            Method::GET,
            "/kitchens?offset=-1",
            None,
            400,
        ),
        case(
            "bad orderId filter",
            Method::GET,
            "/coupons?orderId=x",
            None,
            400,
        ),
        case(
            "bad saga state filter",
            Method::GET,
            "/sagas?state=Sleeping",
            None,
            400,
        ),
    ];
    // Without a credential, a route that needs one answers 401 before its
    // body is read (a bad body included); with the wrong one, 401 as well.
    for (what, method, path, body) in [
        ("cancel without token", Method::DELETE, "/kitchens/1", None),
        (
            "catalog without token",
            Method::POST,
            "/foodCatalogs",
            Some(r#"{"name":"x","stock":1,"price":1}"#),
        ),
        (
            "a bad body without token",
            Method::POST,
            "/foodCatalogs",
            Some(r#"{"name": "#),
        ),
        ("retry without token", Method::POST, "/sagas/1/retry", None),
        (
            "cooked without token",
            Method::POST,
            "/kitchens/1/cooked",
            None,
        ),
        (
            "an order without token",
            Method::POST,
            "/orders",
            Some("[1,2]"),
        ),
    ] {
        let mut c = case(what, method, path, body, 401);
        c.token = None;
        cases.push(c);
    }
    let mut wrong = case(
        "cancel with a wrong token",
        Method::DELETE,
        "/kitchens/1",
        None,
        401,
    );
    wrong.token = Some("not-the-token");
    cases.push(wrong);
    cases.extend([
        case(
            "cancel an unknown order",
            Method::DELETE,
            "/kitchens/999",
            None,
            404,
        ),
        case(
            "negative price",
            Method::POST,
            "/foodCatalogs",
            Some(r#"{"name":"x","stock":1,"price":"-1"}"#),
            400,
        ),
        case(
            "stock not a number",
            Method::POST,
            "/foodCatalogs",
            Some(r#"{"name":"x","stock":"lots","price":1}"#),
            400,
        ),
        case(
            "retry of an unknown saga",
            Method::POST,
            "/sagas/999/retry",
            None,
            404,
        ),
    ]);

    for c in cases {
        let mut req = app
            .anonymous
            .request(c.method.clone(), format!("{}{}", app.base, c.path));
        if let Some(b) = &c.body {
            req = req
                .header("Content-Type", "application/json")
                .body(b.clone());
        }
        if let Some(t) = c.token {
            req = req.bearer_auth(t);
        }
        let res = req.send().await.expect("request");
        let status = res.status();
        let text = res.text().await.expect("body");
        assert_eq!(status, c.expect, "{}: {text}", c.what);
        let v: serde_json::Value =
            serde_json::from_str(&text).unwrap_or_else(|_| panic!("{}: not JSON: {text}", c.what));
        assert!(
            v["error"].is_string() && v["detail"].is_string(),
            "{}: {v}",
            c.what
        );
    }
    // A 405 says which methods are allowed (RFC 9110).
    for (method, path, allow) in [
        (Method::PUT, "/orders", "POST, GET"),
        (Method::POST, "/kitchens/1", "GET, DELETE"),
        (Method::DELETE, "/health/ready", "GET"),
    ] {
        let res = app
            .client
            .request(method.clone(), format!("{}{path}", app.base))
            .send()
            .await
            .expect("request");
        assert_eq!(res.status(), 405, "{method} {path}");
        let header = res.headers().get("allow").and_then(|v| v.to_str().ok());
        assert_eq!(header, Some(allow), "{method} {path}");
    }
    // A body that is not JSON by its Content-Type is a 415.
    for ct in ["text/plain", "application/x-www-form-urlencoded"] {
        let res = app
            .client
            .post(format!("{}/customers", app.base))
            .header("Content-Type", ct)
            .body(r#"{"name":"plain"}"#)
            .send()
            .await
            .expect("request");
        assert_eq!(res.status(), 415, "{ct}");
    }
    // Two Idempotency-Keys are one too many.
    let res = app
        .client
        .post(format!("{}/orders", app.base))
        .header("Idempotency-Key", "a")
        .header("Idempotency-Key", "b")
        .json(&serde_json::json!({"qty": 1, "customerId": 1, "foodCatalogId": 1}))
        .send()
        .await
        .expect("request");
    assert_eq!(res.status(), 400);
    // Nothing was established by any of it.
    let (_, orders) = app.get("/orders").await;
    assert_eq!(orders, serde_json::json!([]));
    app.stop().await;
}
