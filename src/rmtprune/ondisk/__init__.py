"""Analysis and pruning of models on disk, one layer at a time: the inputs ``rmtprune analyze`` and
``rmtprune prune`` accept (files, shards, Hugging Face directories, factories), the streamed
analysis that never guesses a layer type, and the streamed prune that never holds the model."""
