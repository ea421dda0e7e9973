"""The speed-ups compute the same function: detections and losses before and after."""

import torch
from detectron2.layers import Conv2d
from detectron2.modeling import build_model

from fcos_d2.speedups import FrozenBNFoldedConv2d

from conftest import CONFIGS, load_config, make_instances, randomize_frozen_bn

PLAIN = ["MODEL.FCOS.CHANNELS_LAST", "False", "MODEL.FCOS.FOLD_FROZEN_BN", "False"]
FAST = ["MODEL.FCOS.CHANNELS_LAST", "True", "MODEL.FCOS.FOLD_FROZEN_BN", "True"]
# R-50 with frozen BN (the COCO configs), narrowed so the test stays fast.
SMALL_R50 = ["MODEL.FPN.OUT_CHANNELS", "64", "MODEL.FCOS.NUM_CLS_CONVS", "2", "MODEL.FCOS.NUM_BOX_CONVS", "2",
             "MODEL.FCOS.NUM_CLASSES", "5", "MODEL.FCOS.SCORE_THRESH_TEST", "0.0"]


def randomized_pair():
    """The same random weights (frozen BN statistics included) in a plain and a fast model."""
    torch.manual_seed(0)
    plain = build_model(load_config(CONFIGS / "FCOS_R_50_1x.yaml", [*SMALL_R50, *PLAIN]))
    randomize_frozen_bn(plain)
    fast = build_model(load_config(CONFIGS / "FCOS_R_50_1x.yaml", [*SMALL_R50, *FAST]))
    fast.load_state_dict(plain.state_dict())
    return plain, fast


def test_fast_model_folds_every_frozen_bn_and_keeps_the_state_dict_keys():
    plain, fast = randomized_pair()
    assert sum(isinstance(m, FrozenBNFoldedConv2d) for m in fast.modules()) == 53
    assert not any(isinstance(m, FrozenBNFoldedConv2d) for m in plain.modules())
    assert any(type(m) is Conv2d for m in plain.modules())
    assert plain.state_dict().keys() == fast.state_dict().keys()


def test_detections_are_the_same():
    plain, fast = randomized_pair()
    images = [{"image": torch.rand(3, 128, 160) * 255}, {"image": torch.rand(3, 96, 128) * 255}]
    with torch.no_grad():
        before = [o["instances"] for o in plain.eval()(images)]
        after = [o["instances"] for o in fast.eval()(images)]
    for a, b in zip(before, after):
        assert len(a) == len(b) > 0
        torch.testing.assert_close(b.scores, a.scores, atol=1e-4, rtol=0)
        torch.testing.assert_close(b.pred_boxes.tensor, a.pred_boxes.tensor, atol=1e-2, rtol=0)
        assert torch.equal(a.pred_classes, b.pred_classes)


def test_training_losses_and_gradients_are_the_same():
    plain, fast = randomized_pair()
    batch = [{"image": torch.rand(3, 128, 128) * 255,
              "instances": make_instances((128, 128), [[10, 12, 70, 90], [60, 40, 120, 100]], [1, 4])}]
    results = []
    for model in (plain, fast):
        model.train()
        losses = model(batch)
        sum(losses.values()).backward()
        grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
        results.append((losses, grads))
    (losses_a, grads_a), (losses_b, grads_b) = results
    for name in losses_a:
        torch.testing.assert_close(losses_b[name], losses_a[name], atol=1e-5, rtol=1e-4)
    assert grads_a.keys() == grads_b.keys()
    for name in grads_a:
        torch.testing.assert_close(grads_b[name], grads_a[name], atol=1e-4, rtol=1e-3, msg=name)
