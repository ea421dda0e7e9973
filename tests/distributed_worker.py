"""Run by test_reliability in processes started by Detectron2's ``launch``."""

import json
import os
import sys

import torch
import torch.distributed as dist
from conftest import load_config, make_instances
from detectron2.modeling import build_model
from detectron2.utils import comm

# One CPU-friendly model whose backbone has no batch statistics (FrozenBN, GN head),
# so splitting the batch over processes changes nothing but the loss normalisers.
OPTS = ["MODEL.RESNETS.NORM", "FrozenBN", "MODEL.FCOS.NUM_CLASSES", "3"]


def batch():
    """Four images with 3, 1, 0 and 2 boxes: an uneven split of positives."""
    generator = torch.Generator().manual_seed(3)
    boxes = [
        [[2, 2, 30, 40], [20, 10, 60, 50], [40, 40, 62, 62]],
        [[10, 10, 20, 22]],
        [],
        [[0, 0, 64, 64], [5, 30, 40, 60]],
    ]
    return [
        {
            "image": torch.rand(3, 64, 64, generator=generator) * 255,
            "instances": make_instances((64, 64), b, [i % 3 for i in range(len(b))]),
        }
        for b in boxes
    ]


def losses_of(images):
    torch.manual_seed(0)
    model = build_model(load_config(opts=OPTS))
    model.train()
    return {k: v.item() for k, v in model(images).items()}


def worker(output_file: str) -> None:
    """Each of the processes takes its share of the batch; rank 0 writes the mean losses."""
    rank, world = comm.get_rank(), comm.get_world_size()
    images = batch()
    share = len(images) // world
    losses = losses_of(images[rank * share : (rank + 1) * share])
    gathered = comm.all_gather(losses)
    if rank == 0:
        mean = {k: sum(g[k] for g in gathered) / world for k in losses}
        with open(output_file, "w") as f:
            json.dump(mean, f)
    comm.synchronize()
    dist.destroy_process_group()
    # About 1 exit in 20, a C++ destructor run after the interpreter has shut down aborts
    # ("terminate called without an active exception", no Python frame), and launch
    # reports the SIGABRT as a failure. The work is done and written: leave without it.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
