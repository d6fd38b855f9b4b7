-- Same as ../postgres/0015_webhook_event_privacy.sql (the reasons are there).
ALTER TABLE webhook_events ADD COLUMN payment_intent_id TEXT;
ALTER TABLE webhook_events ADD COLUMN charge_id TEXT;

UPDATE webhook_events SET
    payment_intent_id = CASE
        WHEN json_extract(payload, '$.data.object.object') = 'payment_intent'
            THEN json_extract(payload, '$.data.object.id')
        WHEN json_type(payload, '$.data.object.payment_intent') = 'object'
            THEN json_extract(payload, '$.data.object.payment_intent.id')
        ELSE json_extract(payload, '$.data.object.payment_intent')
    END,
    charge_id = CASE
        WHEN json_extract(payload, '$.data.object.object') = 'charge'
            THEN json_extract(payload, '$.data.object.id')
        WHEN json_type(payload, '$.data.object.charge') = 'object'
            THEN json_extract(payload, '$.data.object.charge.id')
        WHEN json_type(payload, '$.data.object.latest_charge') = 'object'
            THEN json_extract(payload, '$.data.object.latest_charge.id')
        ELSE COALESCE(json_extract(payload, '$.data.object.charge'),
                      json_extract(payload, '$.data.object.latest_charge'))
    END
WHERE json_valid(payload);

CREATE INDEX webhook_events_order ON webhook_events (order_id);
CREATE INDEX webhook_events_payment_intent ON webhook_events (payment_intent_id);
CREATE INDEX webhook_events_charge ON webhook_events (charge_id);
