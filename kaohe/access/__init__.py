"""Who acts: authenticated identities (people by OIDC bearer tokens, systems by API keys) and
their role bindings per campaign and unit, kept in PostgreSQL with every change logged."""
