"""The reference classifier's networks under a second import path; defined in ``evaluation.classifier.nets``."""

from .classifier.nets import ARCHS, DenseNetCXR, SmallCNN, build_densenet121, build_net, n_parameters

__all__ = ["ARCHS", "DenseNetCXR", "SmallCNN", "build_densenet121", "build_net", "n_parameters"]
