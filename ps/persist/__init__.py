"""Checkpoints on disk: crash-safe files, table chunk files, the coordinated layout and `CheckpointCoordinator`."""
