"""The embedded dev stack of `kaohe dev`, the tests and the benchmarks: PostgreSQL, Temporal."""
