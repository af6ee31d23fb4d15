"""The regularisation × pruning ablation (``rmtprune reproduce ablation``, issue 23).

Four arms per seed from the same initial weights, on the fully connected networks of
``fc-mnist`` and ``fc-fashion``: *neither* (no L1/L2, no pruning), *L1+L2 only*, *MP pruning
only*, *both*.  :mod:`~rmtprune.paper.experiments.ablation.arms` defines the arms,
:mod:`~rmtprune.paper.experiments.ablation.experiment` the presets and the registry entry,
:mod:`~rmtprune.paper.experiments.ablation.run` trains them (resumable),
:mod:`~rmtprune.paper.experiments.ablation.answers` answers the four questions with paired
tests and :mod:`~rmtprune.paper.experiments.ablation.report` writes metrics, figures and the
report.
"""

from __future__ import annotations
