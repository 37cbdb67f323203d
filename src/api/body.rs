//! Lenient reading of request bodies and query strings.
//!
//! httpie sends `key=value` fields as JSON strings (`"qty": "10"`), and the
//! seed spells some fields its own way (`foodcaltalogid`), so numbers are
//! accepted as numbers or numeric strings, and each field has its aliases.

use std::collections::HashMap;

use serde_json::{Map, Value};

use super::error::ApiError;
use crate::storage::Page;

/// A JSON object body.
pub struct Body(Map<String, Value>);

impl Body {
    pub fn new(v: Value) -> Result<Self, ApiError> {
        match v {
            Value::Object(m) => Ok(Body(m)),
            _ => Err(ApiError::bad_request("the body must be a JSON object")),
        }
    }

    fn find<'a>(&'a self, names: &[&'a str]) -> Option<(&'a str, &'a Value)> {
        names.iter().find_map(|n| match self.0.get(*n) {
            Some(Value::Null) | None => None,
            Some(v) => Some((*n, v)),
        })
    }

    /// An integer, from a number or a numeric string.
    pub fn int(&self, names: &[&str]) -> Result<Option<i64>, ApiError> {
        let Some((name, v)) = self.find(names) else {
            return Ok(None);
        };
        let parsed = match v {
            Value::Number(n) => n.as_i64(),
            Value::String(s) => s.trim().parse::<i64>().ok(),
            _ => None,
        };
        parsed
            .map(Some)
            .ok_or_else(|| ApiError::bad_request(format!("`{name}` must be a whole number")))
    }

    /// A decimal number, from a number or a numeric string.
    pub fn number(&self, names: &[&str]) -> Result<Option<f64>, ApiError> {
        let Some((name, v)) = self.find(names) else {
            return Ok(None);
        };
        let parsed = match v {
            Value::Number(n) => n.as_f64(),
            Value::String(s) => s.trim().parse::<f64>().ok(),
            _ => None,
        };
        parsed
            .filter(|f| f.is_finite())
            .map(Some)
            .ok_or_else(|| ApiError::bad_request(format!("`{name}` must be a number")))
    }

    /// The text of a decimal number, from a number or a string, for exact
    /// parsing (amounts never go through a float).
    pub fn decimal_text(&self, names: &[&str]) -> Result<Option<String>, ApiError> {
        let Some((name, v)) = self.find(names) else {
            return Ok(None);
        };
        match v {
            Value::Number(n) => Ok(Some(n.to_string())),
            Value::String(s) => Ok(Some(s.trim().to_owned())),
            _ => Err(ApiError::bad_request(format!("`{name}` must be a number"))),
        }
    }

    /// A non-empty string of at most `max` characters (numbers are taken as
    /// their text).
    pub fn text(&self, names: &[&str], max: usize) -> Result<Option<String>, ApiError> {
        let Some((name, v)) = self.find(names) else {
            return Ok(None);
        };
        let s = match v {
            Value::String(s) => s.trim().to_owned(),
            Value::Number(n) => n.to_string(),
            _ => return Err(ApiError::bad_request(format!("`{name}` must be a string"))),
        };
        if s.is_empty() {
            return Err(ApiError::bad_request(format!("`{name}` must not be empty")));
        }
        if s.chars().count() > max {
            return Err(ApiError::bad_request(format!(
                "`{name}` is longer than {max} characters"
            )));
        }
        Ok(Some(s))
    }
}

/// Requires a field.
pub fn required<T>(v: Option<T>, name: &str) -> Result<T, ApiError> {
    v.ok_or_else(|| ApiError::bad_request(format!("`{name}` is required")))
}

/// Query-string parameters.
pub struct Query(pub HashMap<String, String>);

impl Query {
    pub fn int(&self, name: &str) -> Result<Option<i64>, ApiError> {
        match self.0.get(name) {
            None => Ok(None),
            Some(s) => s
                .trim()
                .parse()
                .map(Some)
                .map_err(|_| ApiError::bad_request(format!("`{name}` must be a whole number"))),
        }
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(String::as_str)
    }

    /// `limit` (default 100, 1..=100000) and `offset` (default 0).
    pub fn page(&self) -> Result<Page, ApiError> {
        let limit = self.int("limit")?.unwrap_or(100);
        let offset = self.int("offset")?.unwrap_or(0);
        if !(1..=100_000).contains(&limit) {
            return Err(ApiError::bad_request(
                "`limit` must be between 1 and 100000",
            ));
        }
        if offset < 0 {
            return Err(ApiError::bad_request("`offset` must not be negative"));
        }
        Ok(Page { limit, offset })
    }
}
