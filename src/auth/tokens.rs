//! Issuing and verifying tokens.
//!
//! The service's own tokens are HS256 JWTs with `iss` and `aud` `hearty`, an
//! expiry, the caller's `role` and, for a customer, the customer's id and
//! name. An external provider's tokens are verified by the key their `kid`
//! names, with the algorithm that key's type allows (never the one a token
//! claims for itself: no `alg: none`, no HMAC with a public key), and must
//! carry its issuer and audience, an expiry and a `role` claim (and
//! `customer_id` for a customer). The manager's static token
//! (`HEARTY_MANAGER_TOKEN`) is compared in constant time.

use std::time::Duration;

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use super::keys::External;
use super::{AuthError, Caller, StaffRole, Who};
use crate::config::Secret;
use crate::domain::CustomerId;

/// The issuer and audience of the service's own tokens.
const OWN: &str = "hearty";

/// Clock skew tolerated on `exp` and `nbf`.
const LEEWAY_SECS: u64 = 30;

/// How long the token an API replica forwards to the owners lives: long
/// enough for the slowest request (an owner's wait, then a payment's), short
/// enough that one copied off the broker is soon worth nothing.
const FORWARDED_TTL: Duration = Duration::from_secs(120);

/// The claims of a token the service issues.
#[derive(Debug, Serialize)]
struct Claims {
    sub: String,
    role: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    customer_id: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    name: Option<String>,
    exp: u64,
    iat: u64,
    iss: String,
    aud: String,
}

/// What a verified token says of its caller (`exp`, `nbf`, `iss` and `aud`
/// — a string or a list — are checked by the validation, apart from this).
#[derive(Debug, Deserialize)]
struct Verified {
    sub: String,
    role: String,
    #[serde(default)]
    customer_id: Option<i64>,
    #[serde(default)]
    name: Option<String>,
}

/// A token just issued.
pub struct Issued {
    pub token: Secret,
    /// Seconds since the epoch.
    pub expires_at: u64,
}

/// Verifies callers' credentials and issues the service's own tokens.
pub struct Authenticator {
    encoding: EncodingKey,
    decoding: DecodingKey,
    /// How the service's own tokens are checked (built once).
    own: Validation,
    external: Option<External>,
    manager_token: Option<Secret>,
}

fn now_secs() -> u64 {
    jsonwebtoken::get_current_timestamp()
}

impl Authenticator {
    pub fn new(
        key: &Secret,
        external: Option<External>,
        manager_token: Option<Secret>,
    ) -> anyhow::Result<Self> {
        let secret = key.expose().as_bytes();
        Ok(Authenticator {
            encoding: EncodingKey::from_secret(secret)?,
            decoding: DecodingKey::from_secret(secret)?,
            own: validation(Algorithm::HS256, OWN, OWN),
            external,
            manager_token,
        })
    }

    /// A customer's token, for `ttl`.
    pub fn customer_token(
        &self,
        id: CustomerId,
        name: &str,
        ttl: Duration,
    ) -> Result<Issued, AuthError> {
        self.issue(format!("customer:{id}"), "customer", Some((id, name)), ttl)
    }

    /// A staff member's token, for `ttl`.
    pub fn staff_token(
        &self,
        role: StaffRole,
        subject: &str,
        ttl: Duration,
    ) -> Result<Issued, AuthError> {
        self.issue(subject.to_owned(), role.as_str(), None, ttl)
    }

    fn issue(
        &self,
        sub: String,
        role: &str,
        customer: Option<(CustomerId, &str)>,
        ttl: Duration,
    ) -> Result<Issued, AuthError> {
        let iat = now_secs();
        let exp = iat + ttl.as_secs().max(1);
        let claims = Claims {
            sub,
            role: role.to_owned(),
            customer_id: customer.map(|(id, _)| id.get()),
            name: customer.map(|(_, name)| name.to_owned()),
            exp,
            iat,
            iss: OWN.to_owned(),
            aud: OWN.to_owned(),
        };
        let token = jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .map_err(|e| AuthError(format!("cannot sign a token: {e}")))?;
        Ok(Issued {
            token: Secret::new(token),
            expires_at: exp,
        })
    }

    /// `caller`, with a credential for the owners of partitions: a token of
    /// [`FORWARDED_TTL`] naming the same caller, signed with the deployment's
    /// key (so the caller's own token — a customer's of 30 days, the
    /// manager's static one — never crosses the broker).
    pub fn for_owners(&self, caller: Caller) -> Result<Caller, AuthError> {
        let issued = match caller.who() {
            Who::Anonymous => return Ok(caller),
            Who::Customer { id, name } => self.customer_token(*id, name, FORWARDED_TTL)?,
            Who::Staff { role, subject } => self.staff_token(*role, subject, FORWARDED_TTL)?,
        };
        let who = caller.who().clone();
        Ok(Caller::new(who, Some(issued.token)))
    }

