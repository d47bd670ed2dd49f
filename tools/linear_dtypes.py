"""``aurora train`` that also says in which dtypes its Linear layers computed.

    python -m tools.linear_dtypes CONFIG [key=value ...]

A bf16 run whose matmuls ran in fp32 trains, only slower, and reports MFU against the bf16
peak: DeepSpeed, for one, switches an autocast it finds around its forward off on CUDA unless
its config says otherwise. This counts the output dtypes of every ``nn.Linear`` forward in the
run (a global forward hook) and prints them at the end, for ``tools/gpu_check.sh``.
"""

import sys
from collections import Counter

import torch

from aurora.cli import main as aurora_main


def main(argv: list[str] | None = None) -> None:
    dtypes: Counter[str] = Counter()

    def record(module, args, output):
        if isinstance(module, torch.nn.Linear) and isinstance(output, torch.Tensor):
            dtypes[str(output.dtype).removeprefix("torch.")] += 1

    hook = torch.nn.modules.module.register_module_forward_hook(record)
    try:
        aurora_main(["train", *(sys.argv[1:] if argv is None else argv)])
    finally:
        hook.remove()
        counts = ", ".join(f"{name} x{n}" for name, n in dtypes.most_common()) or "none ran"
        print(f"linear_dtypes: Linear outputs: {counts}", flush=True)


if __name__ == "__main__":
    main()
