from aurora.distributed.env import (DistEnv, all_reduce_named, all_reduce_sum, barrier, init_distributed,
                                    read_launch_env, shutdown)

__all__ = ["DistEnv", "all_reduce_named", "all_reduce_sum", "barrier", "init_distributed", "read_launch_env",
           "shutdown"]
