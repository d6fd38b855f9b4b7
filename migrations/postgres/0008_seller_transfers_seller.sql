-- Same logical schema as ../sqlite/0008_seller_transfers_seller.sql.
-- GET /v1/transfers?seller_id= and the dashboard's transfers page filter by seller and page
-- by id; without this index that is a scan of every transfer.
CREATE INDEX seller_transfers_seller ON seller_transfers (seller_id, id);
