"""vaelab's Hydra launcher plugin: `hydra/launcher=stacked` (see vaelab.sweeps.stacked).

Hydra instantiates launchers only from the `hydra_plugins` namespace; the work is in vaelab.
"""
