"""Files coming in: ballot CSVs and tokens, rosters as YAML, XLSX or CSV sheets, policies."""
