"""The scaling cost model behind ``python -m tools.scale_model``: collective costs
(``collectives``), what each data-parallel mode communicates and stores (``modes``), a model's
size, FLOPs and activations from its config (``profile``), and step-time prediction
(``predict``). See docs/scaling.md for the formulas and their assumptions."""
