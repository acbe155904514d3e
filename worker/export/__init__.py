"""Exporting trained models as TensorFlow SavedModels that serve without custom ops or project code."""
