"""`cocoattr.serving.Service` without gradio: the Predict tab's object boxes and /objects."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from cocoattr.errors import UserError
from cocoattr.predictor import Predictor
from cocoattr.serving import Service

GALLERY = Path(__file__).resolve().parent.parent / "cocoattr" / "gallery" / "images"
ASTRONAUT = GALLERY / "skimage_astronaut.jpg"  # 512x512, one person


@pytest.fixture(scope="module")
def service(app_predictor) -> Service:
    return Service(app_predictor, index=None, concurrency=1)  # type: ignore[arg-type]


def test_object_view_draws_labelled_boxes_and_lists_attributes(service) -> None:
    value, colours, text = service.object_view(str(ASTRONAUT))
    image, boxes = value
    found = service.detect(str(ASTRONAUT))
    assert image.size == (512, 512) and len(boxes) == len(found) >= 1
    (x1, y1, x2, y2), label = boxes[0]
    assert label == f"{found[0].category} {found[0].score:.2f}" and label.startswith("person ")
    assert (x1, y1, x2, y2) == tuple(round(v) for v in found[0].box)
    assert set(colours) == {label for _, label in boxes}
    lines = text.splitlines()
    assert len(lines) == len(boxes) and lines[0].startswith(f"- **{label}**: ")
    assert lines[0].count(", ") == 4, "the object's top 5 attributes"


def test_boxes_follow_the_image_size_and_the_display_copy(service, tmp_path) -> None:
    """A 1536 px JPEG: /objects boxes in its own pixels (3x the 512 px ones), the tab's on its 768 px copy."""
    big = tmp_path / "astronaut-big.jpg"
    Image.open(ASTRONAUT).convert("RGB").resize((1536, 1536), Image.BICUBIC).save(big, quality=95)
    small, large = service.objects(str(ASTRONAUT))[0], service.objects(str(big))[0]
    assert large["category"] == small["category"] == "person"
    assert large["box"] == pytest.approx([3 * v for v in small["box"]], abs=12)
    (image, boxes), _, _ = service.object_view(str(big))
    assert image.size == (768, 768)
    assert boxes[0][0] == pytest.approx([v / 2 for v in large["box"]], abs=1)


def test_no_objects_says_so_instead_of_an_empty_picture(service) -> None:
    value, colours, text = service.object_view(str(ASTRONAUT), min_score=0.99)
    assert value is None and colours == {} and text == "no objects found above 0.99"
    assert service.objects(str(ASTRONAUT), 0.99) == []
    with pytest.raises(UserError, match="min_score"):
        service.objects(str(ASTRONAUT), -0.1)
    with pytest.raises(UserError, match="no image"):
        service.objects("")


def test_a_checkpoint_without_a_detector(random_model) -> None:
    plain = Service(Predictor(random_model()), index=None, concurrency=1)  # type: ignore[arg-type]
    assert plain.object_view(str(ASTRONAUT)) == (None, {}, "this checkpoint has no object detector")
    with pytest.raises(UserError, match="no object detector"):
        plain.objects(str(ASTRONAUT))
