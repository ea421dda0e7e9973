#!/usr/bin/env python
"""Time another checkout's fcos_d2 against Detectron2's FCOS, interleaved, in one process.

    git worktree add /tmp/old 53934ed
    python tools/bench_tree.py /tmp/old      # that tree's fcos_d2 and configs/FCOS_R_50_1x.yaml
    python tools/bench_tree.py .             # this one

For bisecting a speed change: each run prints ours / Detectron2's FCOS (ratio of the
minimum and of the median) for a training step (2 images) and an inference (1 image) at
512x640, random weights, score threshold 0. Self-contained on purpose (only
``add_fcos_config`` and the config file are taken from the tree), so that it runs on
trees older than ``fcos_d2.benchmark.check``. Alternate the trees, several runs each: on
this 2-core machine one run's ratio moves by a few hundredths.
"""

import argparse
import statistics
import sys
import time
from pathlib import Path


def import_tree(tree: Path):
    """Import ``fcos_d2`` from ``tree`` rather than from the installed (editable) package."""
    sys.meta_path[:] = [f for f in sys.meta_path if "editable" not in repr(f).lower()]
    sys.path.insert(0, str(tree))
    import fcos_d2

    if not Path(fcos_d2.__file__).resolve().is_relative_to(tree):
        raise SystemExit(f"fcos_d2 came from {fcos_d2.__file__}, not from {tree}")
    return fcos_d2


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("tree", help="a checkout of fcos_d2 (e.g. a git worktree)")
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    args = parser.parse_args()
    tree = Path(args.tree).resolve()
    fcos_d2 = import_tree(tree)

    import torch
    from detectron2 import model_zoo
    from detectron2.config import get_cfg, instantiate
    from detectron2.modeling import build_model
    from detectron2.structures import Boxes, Instances
    from detectron2.utils.events import EventStorage

    cfg = get_cfg()
    fcos_d2.add_fcos_config(cfg)
    cfg.merge_from_file(str(tree / "configs" / "FCOS_R_50_1x.yaml"))
    cfg.merge_from_list(["MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", ""])
    cfg.merge_from_list(["MODEL.FCOS.SCORE_THRESH_TEST", "0.0"])
    torch.manual_seed(0)
    models = {"ours": build_model(cfg)}
    lazy = model_zoo.get_config("COCO-Detection/fcos_R_50_FPN_1x.py")
    lazy.model.test_score_thresh = 0.0
    torch.manual_seed(0)
    models["d2"] = instantiate(lazy.model)

    g = torch.Generator().manual_seed(0)

    def sample() -> dict:
        corner = torch.rand(10, 2, generator=g) * torch.tensor([540.0, 420.0])
        size = 20 + torch.rand(10, 2, generator=g) * 80
        instances = Instances((512, 640))
        instances.gt_boxes = Boxes(torch.cat([corner, corner + size], dim=1))
        instances.gt_classes = torch.randint(0, 80, (10,), generator=g)
        return {"image": torch.rand(3, 512, 640, generator=g) * 255, "instances": instances}

    train_batch, infer_batch = [sample(), sample()], [sample()]

    def phases(model):
        trainable = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.SGD(trainable, lr=0.0, momentum=0.9)

        def train():
            model.train()
            sum(model(train_batch).values()).backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        def infer():
            model.eval()
            with torch.no_grad():
                model(infer_batch)

        return {"train": train, "infer": infer}

    steps = {name: phases(model) for name, model in models.items()}
    seconds = {name: {"train": [], "infer": []} for name in models}
    with EventStorage():
        for _ in range(args.warmup):
            for name in models:
                for phase in ("train", "infer"):
                    steps[name][phase]()
        for rep in range(args.reps):
            order = ["ours", "d2"] if rep % 2 == 0 else ["d2", "ours"]
            for phase in ("train", "infer"):
                for name in order:
                    start = time.perf_counter()
                    steps[name][phase]()
                    seconds[name][phase].append(time.perf_counter() - start)
    for phase in ("train", "infer"):
        ours, d2 = seconds["ours"][phase], seconds["d2"][phase]
        print(
            f"{tree} {phase}: ratio min {min(ours) / min(d2):.3f} median "
            f"{statistics.median(ours) / statistics.median(d2):.3f} (median s: ours "
            f"{statistics.median(ours):.3f}, d2 {statistics.median(d2):.3f})",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
