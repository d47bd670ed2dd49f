"""What the tests share: shard builders, runners, worker pools, readers of runs."""
