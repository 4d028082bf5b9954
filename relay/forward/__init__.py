"""Forwarding: one delivery loop per destination, and the pure policies it applies.

    forwarder.py  read after the cursor, send, record progress
    ledger.py     which batches are finished, and how far the cursor may move
    retry.py      what an answer means, and how long to wait
    batching.py   cutting the queue into requests
    pacing.py     at most N events a second
"""
