from setuptools import find_packages, setup

setup(
    name="aurora",
    version="0.1.0",
    description="Distributed training framework for large audio models",
    packages=find_packages(include=["aurora", "aurora.*", "data_prep", "tools", "tools.*"]),
    # The remote code an hf export copies into its folder (templates, not a package of aurora's).
    package_data={"aurora.release": ["hf_code/*.py"]},
    python_requires=">=3.10",
    install_requires=[
        # The accelerator image's versions: CPU CI and GPU runs execute the same library code.
        "torch==2.11.0",
        "torchaudio==2.11.0",
        "numpy",
        "webdataset>=1.0",
        "omegaconf>=2.3",
        "soundfile>=0.12",
        "safetensors",
        # Sharded safetensors folders and their index, as transformers writes and reads them.
        "huggingface_hub",
        "tqdm",
        "wandb",
        "matplotlib",
        # engine.name=deepspeed (ZeRO 1/2/3); the version the engine and its tests were written against.
        "deepspeed==0.19.8",
        # Codec evaluation on 16 kHz speech: wideband PESQ (built from source) and STOI.
        "pesq==0.0.4",
        "pystoi==0.4.1",
        # The diffusion teacher's noise schedule and samplers, the LCM student's multistep sampler.
        "diffusers==0.42.1",
    ],
    extras_require={
        # DALI's CUDA 13 wheel also runs its CPU pipelines, so the tests exercise data.backend=dali.
        "dali": ["nvidia-dali-cuda130"],
        "test": ["pytest", "pytest-random-order", "hypothesis", "transformers>=4.45", "nvidia-dali-cuda130"],
    },
    entry_points={"console_scripts": ["aurora=aurora.cli:main"]},
)
