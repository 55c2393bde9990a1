"""Labeling: item leases for several labelers at once, overlap and agreement, review queue.

Pure logic (agreement) beside a persistence layer (leases, per-dataset labeling
settings); the API routes live in extensions/api/labeling.py and the notebook
SDK in loophub.client.labeling (``Client().labeling``).
"""
