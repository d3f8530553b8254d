-- Issue 20 item 4: the voting page knows only the rater's token (the QR slip's fragment,
-- #t=TOKEN), not the unit it was issued for. kaohe's API finds the token by its sha256 alone
-- (kaohe/api/vote.py): the primary key (workflow_id, token_hash) cannot serve that.
CREATE INDEX IF NOT EXISTS ballot_tokens_by_hash ON ballot_tokens (token_hash);
