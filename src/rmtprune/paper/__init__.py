"""The paper's wing: its experiments, the training loop they use, their models and datasets.

Only the command line (``rmtprune.cli``) imports this package; the library never does.
``from rmtprune.paper.experiments import reproduce`` runs any of the ten experiments
(the paper's nine and the regularisation × pruning ablation).
"""
