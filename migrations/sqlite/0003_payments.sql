-- Payments: orders paid through Stripe, the sellers' connected accounts, one payout
-- (seller transfer) per order item and its reversal after a refund, the Stripe webhook
-- events received, refunds, and the drift detector's findings.
-- Same logical schema as ../postgres/0003_payments.sql.
-- Amounts are integers in the currency's minor unit (cents); currencies are lower-case ISO
-- 4217 codes as Stripe writes them ("eur"). Times are INTEGER milliseconds since the epoch.
-- Only jobs/src/transfers/state.rs writes seller_transfers (its status and retry columns).

CREATE TABLE orders (
    id                       INTEGER PRIMARY KEY AUTOINCREMENT,
    buyer_id                 INTEGER,
    currency                 TEXT   NOT NULL CHECK (currency = lower(currency) AND length(currency) = 3),
    amount_total             INTEGER NOT NULL CHECK (amount_total > 0),  -- what the buyer pays
    stripe_payment_intent_id TEXT UNIQUE,                               -- pi_…, set by payment_intent.succeeded
    stripe_charge_id         TEXT,                                      -- ch_…, the payment's charge
    paid_at                  INTEGER,
    refunded_at              INTEGER,                                    -- the payment was fully refunded
    created_at               INTEGER NOT NULL,
    updated_at               INTEGER NOT NULL
);
CREATE INDEX orders_charge ON orders (stripe_charge_id);

CREATE TABLE order_items (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    order_id    INTEGER NOT NULL REFERENCES orders (id),
    seller_id   INTEGER NOT NULL,
    product_ref TEXT,                                 -- what was sold (track, licence), for people
    amount      INTEGER NOT NULL CHECK (amount > 0),   -- the seller's share, paid out to them
    currency    TEXT   NOT NULL,
    created_at  INTEGER NOT NULL
);
CREATE INDEX order_items_order ON order_items (order_id, id);

CREATE TABLE seller_accounts (
    seller_id         INTEGER PRIMARY KEY,
    stripe_account_id TEXT   NOT NULL UNIQUE,         -- acct_…, the transfers' destination
    created_at        INTEGER NOT NULL,
    updated_at        INTEGER NOT NULL
);

-- One payout per order item. Lifecycle (jobs/src/transfers/state.rs):
--   pending → completed | failed | cancelled;  failed → completed | permanently_failed | cancelled
--   completed → reversal_pending;  reversal_pending → reversed | permanently_failed
--   admin retry: permanently_failed → failed | reversal_pending
CREATE TABLE seller_transfers (
    id                  INTEGER PRIMARY KEY AUTOINCREMENT,
    order_id            INTEGER NOT NULL REFERENCES orders (id),
    order_item_id       INTEGER NOT NULL UNIQUE REFERENCES order_items (id),
    seller_id           INTEGER NOT NULL,
    amount              INTEGER NOT NULL CHECK (amount > 0),
    currency            TEXT   NOT NULL,
    status              TEXT   NOT NULL CHECK (status IN ('pending', 'completed', 'failed',
        'permanently_failed', 'cancelled', 'reversal_pending', 'reversed')),
    stripe_transfer_id  TEXT,                      -- tr_…, once paid out
    stripe_reversal_id  TEXT,                      -- trr_…, once reversed
    retry_count         INTEGER NOT NULL DEFAULT 0 CHECK (retry_count >= 0),  -- failed attempts of the current phase
    next_retry_at       INTEGER,                    -- when the next attempt is due
    last_error          TEXT,
    payout_attempted_at INTEGER,                    -- a payout call was started: a transfer may exist on Stripe
    key_generation      INTEGER NOT NULL DEFAULT 0, -- bumped by an admin retry: fresh idempotency keys
    created_at          INTEGER NOT NULL,
    updated_at          INTEGER NOT NULL
);
CREATE INDEX seller_transfers_order ON seller_transfers (order_id, id);
CREATE INDEX seller_transfers_status ON seller_transfers (status, id);
CREATE INDEX seller_transfers_stripe ON seller_transfers (stripe_transfer_id);

-- Every Stripe event received, once: a redelivery finds its id and changes nothing.
CREATE TABLE webhook_events (
    id          TEXT   PRIMARY KEY,                -- evt_…
    type        TEXT   NOT NULL,
    object_id   TEXT,                              -- data.object.id
    order_id    INTEGER,
    outcome     TEXT   NOT NULL,                   -- what processing did: transfers_created, refunded, …
    note        TEXT,
    actor       TEXT   NOT NULL,
    received_at INTEGER NOT NULL,
    payload     TEXT   NOT NULL                    -- the event as JSON
);
CREATE INDEX webhook_events_received ON webhook_events (received_at);

-- Refunds seen in webhook events. Full refunds reverse the payouts; partial ones are only
-- recorded here and listed for an admin.
CREATE TABLE payment_refunds (
    id               INTEGER PRIMARY KEY AUTOINCREMENT,
    order_id         INTEGER NOT NULL REFERENCES orders (id),
    event_id         TEXT   NOT NULL UNIQUE REFERENCES webhook_events (id),
    source           TEXT   NOT NULL CHECK (source IN ('charge', 'refund')),
    stripe_object_id TEXT   NOT NULL,              -- ch_… (charge.refunded) or re_… (refund.*)
    amount           INTEGER NOT NULL,              -- charge: refunded so far; refund: this refund
    amount_total     INTEGER NOT NULL,              -- the payment
    currency         TEXT   NOT NULL,
    kind             TEXT   NOT NULL CHECK (kind IN ('full', 'partial')),
    created_at       INTEGER NOT NULL
);
CREATE INDEX payment_refunds_order ON payment_refunds (order_id, id);
CREATE INDEX payment_refunds_kind ON payment_refunds (kind, id);

-- The drift detector (reconcile_transfers): each disagreement between a row and Stripe's
-- view of its transfer, once per (transfer, kind); resolved_at is set when they agree again.
CREATE TABLE transfer_findings (
    id                     INTEGER PRIMARY KEY AUTOINCREMENT,
    seller_transfer_id     INTEGER NOT NULL REFERENCES seller_transfers (id),
    stripe_transfer_id     TEXT   NOT NULL,
    kind                   TEXT   NOT NULL,        -- not_reversed_on_stripe, reversed_on_stripe, …
    row_status             TEXT   NOT NULL,
    row_amount             INTEGER NOT NULL,
    stripe_amount          INTEGER,
    stripe_amount_reversed INTEGER,
    stripe_reversed        INTEGER,                 -- 0/1, NULL when Stripe has no such transfer
    detail                 TEXT   NOT NULL,
    first_seen_at          INTEGER NOT NULL,
    last_seen_at           INTEGER NOT NULL,
    resolved_at            INTEGER,
    UNIQUE (seller_transfer_id, kind)
);
CREATE INDEX transfer_findings_open ON transfer_findings (resolved_at, id);
