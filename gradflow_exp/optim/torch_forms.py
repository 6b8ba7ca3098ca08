"""torch.optim's element-wise optimizers as the runner builds them: torch's own classes and
step code (each class here subclasses the torch class and adds nothing to its update), with
`LeanOptimizer`'s step wrapper in place of torch's, which opens a profiler scope on every
step even when nothing records it. On fig7's net that scope and its hook bookkeeping are
about 55 µs of a 400 µs SGD step (docs/speed.md). ``optimizer=sgd`` still names
``torch.optim.SGD`` (conf/optimizer/sgd.yaml); `gradflow_exp.optim.registry.build_optimizer`
builds its form here, which is an instance of ``torch.optim.SGD`` with the same state dict,
hooks and, under a profiler, the same ``Optimizer.step#SGD.step`` scope. ``FORMS`` is also the
registry's list of torch classes that stack as replicas (``ELEMENTWISE``): a class added here
must update element-wise, linear in lr with an lr-free state."""
from __future__ import annotations

import torch

from gradflow_exp.optim.base import LeanOptimizer


class SGD(LeanOptimizer, torch.optim.SGD):
    pass


class Adam(LeanOptimizer, torch.optim.Adam):
    pass


class AdamW(LeanOptimizer, torch.optim.AdamW):
    pass


class NAdam(LeanOptimizer, torch.optim.NAdam):
    pass


class Adagrad(LeanOptimizer, torch.optim.Adagrad):
    pass


class RMSprop(LeanOptimizer, torch.optim.RMSprop):
    pass


FORMS = {cls.__mro__[2]: cls for cls in (SGD, Adam, AdamW, NAdam, Adagrad, RMSprop)}


def lean_form(cls: type) -> type:
    """The form of torch.optim class ``cls`` that the runner builds (itself where none)."""
    return FORMS.get(cls, cls)
