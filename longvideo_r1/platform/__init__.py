"""The platform room: the config tree (``config``), the ``lvr1`` command line (``cli``), the pipeline
driver and its one rule for "stage done" (``pipeline``), MLflow tracking (``tracking``) and run
comparison (``compare_runs``).

It sits on top of every other room and may import any of them; nothing imports it back.
"""
