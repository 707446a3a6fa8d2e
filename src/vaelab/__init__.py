"""vaelab: autoencoders and (β-)VAEs on MNIST-style images."""

from vaelab.naming import register_resolvers

__version__ = "0.1.0"

# ${run_name:} and ${eval_name:...} in conf/: every process that composes a vaelab config
# (the entry points, joblib and submitit workers, the tests) has imported vaelab by then.
register_resolvers()
