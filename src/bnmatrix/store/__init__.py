"""The results store: one JSON file per cell in a run directory, written atomically, a manifest per run,
`latest`, reuse of unchanged results, merging, and loading with every file checked.

files.py (JSON I/O, vouching) <- records.py (typed results) <- searches.py, reader.py (read-only) <- runstore.py
(a run being written), merge.py.
"""
