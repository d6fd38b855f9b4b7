-- Seller transfers are versioned: every transition bumps `version`, and a self-transition
-- (failed -> failed, reversal_pending -> reversal_pending: a retry bump) is guarded by the
-- version its caller read, so that a concurrent writer is detected (engine::state_machine).
ALTER TABLE seller_transfers ADD COLUMN version BIGINT NOT NULL DEFAULT 0;
