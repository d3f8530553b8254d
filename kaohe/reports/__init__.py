"""Campaign reports out of PostgreSQL: the read and XLSX (report.py), HTML charts (html.py)."""
