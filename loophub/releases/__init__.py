"""Releases' rows (tables.py), kept with the domain so the store's migrations and checks
know every table without importing an adapter; the releases' rules, the replica manager
and the gateway are the serving room (serving/, ``loophub.serving``)."""
