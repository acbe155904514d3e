"""Plumbing below every role: discovery (MLPEnv, ClusterSpec), role logging, exit hook, metrics, ports,
malloc tuning, the Kafka producer. Imports no role."""
