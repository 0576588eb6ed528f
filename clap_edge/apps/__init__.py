"""apps: the CLI, the demo, evaluation and bench orchestration. Imports every room; imported by none."""
