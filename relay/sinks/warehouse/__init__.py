"""Warehouse destinations: Segment's warehouse schema in DuckDB, PostgreSQL and Parquet files.

``schema`` maps a message to table rows (pure), ``load`` plans one load over a batch (pure),
``base`` is the sink the three types share; ``duckdb``, ``postgres`` and ``parquet`` write.
The heavy libraries are imported only by the type that uses them (extra ``warehouse``).
"""
