"""Releases: ``aurora export`` writes a training run's model in the formats others load
(aurora's exported folder, a transformers folder for the audio LM, transformers' DAC for the
codec), and ``model.init_from`` reads pretrained weights in (a transformers Qwen2 folder, or
another run's checkpoint). Every file written is safetensors or JSON (or, for the transformers
folder, its remote code and model card, as text)."""
