"""`routegate report`: spend, traffic and savings read back from the SQLite request log.

`load.py` reads the log in batches, `stats.py` accumulates one group's figures, `baseline.py`
prices the counterfactual, `build.py` puts a whole report together, `charts.py` gathers the HTML
charts' series and `render.py` writes it out as a table, CSV, JSON or HTML.
"""
