//! Reading the audit trail: all of it for administrators, one's own activity for everyone.

use time::OffsetDateTime;
use uuid::Uuid;

use crate::audit::{AuditEvent, EventQuery};
use crate::permissions::Role;
use crate::ports::{AuditTrail as _, PortError, Ports};
use crate::service::Service;
use crate::sessions::Principal;

/// The largest page of events.
pub const MAX_EVENT_PAGE: u32 = 100;

/// One page of events, newest first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventPage {
    /// The events.
    pub events: Vec<AuditEvent>,
    /// Where the next page starts (the last event's time and id), when there is one.
    pub next: Option<(OffsetDateTime, Uuid)>,
}

/// Why the trail could not be read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AuditError {
    /// Only an ADMIN reads the whole trail.
    #[error("forbidden")]
    Forbidden,
    /// A dependency failed.
    #[error(transparent)]
    Port(#[from] PortError),
}

impl<P: Ports> Service<P> {
    /// One page of the whole trail, for an ADMIN, with the query's filters.
    ///
    /// # Errors
    /// [`AuditError::Forbidden`] for anyone else, or a dependency failure.
    pub async fn audit_events(&self, actor: &Principal, query: EventQuery) -> Result<EventPage, AuditError> {
        if actor.user.role != Role::Admin {
            return Err(AuditError::Forbidden);
        }
        Ok(self.event_page(query).await?)
    }

    /// One page of the events whose subject is the caller (what was done to their account, by them or by
    /// anyone else); the query's subject is replaced by the caller.
    ///
    /// # Errors
    /// A dependency failure.
    pub async fn my_activity(&self, principal: &Principal, query: EventQuery) -> Result<EventPage, PortError> {
        self.event_page(EventQuery { subject_id: Some(principal.user.id), ..query }).await
    }

    async fn event_page(&self, query: EventQuery) -> Result<EventPage, PortError> {
        let limit = query.limit.clamp(1, MAX_EVENT_PAGE);
        let mut events = self.ports.audit().list_events(EventQuery { limit: limit + 1, ..query }).await?;
        let more = events.len() > limit as usize;
        events.truncate(limit as usize);
        let next = if more { events.last().map(|last| (last.at, last.id)) } else { None };
        Ok(EventPage { events, next })
    }
}
