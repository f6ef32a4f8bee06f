"""Draw icons on demand from a trained adapter: the request and its limits, where the model
comes from (the workspace or any git revision / DVC experiment), the generator, and the CLI
(`python -m iconforge.generate`). The HTTP service (iconforge.serve) is a thin shell over it."""
