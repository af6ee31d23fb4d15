"""Model-level analysis and pruning: the walker, schedules and the training-time pruner."""
