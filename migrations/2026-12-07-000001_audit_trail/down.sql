DROP TRIGGER audit_events_queue_webhooks ON audit_events;
DROP FUNCTION audit_events_queue_webhooks();
DROP TABLE webhook_deliveries;
DROP TABLE webhook_endpoints;
DROP TABLE audit_events;
