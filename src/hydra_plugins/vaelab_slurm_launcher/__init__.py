"""vaelab's Hydra launcher plugin: `hydra/launcher=slurm` (see vaelab.sweeps.slurm).

Hydra instantiates launchers only from the `hydra_plugins` namespace; the work is in vaelab.
"""
