"""Judging a trained model: latent statistics, importance-sampled NLL, panels, continuity and completeness."""