    /// The caller an `Authorization` header proves: none is anonymous;
    /// `Bearer <token>`, or `Basic` with the token as its password (what a
    /// browser sends for the inspection page), must verify.
    pub fn authenticate(&self, authorization: Option<&str>) -> Result<Caller, AuthError> {
        let Some(header) = authorization else {
            return Ok(Caller::anonymous());
        };
        let token = credential_of(header)?;
        self.verify(&token)
    }

    /// The caller a token (or the manager's static token) proves.
    pub fn verify(&self, token: &str) -> Result<Caller, AuthError> {
        let secret = Secret::new(token);
        if let Some(static_token) = &self.manager_token
            && constant_time_eq(token.as_bytes(), static_token.expose().as_bytes())
        {
            let who = Who::Staff {
                role: StaffRole::Manager,
                subject: "manager-token".to_owned(),
            };
            return Ok(Caller::new(who, Some(secret)));
        }
        let header = jsonwebtoken::decode_header(token).map_err(|_| {
            AuthError("the bearer token is not a token this service accepts".into())
        })?;
        let claims = match (&self.external, &header.kid) {
            (Some(external), Some(kid)) => verify_external(external, kid, token)?,
            _ => self.verify_own(token)?,
        };
        Ok(Caller::new(who_of(claims)?, Some(secret)))
    }

    fn verify_own(&self, token: &str) -> Result<Verified, AuthError> {
        decode(token, &self.decoding, &self.own)
    }
}

/// What a token of `alg` must carry: `iss` and `aud` (one of its audiences
/// if a list) as named, an expiry, a subject; `exp` and `nbf` are checked
/// with [`LEEWAY_SECS`] of clock skew.
fn validation(alg: Algorithm, issuer: &str, audience: &str) -> Validation {
    let mut v = Validation::new(alg);
    v.set_issuer(&[issuer]);
    v.set_audience(&[audience]);
    v.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
    v.leeway = LEEWAY_SECS;
    v.validate_nbf = true;
    v
}

/// Verifies a token by the external provider's key `kid`.
fn verify_external(external: &External, kid: &str, token: &str) -> Result<Verified, AuthError> {
    let jwk = external
        .keys
        .find(kid)
        .ok_or_else(|| AuthError(format!("no key `{kid}` of the identity provider")))?;
    let key = DecodingKey::from_jwk(jwk)
        .map_err(|e| AuthError(format!("the identity provider's key `{kid}`: {e}")))?;
    let validation = validation(algorithm_of(jwk)?, &external.issuer, &external.audience);
    decode(token, &key, &validation)
}

/// The algorithm a provider's key is for: from the key itself, so a token
/// cannot choose a weaker one (or an HMAC keyed with a public key).
fn algorithm_of(jwk: &Jwk) -> Result<Algorithm, AuthError> {
    if let Some(alg) = jwk.common.key_algorithm {
        let named = alg.to_string();
        return named
            .parse::<Algorithm>()
            .map_err(|_| AuthError(format!("the identity provider's key names `{named}`")));
    }
    match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => Ok(Algorithm::RS256),
        AlgorithmParameters::EllipticCurve(ec) => match ec.curve {
            EllipticCurve::P256 => Ok(Algorithm::ES256),
            EllipticCurve::P384 => Ok(Algorithm::ES384),
            _ => Err(AuthError("an unsupported curve".into())),
        },
        AlgorithmParameters::OctetKeyPair(_) => Ok(Algorithm::EdDSA),
        _ => Err(AuthError(
            "the identity provider's key is not a public key this service accepts".into(),
        )),
    }
}

fn decode(token: &str, key: &DecodingKey, validation: &Validation) -> Result<Verified, AuthError> {
    use jsonwebtoken::errors::ErrorKind as E;
    jsonwebtoken::decode::<Verified>(token, key, validation)
        .map(|data| data.claims)
        .map_err(|e| {
            AuthError(
                match e.kind() {
                    E::ExpiredSignature => "the token has expired",
                    E::ImmatureSignature => "the token is not valid yet",
                    E::InvalidIssuer => "the token is of another issuer",
                    E::InvalidAudience => "the token is for another audience",
                    E::InvalidSignature => "the token's signature does not verify",
                    E::InvalidAlgorithm => "the token's algorithm is not accepted",
                    E::MissingRequiredClaim(_) => "the token lacks a required claim",
                    _ => "the bearer token is not a token this service accepts",
                }
                .to_owned(),
            )
        })
}

