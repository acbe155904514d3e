"""The training runtime: the `Estimator` loop, parameter backends, batch preparation, lookup and push threads."""
