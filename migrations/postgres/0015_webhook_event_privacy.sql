-- Stored Stripe events and the buyer's erasure (GDPR Art. 17).
-- Same logical schema as ../sqlite/0015_webhook_event_privacy.sql.
--
-- The payment intent and charge an event is about, so that hard_delete finds every event of
-- the buyer's payments, including those refused or ignored before their order recorded the
-- payment (jobs/src/payments/event.rs, jobs/src/hard_delete/database.rs). Payloads are
-- stored without personal fields from now on; older ones are erased by hard_delete or
-- after WEBHOOK_EVENT_RETENTION (prune_webhook_events).
ALTER TABLE webhook_events ADD COLUMN payment_intent_id TEXT;
ALTER TABLE webhook_events ADD COLUMN charge_id TEXT;

-- Events stored before this migration: the same ids, read from their payload (an expandable
-- reference is a string or an object with an id).
UPDATE webhook_events SET
    payment_intent_id = CASE
        WHEN payload::jsonb #>> '{data,object,object}' = 'payment_intent'
            THEN payload::jsonb #>> '{data,object,id}'
        WHEN jsonb_typeof(payload::jsonb #> '{data,object,payment_intent}') = 'object'
            THEN payload::jsonb #>> '{data,object,payment_intent,id}'
        ELSE payload::jsonb #>> '{data,object,payment_intent}'
    END,
    charge_id = CASE
        WHEN payload::jsonb #>> '{data,object,object}' = 'charge'
            THEN payload::jsonb #>> '{data,object,id}'
        WHEN jsonb_typeof(payload::jsonb #> '{data,object,charge}') = 'object'
            THEN payload::jsonb #>> '{data,object,charge,id}'
        WHEN jsonb_typeof(payload::jsonb #> '{data,object,latest_charge}') = 'object'
            THEN payload::jsonb #>> '{data,object,latest_charge,id}'
        ELSE COALESCE(payload::jsonb #>> '{data,object,charge}',
                      payload::jsonb #>> '{data,object,latest_charge}')
    END;

CREATE INDEX webhook_events_order ON webhook_events (order_id);
CREATE INDEX webhook_events_payment_intent ON webhook_events (payment_intent_id);
CREATE INDEX webhook_events_charge ON webhook_events (charge_id);
