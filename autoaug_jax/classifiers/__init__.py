"""Classifiers trained inside the inner loop, behind one interface (`base.Classifier`).

Model classes only: `config.builders` builds them from a config.
"""

from autoaug_jax.classifiers.base import Classifier
from autoaug_jax.classifiers.convnet import ConvNetClassifier

__all__ = ['Classifier', 'ConvNetClassifier']
