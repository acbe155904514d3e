"""Above every role: the `monolith` CLI, local and Ray launchers, run_role (MLP_*/TF_CONFIG), the demo."""
