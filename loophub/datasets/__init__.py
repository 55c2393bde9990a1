"""Datasets: one JSON record format, format converters, versions, lifecycle, lineage.

The record and label-schema formats are JSON Schema 2020-12 files in ``schemas/``;
``formats`` converts the common annotation formats in and out; ``versions`` stores
records in packs and versions as manifests; ``service`` is what the API routes call.
"""
