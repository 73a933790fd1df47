//! `POST /apis/authentication.k8s.io/v1/tokenreviews`: who a bearer token names, as this server
//! would authenticate it. Nodes ask it of the tokens they are called with (the metrics
//! reader's), as upstream's kubelet does with `--authentication-token-webhook`, so that no node
//! holds a token of the cluster's. Created, never stored, as upstream's.

use axum::Extension;
use axum::body::Bytes;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use flotilla_api::{ApiError, Reason};
use flotilla_auth::UserInfo;
use http::{StatusCode, header};
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewStatus, UserInfo as ReviewedUser};

use crate::authz::{self, Attributes};
use crate::handlers::json_response;
use crate::{ApiServer, Error};

pub(crate) async fn serve(
    State(server): State<ApiServer>,
    Extension(user): Extension<UserInfo>,
    body: Bytes,
) -> Response {
    match review(&server, &user, &body).await {
        Ok(reviewed) => json_response(StatusCode::CREATED, &reviewed, &[]).unwrap_or_else(|e| e.into_response()),
        Err(e) => e.into_response(),
    }
}

async fn review(server: &ApiServer, user: &UserInfo, body: &[u8]) -> Result<serde_json::Value, Error> {
    if user.is_anonymous() {
        return Err(ApiError::new(Reason::Unauthorized, "Unauthorized").into());
    }
    let attributes =
        Attributes { user, verb: "create", target: authz::Request::Path(flotilla_api::TOKEN_REVIEWS_PATH) };
    server.inner.authorizer.authorize(&attributes).await?;
    let mut review: TokenReview =
        serde_json::from_slice(body).map_err(|e| ApiError::bad_request(format!("a TokenReview must be JSON: {e}")))?;
    let Some(token) = review.spec.token.take().filter(|t| !t.is_empty()) else {
        return Err(ApiError::invalid(
            "authentication.k8s.io",
            "TokenReview",
            "",
            vec![flotilla_api::FieldError::required("spec.token", "")],
        )
        .into());
    };
    // The token as this server would take it from a caller: alone, with no certificate.
    let asked = http::Request::get("/")
        .header(header::AUTHORIZATION, format!("Bearer {token}"))
        .body(())
        .map_err(|e| ApiError::bad_request(format!("the token cannot be sent as a bearer token: {e}")))?;
    let status = match server.inner.authenticator.authenticate(&asked) {
        Ok(named) if !named.is_anonymous() => TokenReviewStatus {
            authenticated: Some(true),
            user: Some(ReviewedUser { username: Some(named.name), groups: Some(named.groups), ..Default::default() }),
            ..Default::default()
        },
        _ => TokenReviewStatus {
            authenticated: Some(false),
            error: Some("invalid bearer token".into()),
            ..Default::default()
        },
    };
    review.status = Some(status);
    let mut reviewed = serde_json::to_value(&review).map_err(|e| ApiError::internal(e.to_string()))?;
    reviewed["apiVersion"] = "authentication.k8s.io/v1".into();
    reviewed["kind"] = "TokenReview".into();
    Ok(reviewed)
}
