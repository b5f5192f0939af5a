//! The audit trail as stored. Events caused by a change travel inside that change (on [`super::UserUpdate`],
//! [`super::NewAccount`], [`super::SecondFactorChange`] and the session, backoff and picture writes) and are
//! written in its transaction; this port writes the events that stand alone (a throttled login) and reads the
//! trail back.

use std::future::Future;

use super::PortError;
use crate::audit::{AuditEvent, EventQuery};

/// Storage of audit events.
#[cfg_attr(any(test, feature = "mock"), mockall::automock)]
pub trait AuditTrail: Send + Sync + 'static {
    /// Writes events that accompany no other change, in one transaction.
    ///
    /// # Errors
    /// [`PortError`] when storage fails; then none is stored.
    fn record_events(&self, events: Vec<AuditEvent>) -> impl Future<Output = Result<(), PortError>> + Send;

    /// One page of events matching the query, newest first (by time, then id).
    ///
    /// # Errors
    /// [`PortError`] when storage fails.
    fn list_events(&self, query: EventQuery) -> impl Future<Output = Result<Vec<AuditEvent>, PortError>> + Send;
}
