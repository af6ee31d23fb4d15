"""The classification family (docs/method.md sections 5 and 6): a normal and a pruned arm per
seed from the same initial weights, baselines after training at the same budget, claims, reports,
the demo."""
