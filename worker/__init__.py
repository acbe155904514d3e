"""Worker role: the Monolith-style model library (modeling/), the training runtime (runtime/), example models."""
