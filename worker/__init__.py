"""Worker role: the Monolith-style model API and the training loop."""