/// Who verified claims name.
fn who_of(claims: Verified) -> Result<Who, AuthError> {
    if claims.role == "customer" {
        let id = claims
            .customer_id
            .and_then(|id| CustomerId::new(id).ok())
            .ok_or_else(|| AuthError("a customer's token without its customer id".into()))?;
        let name = claims.name.unwrap_or_default();
        return Ok(Who::Customer { id, name });
    }
    let role = claims
        .role
        .parse::<StaffRole>()
        .map_err(|_| AuthError(format!("the token's role `{}` is unknown", claims.role)))?;
    Ok(Who::Staff {
        role,
        subject: claims.sub,
    })
}

/// The credential of an `Authorization` header: a bearer token, or the
/// password of Basic credentials.
fn credential_of(header: &str) -> Result<String, AuthError> {
    let (scheme, rest) = header.trim().split_once(' ').unwrap_or((header, ""));
    let rest = rest.trim();
    if scheme.eq_ignore_ascii_case("bearer") && !rest.is_empty() {
        return Ok(rest.to_owned());
    }
    if scheme.eq_ignore_ascii_case("basic") {
        use base64::Engine as _;
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(rest)
            .ok()
            .and_then(|b| String::from_utf8(b).ok())
            .ok_or_else(|| AuthError("malformed Basic credentials".into()))?;
        let (_, password) = decoded.split_once(':').unwrap_or(("", &decoded));
        if !password.is_empty() {
            return Ok(password.to_owned());
        }
    }
    Err(AuthError("send `Authorization: Bearer <token>`".into()))
}

/// Compares without an early exit, so the time taken does not tell how
/// much of a token was right.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    use subtle::ConstantTimeEq as _;
    a.ct_eq(b).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_comparison() {
        assert!(constant_time_eq(b"secret-token", b"secret-token"));
        assert!(!constant_time_eq(b"secret-tokem", b"secret-token"));
        assert!(!constant_time_eq(b"secret", b"secret-token"));
        assert!(!constant_time_eq(b"secret-token-and-more", b"secret-token"));
        assert!(!constant_time_eq(b"", b"secret-token"));
    }

    fn auth() -> Authenticator {
        let key = Secret::new("k".repeat(40));
        Authenticator::new(&key, None, Some(Secret::new("static-manager-token"))).expect("keys")
    }

    #[test]
    fn own_tokens_round_trip() {
        let a = auth();
        let id = CustomerId::new(7).expect("valid");
        let t = a
            .customer_token(id, "yang", Duration::from_secs(60))
            .expect("issued");
        let caller = a
            .authenticate(Some(&format!("Bearer {}", t.token.expose())))
            .expect("verifies");
        assert_eq!(
            caller.who(),
            &Who::Customer {
                id,
                name: "yang".into()
            }
        );
        let staff = a
            .staff_token(StaffRole::Kitchen, "kim", Duration::from_secs(60))
            .expect("issued");
        let caller = a.verify(staff.token.expose()).expect("verifies");
        assert_eq!(caller.staff(), Some(StaffRole::Kitchen));
        assert_eq!(caller.actor(), "kitchen:kim");
    }

    #[test]
    fn bad_credentials_are_refused() {
        let a = auth();
        let other = Authenticator::new(&Secret::new("x".repeat(40)), None, None).expect("keys");
        let forged = other
            .staff_token(StaffRole::Manager, "mallory", Duration::from_secs(60))
            .expect("issued");
        assert!(a.verify(forged.token.expose()).is_err(), "another key");
        // `alg: none` with the claims of a manager.
        let none = format!(
            "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.{}.",
            forged.token.expose().split('.').nth(1).unwrap_or("")
        );
        assert!(a.verify(&none).is_err(), "alg none");
        assert!(a.authenticate(Some("Bearer")).is_err());
        assert!(a.authenticate(Some("Token abc")).is_err());
        assert!(a.verify("static-manager-tokeN").is_err());
        assert!(
            a.authenticate(None)
                .expect("anonymous")
                .customer()
                .is_none()
        );
        let manager = a
            .authenticate(Some("Basic dTpzdGF0aWMtbWFuYWdlci10b2tlbg=="))
            .expect("basic with the token as password");
        assert!(manager.is_manager());
    }

    #[test]
    fn expired_tokens_are_refused() {
        let a = auth();
        let claims = Claims {
            sub: "kim".into(),
            role: "kitchen".into(),
            customer_id: None,
            name: None,
            exp: now_secs() - 3600,
            iat: now_secs() - 7200,
            iss: OWN.into(),
            aud: OWN.into(),
        };
        let t = jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &a.encoding)
            .expect("signed");
        let err = a.verify(&t).expect_err("expired");
        assert!(err.0.contains("expired"), "{err}");
    }
}
