-- Indexes for the admin reads (listings and counts) of the application's tables.
-- (The engine's own, job_attempts_finished, is in engine/migrations/*/0002_runtime.sql;
-- databases migrated before the engine had its own migrator are adopted by engine::db.)
-- Same logical schema as ../sqlite/0008_listing_indexes.sql.

-- GET /v1/transfers?seller_id= and the dashboard's transfers page filter by seller and page
-- by id; without this index that is a scan of every transfer.
CREATE INDEX seller_transfers_seller ON seller_transfers (seller_id, id);

-- GET /v1/deletions pages the few accounts with a deletion by id, among every user.
CREATE INDEX users_with_deletion ON users (id) WHERE status <> 'active';
