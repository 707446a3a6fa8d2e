"""What reads finished runs' records (metrics.json, .hydra/, W&B's offline logs), without torch: the
sweep summary, the comparison of runs, the W&B dashboard, markdown tables.

    python -m vaelab.reports.summary <sweep dir>            rebuild a sweep's summary
    python -m vaelab.reports.compare <run or sweep dirs>    compare finished runs
    python -m vaelab.reports.dashboard <sweep dir>          the W&B dashboard of a sweep
"""
