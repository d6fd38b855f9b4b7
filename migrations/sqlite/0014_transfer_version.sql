-- Same as ../postgres/0014_transfer_version.sql.
ALTER TABLE seller_transfers ADD COLUMN version INTEGER NOT NULL DEFAULT 0;
