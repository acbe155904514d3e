"""What several roles share: discovery, metrics, config, launch, the PS client."""
