-- The audit trail: one row per security-relevant change, written in the transaction of the change.
--
-- Events outlive what they name: no foreign key ties actor, subject or session to their rows, so deleting a user
-- keeps the record of who did what to them (until AUDIT_RETENTION purges it). Ids are UUIDv7 (time-ordered) and
-- double as the webhook-id of deliveries. `details` is a JSON object built by the domain from values that are never
-- secrets.
CREATE TABLE audit_events (
    id uuid PRIMARY KEY,
    at timestamptz NOT NULL,
    type text NOT NULL CONSTRAINT audit_events_type_length CHECK (char_length(type) BETWEEN 1 AND 64),
    actor_id uuid,
    subject_id uuid,
    session_id uuid,
    ip text CONSTRAINT audit_events_ip_length CHECK (char_length(ip) <= 64),
    user_agent text CONSTRAINT audit_events_user_agent_length CHECK (char_length(user_agent) <= 512),
    details jsonb NOT NULL DEFAULT '{}'::jsonb CONSTRAINT audit_events_details_object CHECK (jsonb_typeof(details) = 'object')
);

-- Newest first, keyset-paged on (at, id): the whole trail, and each filter the listing offers, walk an index
-- backwards in that order from the cursor (a row comparison `(at, id) < (..)` the index answers) and stop after one
-- page, whatever the size of the table. The (at, id) index also serves the retention.
CREATE INDEX audit_events_at_id_idx ON audit_events (at, id);
CREATE INDEX audit_events_subject_idx ON audit_events (subject_id, at, id) WHERE subject_id IS NOT NULL;
CREATE INDEX audit_events_actor_idx ON audit_events (actor_id, at, id) WHERE actor_id IS NOT NULL;
CREATE INDEX audit_events_type_idx ON audit_events (type, at, id);

-- Webhook endpoints, as configured (`WEBHOOK_URLS`, `WEBHOOK_EVENTS`): the service writes this table from its
-- configuration at start, never from a request, so no user can make it fetch a URL. An endpoint dropped from the
-- configuration is deactivated, not deleted, so its delivery history stays readable.
CREATE TABLE webhook_endpoints (
    id bigserial PRIMARY KEY,
    url text NOT NULL UNIQUE CONSTRAINT webhook_endpoints_url_length CHECK (char_length(url) BETWEEN 1 AND 2048),
    -- Event types delivered to it; '*' for all.
    events text[] NOT NULL,
    active boolean NOT NULL DEFAULT true
);

-- The webhook outbox: one row per event and active endpoint whose filter matches, inserted by the trigger below
-- as the event is written (so in the change's transaction). Workers claim due rows with SKIP LOCKED and lease them by
-- moving next_attempt_at, like the mail outbox; a 2xx marks the row delivered, anything else schedules a retry
-- with backoff until the endpoint's attempts are used up (then dead).
CREATE TABLE webhook_deliveries (
    event_id uuid NOT NULL REFERENCES audit_events (id) ON DELETE CASCADE,
    endpoint_id bigint NOT NULL REFERENCES webhook_endpoints (id) ON DELETE CASCADE,
    status text NOT NULL DEFAULT 'pending' CONSTRAINT webhook_deliveries_status CHECK (status IN ('pending', 'delivered', 'dead')),
    attempts integer NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL,
    last_error text,
    delivered_at timestamptz,
    PRIMARY KEY (event_id, endpoint_id)
);

CREATE INDEX webhook_deliveries_due_idx ON webhook_deliveries (next_attempt_at) WHERE status = 'pending';

-- Queues an event's deliveries as it is written: in the same transaction, whichever instance writes it, and at the
-- cost of one lookup in the (tiny) endpoint table, planned once per connection.
CREATE FUNCTION audit_events_queue_webhooks() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO webhook_deliveries (event_id, endpoint_id, next_attempt_at)
    SELECT NEW.id, endpoint.id, NEW.at FROM webhook_endpoints endpoint
    WHERE endpoint.active AND (endpoint.events @> ARRAY[NEW.type] OR endpoint.events @> ARRAY['*']);
    RETURN NULL;
END
$$;

CREATE TRIGGER audit_events_queue_webhooks AFTER INSERT ON audit_events
    FOR EACH ROW EXECUTE FUNCTION audit_events_queue_webhooks();
