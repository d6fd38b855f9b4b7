-- Indexes for the admin reads (listings and counts). Same logical schema as ../postgres/0008_listing_indexes.sql.

-- GET /v1/transfers?seller_id= and the dashboard's transfers page filter by seller and page
-- by id; without this index that is a scan of every transfer.
CREATE INDEX seller_transfers_seller ON seller_transfers (seller_id, id);

-- GET /v1/deletions pages the few accounts with a deletion by id, among every user.
CREATE INDEX users_with_deletion ON users (id) WHERE status <> 'active';

-- /v1/queues, /metrics and the dashboard count the attempts finished in the last hour.
CREATE INDEX job_attempts_finished ON job_attempts (finished_at);
