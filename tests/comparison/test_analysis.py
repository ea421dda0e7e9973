"""Overlap groups (fcos_d2.comparison.analysis): the other boxes become crowd, the
dataset given is left untouched."""

import copy

import pytest
from comparison_cases import CLEAR, HEAVY, LIGHT, PREDICTIONS, hand_built_dataset

from fcos_d2.comparison import analysis, bootstrap
from fcos_d2.comparison.statistics import ALL, group_datasets


def test_overlap_groups_mark_the_other_boxes_crowd():
    groups = group_datasets(hand_built_dataset())
    members = {
        g: sorted(a["id"] for a in d["annotations"] if not a["iscrowd"]) for g, d in groups.items()
    }
    assert members == {
        ALL: [1, 2, 3, 4, 5],
        CLEAR: [5],
        LIGHT: [3, 4],
        HEAVY: [1, 2],
        "IoU > 0.5": [],
    }
    split = analysis.overlap_split_metrics(hand_built_dataset(), PREDICTIONS)
    table = bootstrap.MatchTable(analysis.coco_from_dict(groups[HEAVY]), PREDICTIONS)
    # Heavy group: ranked FP (0.95), A (0.9); B never found: AP = 0.5 * 51 / 101.
    assert (
        table.metrics()["AP"]
        == pytest.approx(100 * 0.5 * 51 / 101)
        == pytest.approx(split[HEAVY]["AP"])
    )
    assert table.metrics()["R50"] == pytest.approx(50.0)


def test_copy_of_dataset_is_untouched_by_grouping():
    dataset = hand_built_dataset()
    before = copy.deepcopy(dataset)
    group_datasets(dataset)
    assert dataset == before
