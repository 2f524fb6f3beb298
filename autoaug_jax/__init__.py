"""autoaug-jax: learning to generate few-shot training data with exact meta-gradients.

A one-way stack; each layer imports only the ones below it:

1. entry points (flags only): `main`, `evaluate`, `benchmark`, `data.prepare`;
2. `run/`: the orchestrators (train, evaluate, benchmark, sweep) and everything a
   run writes;
3. `config/`: schema, validation and builders, the only code besides the
   orchestrators that reads a ConfigDict;
4. `core/`: the pure core (tasks, inner loop, objective, meta-step, evaluation);
5. `augmenters/`, `classifiers/`: model families;
6. `pretrained/`, `layers`: model loading and shared layers;
7. `data/`;
8. leaves: `errors`, `statistics`, `types`.

Data flows dataset -> task sampler -> augmenter -> inner loop -> objective
-> meta-step -> evaluation -> report.
"""

__version__ = '0.1.0'
