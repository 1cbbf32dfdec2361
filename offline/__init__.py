"""Offline half of rtsleep: ingest archives into a Parquet store, pretrain, fine-tune, evaluate.

``offline`` imports ``rtsleep``; ``rtsleep`` never imports ``offline``.
"""
