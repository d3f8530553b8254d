-- Reports may be a reference to a file in a document system instead of text.
ALTER TABLE reports ALTER COLUMN body DROP NOT NULL;
ALTER TABLE reports ADD COLUMN file_uri text;
ALTER TABLE reports ADD COLUMN file_sha256 text;
ALTER TABLE reports ADD COLUMN file_size bigint;
ALTER TABLE reports ADD COLUMN file_media_type text;
ALTER TABLE reports ADD CONSTRAINT reports_text_or_file
    CHECK ((body IS NULL) <> (file_uri IS NULL));
