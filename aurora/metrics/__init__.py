"""Numbers computed from a model's outputs (codec quality), shared by recipes and tools."""
