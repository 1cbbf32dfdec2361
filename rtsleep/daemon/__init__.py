"""The real-time daemon: LSL ingest, epoching, signal quality, scoring, publishing, lifecycle."""
