"""Run under torchrun by tests/test_train.py: a few steps of 2-process CPU training, then checks
that every rank holds bit-identical parameters and writes the verdict to argv[1]."""

import hashlib
import json
import sys

import torch
import torch.distributed as dist

from radd_fast.train import TrainConfig, exit_process, train

out_file, run_dir, cache = sys.argv[1], sys.argv[2], sys.argv[3]
dist.init_process_group("gloo")  # ours, so train() leaves it up for the check below
cfg = TrainConfig(out_dir=run_dir, model="tiny", model_overrides={"n_blocks": 1, "hidden_size": 32, "n_heads": 2},
                  length=32, batch_size=4, steps=6, warmup=2, eval_every=0, save_every=3, log_every=1,
                  cache_dir=cache, progress=False, seed=5)
res = train(cfg)
model = res["model"]
digest = hashlib.sha256(b"".join(p.detach().numpy().tobytes() for p in model.parameters())).hexdigest()
digests = [None] * dist.get_world_size()
dist.all_gather_object(digests, digest)
# the ranks trained on different data: their local losses differ, their parameters must not
if dist.get_rank() == 0:
    with open(out_file, "w") as f:
        json.dump({"digests": digests, "world": dist.get_world_size(), "step": res["step"]}, f)
dist.barrier()
dist.destroy_process_group()
exit_process(0)  # as `radd-fast train` does after DDP: see exit_process
