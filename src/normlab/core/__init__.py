"""The training core: norm layers, networks, batch augmentation, the run records and the
training loop. Knows nothing of study folders, plots or terminals."""
