"""Long-term memory: collections of texts and vectors in one SQLite + sqlite-vec file.

`store` owns the database, `index` the exact in-memory copy used for search, `filters` the
metadata filter language, `core` the locking and threading around them, and `service` the
`memory` bus service (its docstring lists the ops).
"""
