"""autoaug-jax: learning to generate few-shot training data with exact meta-gradients.

Modules in data-flow order: `data` -> `tasks` -> `augmenters` -> `classifiers`
-> `inner_loop` -> `outer_step` -> `evaluation` -> `report`; `train` is the
orchestrator and `main`, `evaluate`, `benchmark`, `data.prepare` the entry
points.
"""

__version__ = '0.1.0'
