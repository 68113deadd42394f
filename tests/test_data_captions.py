"""The caption miner: phrases, plurals, negation, aggregation, and its report against hand labels."""

from __future__ import annotations

import json

import numpy as np
import pytest

from cocoattr.cli import main as cli_main
from cocoattr.data.captions import CaptionMiner, compare, miner_report
from cocoattr.vocab import lemma, load_vocabulary, tokenize


@pytest.fixture(scope="module")
def miner() -> CaptionMiner:
    return CaptionMiner(load_vocabulary())


def test_tokenize_and_lemma():
    assert tokenize("A man isn't wearing see-through glasses, no one's there.") == [
        "a", "man", "is", "not", "wearing", "see", "through", "glasses", ",", "noone", "there", ".",
    ]  # fmt: skip
    words = ["dogs", "buses", "skies", "tomatoes", "boxes", "men", "glass", "bus", "shoes"]
    assert [lemma(w) for w in words] == [
        "dog", "bus", "sky", "tomato", "box", "man", "glass", "bus", "shoe",
    ]  # fmt: skip


def test_plurals_and_longest_phrase(miner):
    pos, neg = miner.mine("Two zebras and some giraffes near the trees")
    assert {"zebra", "giraffe", "animal", "trees"} <= pos and not neg
    pos, _ = miner.mine("A polar bear on the ice")
    assert {"bear", "snow"} <= pos
    pos, _ = miner.mine("a hot dog with mustard")
    assert "bread" in pos and "dog" not in pos
    pos, _ = miner.mine("a fire truck next to a fire hydrant")
    assert {"truck", "vehicle"} <= pos and "lit" not in pos
    pos, _ = miner.mine("a teddy bear on a sofa in the living room")
    assert {"toy", "living room", "indoor", "furniture"} <= pos and "bear" not in pos


def test_surface_form_beats_lemma(miner):
    assert "wearing glasses" in miner.mine("a man with glasses")[0]
    assert "glass" not in miner.mine("a man with glasses")[0]
    pos, _ = miner.mine("a glass window")
    assert "glass" in pos and "wearing glasses" not in pos
    assert "short" not in miner.mine("a boy in shorts")[0]


@pytest.mark.parametrize(
    "caption,negated,present",
    [
        ("A man without a hat standing on a street.", {"wearing hat"}, {"man", "standing", "street"}),
        ("There are no cars on the road.", {"car"}, {"road"}),
        ("no people on the beach", {"person", "man", "woman", "child"}, {"beach"}),
        ("a man not wearing glasses", {"wearing glasses"}, {"man"}),
        ("a woman isn't wearing a helmet", {"wearing hat"}, {"woman"}),
        ("a kid without a hat or glasses smiling", {"wearing hat", "wearing glasses"}, {"child", "smiling"}),
        ("a street with no cars and a bus", {"car"}, {"bus", "street"}),
        ("nobody in the kitchen", {"person"}, {"kitchen", "indoor"}),
    ],
)
def test_negation(miner, caption, negated, present):
    pos, neg = miner.mine(caption)
    assert negated <= neg
    assert not negated & pos
    assert present <= pos
    assert not present & neg


def test_present_and_negated_counts_as_present(miner):
    pos, neg = miner.mine("a man with a hat next to a man without a hat")
    assert "wearing hat" in pos and "wearing hat" not in neg


def test_labels_aggregate_captions(miner):
    vocab = miner.vocab
    caps = [
        "A dog runs on the grass outside.",
        "A brown dog playing outdoors with a ball.",
        "There are no people in the park.",
        "A puppy running in a park.",
        "A dog outside with a red ball.",
    ]
    labels = miner.labels(caps)
    assert labels.dtype == np.int8 and labels.shape == (len(vocab),)
    v = {n: int(labels[vocab.index(n)]) for n in vocab.names}
    assert v["dog"] == 1 and v["outdoor"] == 1 and v["running"] == 1 and v["red"] == 1
    assert v["person"] == 0 and v["woman"] == 0  # negated, never mentioned
    assert v["indoor"] == 0  # outdoor stated in >= 2 captions
    assert v["cat"] == -1 and v["blue"] == -1  # never mentioned: unknown, not negative
    assert sum(1 for x in v.values() if x == 0) < 20


def test_exclusion_needs_two_votes_and_min_votes(miner):
    vocab = miner.vocab
    one = miner.labels(["a dog outside", "a brown dog"])
    assert one[vocab.index("indoor")] == -1
    strict = CaptionMiner(vocab, min_votes=2)
    labels = strict.labels(["a red car", "a car on a road", "a blue car"])
    assert labels[vocab.index("car")] == 1 and labels[vocab.index("red")] == -1


def test_compare_counts():
    mined = np.array([[1, 1, 0, -1], [1, -1, -1, 0]], dtype=np.int8)
    hand = np.array([[1, 0, 0, 1], [-1, 1, 0, 0]], dtype=np.int8)
    out = compare(mined, hand)
    assert out["positive"] == {"tp": 1, "fp": 1, "fn": 2, "precision": 0.5, "recall": 0.3333}
    assert out["negative"] == {"tp": 2, "fp": 0, "fn": 2, "precision": 1.0, "recall": 0.5}
    assert out["coverage"] == round(4 / 7, 4)


def _captions_json(path, caps: dict[int, list[str]]):
    path.write_text(
        json.dumps(
            {
                "info": {},
                "licenses": [],
                "images": [{"id": i, "file_name": f"{i}.jpg", "width": 4, "height": 4} for i in caps],
                "annotations": [
                    {"id": 10 * i + k, "image_id": i, "caption": c}
                    for i in caps
                    for k, c in enumerate(caps[i])
                ],
            }
        )
    )


def test_report_and_cli_hook(tmp_path, capsys, miner):
    caps = {1: ["a red car on the street", "a red car"], 2: ["a cat with no collar", "a cat indoors"]}
    _captions_json(tmp_path / "captions.json", caps)
    (tmp_path / "attributes.json").write_text(
        json.dumps(
            {
                "annotations": [
                    {
                        "image_id": 1,
                        "positive": ["red", "car", "vehicle", "street", "outdoor"],
                        "unknown": ["city"],
                    },
                    {"image_id": 2, "positive": ["cat", "animal", "indoor"], "unknown": []},
                ]
            }
        )
    )
    report = miner_report(caps, None, miner=miner)
    assert report["images"] == 2 and report["counts"]["car"] == {"positive": 1, "negative": 0}
    argv = ["data", "mine", "--captions", str(tmp_path / "captions.json")]
    argv += ["--labels", str(tmp_path / "attributes.json"), "--out", str(tmp_path / "out" / "report.json")]
    assert cli_main(argv) == 0
    text = capsys.readouterr().out
    assert "2 images, min_votes=1" in text and "positive precision" in text
    saved = json.loads((tmp_path / "out" / "report.json").read_text())
    assert saved["vs_hand"]["images"] == 2
    assert "car" in saved["labels"]["1"]["positive"]
    assert saved["vs_hand"]["per_attribute"]["car"]["positive"]["tp"] == 1
