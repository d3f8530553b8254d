-- Issue 20, the bulk import's cost: a token row is written three times (issued, spent, and
-- rewritten so that its xmin no longer names the transaction that spent it). With full pages
-- each update moves the row to another page and inserts into both of its indexes (random
-- 32-byte hashes: a page read and write each). Pages filled to half keep the new version
-- beside the old one (a HOT update: no index entry), and the next update reuses the space the
-- previous one left. Only pages written from now on are filled so; VACUUM FULL repacks old ones.
ALTER TABLE ballot_tokens SET (fillfactor = 50);
