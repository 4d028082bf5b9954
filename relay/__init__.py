"""relay: an edge relay for Segment-compatible product-analytics events."""

__version__ = "0.1.0"
