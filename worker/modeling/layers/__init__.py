"""Layer building blocks shared by model functions."""
