//! The handshake: `AUTH` → JWT verification → `AUTH_ACK`, or `AUTH_FAIL` and close 4001.
//!
//! Every `AUTH` gets an answer, duplicates included (the 2026-01 client sends two and never
//! proceeds without an `AUTH_ACK`).

use std::sync::Arc;

use crate::protocol::{Auth, AuthAck, AuthFail};

use super::Shared;
use super::dispatch::Flow;
use super::metrics::Metrics;
use super::session::{CLOSE_UNAUTHORIZED, Session};

/// Handles one `AUTH`.
pub async fn handle_auth(shared: &Arc<Shared>, session: &mut Session, auth: Auth) -> Flow {
    if auth.device_token.is_some() {
        session.note_generation(crate::merkle::Combine::Fmix);
    }
    let now_secs = shared.now_millis() / 1_000;
    match shared.verifier.verify(&auth.token, now_secs) {
        Ok(principal) => {
            if session.principal.is_none() {
                tracing::info!(conn = session.id, user = %principal.user_id, roles = ?principal.roles, "authenticated");
            }
            let ack = AuthAck {
                user_id: Some(principal.user_id.clone()),
                ..AuthAck::default()
            };
            session.principal = Some(principal);
            session.heartbeat();
            let _ = session.send(shared, ack);
            // After the ack, so a GC pass cannot slip a GC_PRUNE in before it.
            shared.gc_audience.admit(session.id);
            Flow::Continue
        }
        Err(e) if session.is_authenticated() => {
            // A bad duplicate AUTH must not unseat a good session; tell the client and go on.
            tracing::debug!(conn = session.id, error = %e, "ignoring failed duplicate AUTH");
            let _ = session.send(
                shared,
                AuthFail {
                    error: Some(e.to_string()),
                    code: Some(401),
                },
            );
            Flow::Continue
        }
        Err(e) => {
            Metrics::inc(&shared.metrics.auth_failures);
            tracing::info!(conn = session.id, peer = %session.peer, error = %e, "authentication failed");
            let _ = session.send(
                shared,
                AuthFail {
                    error: Some(e.to_string()),
                    code: Some(401),
                },
            );
            session.close(CLOSE_UNAUTHORIZED, "Unauthorized").await;
            Flow::Closed
        }
    }
}
