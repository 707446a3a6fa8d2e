"""The tasks that the entry points (train.py, eval.py) run, and what they share."""
