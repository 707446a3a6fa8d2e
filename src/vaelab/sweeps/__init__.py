"""Sweeps: multirun jobs (failures, W&B groups, jobs on several devices) and their summary table."""
