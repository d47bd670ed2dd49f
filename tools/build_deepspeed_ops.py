"""Build, at set-up time, the DeepSpeed op its first run would otherwise JIT-compile.

On a CPU-only machine ``deepspeed.initialize`` compiles its shared-memory collective op
(``deepspeed_shm_comm``, g++ through torch's cpp_extension) into ``~/.cache/torch_extensions``
the first time a process creates its communication backend: about a minute on 2 cores, paid
inside the first DeepSpeed job or test. ``make setup`` runs this once instead. On a machine with
another accelerator DeepSpeed builds no such op, and this does nothing.

    python -m tools.build_deepspeed_ops
"""

import deepspeed
from deepspeed.accelerator import get_accelerator


def main() -> None:
    accelerator = get_accelerator()
    # The same test deepspeed/comm/torch.py's build_shm_op makes before it loads the op.
    builder = accelerator.create_op_builder("ShareMemCommBuilder")
    if accelerator.device_name() != "cpu" or builder is None or not deepspeed.ops.__compatible_ops__.get(builder.NAME):
        print(f"build_deepspeed_ops: nothing to build on {accelerator.device_name()}")
        return
    builder.load(verbose=False)
    print(f"build_deepspeed_ops: {builder.absolute_name()} built")


if __name__ == "__main__":
    main()
