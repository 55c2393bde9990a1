"""The model room: a registry of immutable versions (aliases, history, lineage),
evaluation metrics, prediction from a servable artifact."""
