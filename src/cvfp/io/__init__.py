"""Files: self-describing run directories and safetensors checkpoints."""
