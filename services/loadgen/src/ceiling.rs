//! The HTTP ceiling: the smallest endpoint on tracking-api's own HTTP stack (tokio, hyper, axum,
//! mimalloc, the same 202 JSON answer) that reads the body and does no other work. Run as its
//! own process under the same load, it tells how much of the machine the HTTP stack alone takes,
//! and so what share of it tracking-api's real work leaves.

use axum::{Json, Router, body::Bytes, http::StatusCode, routing::post};
use serde_json::json;

/// Serves `POST /api/tracking` on `addr` until the process is killed.
pub async fn serve(addr: &str) -> anyhow::Result<()> {
    let router = Router::new().route(
        "/api/tracking",
        post(|body: Bytes| async move {
            (
                StatusCode::ACCEPTED,
                Json(json!({"id": body.len(), "status": "accepted", "duplicate": false})),
            )
        }),
    );
    let listener = tokio::net::TcpListener::bind(addr).await?;
    axum::serve(listener, router).await?;
    Ok(())
}
