"""The HTTP API of ``weakseg annotate``: token, save/load/resume, the on-disk layout training reads, bad ids, bad
payloads, the request-size bound, EXIF-rotated images and the model overlays."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from weakseg.annotate.overlay import ModelOverlay, prediction_rgba, uncertainty_rgba
from weakseg.annotate.server import TOKEN_HEADER, create_app
from weakseg.annotate.store import open_store, rle_decode, rle_encode
from weakseg.utils.io import DataError, read_label, save_image

H, W = 24, 32
TOKEN = "test-token"
AUTH = {TOKEN_HEADER: TOKEN}
PRESET = Path(__file__).resolve().parents[1] / "configs/blpseg/blpseg_mnv2-os32_b8-800i_horse-192.yaml"


@pytest.fixture
def folder(tmp_path):
    images = tmp_path / "images"
    rng = np.random.default_rng(0)
    for name in ("a", "b", "c"):
        save_image(images / f"{name}.jpg", rng.integers(0, 255, (H, W, 3), dtype=np.uint8))
    (images / "notes.txt").write_text("not an image")
    (tmp_path / "classes.txt").write_text("background\nhorse\ncat\n")
    return tmp_path


def make_client(folder, **kwargs):
    store, _ = open_store(folder / "images", folder / "labels", folder / "classes.txt")
    return store, create_app(store, TOKEN, **kwargs).test_client()


def scribble():
    lab = np.full((H, W), 255, np.uint8)
    lab[5, 3:20] = 1
    lab[20, :4] = 0
    return lab


def body(label, tags=()):
    return {"width": W, "height": H, "rle": rle_encode(label), "tags": list(tags)}


def test_rle_round_trip_and_checks():
    lab = scribble()
    rle = rle_encode(lab)
    assert rle[:4] == [255, 5 * W + 3, 1, 17]
    assert np.array_equal(rle_decode(rle, H, W, 3), lab)
    for bad, match in [([1, 2, 3], "even length"), ([1.0, H * W], "integers"), ([True, H * W], "integers"),
                       ([3, H * W], "not a class id"), ([1, 0, 1, H * W], "runs must be"), ([1, H * W - 1], "covers")]:
        with pytest.raises(ValueError, match=match):
            rle_decode(bad, H, W, 3)


def test_token_is_required(folder):
    _, client = make_client(folder)
    assert client.get("/api/session").status_code == 403
    assert client.get("/api/session", headers={TOKEN_HEADER: "wrong"}).status_code == 403
    assert client.put("/api/images/a/annotation", json=body(scribble())).status_code == 403
    assert client.get("/api/images/a/image", query_string={"token": TOKEN}).status_code == 403  # header only
    assert client.get("/").status_code == 403 and client.get("/?token=nope").status_code == 403
    page = client.get(f"/?token={TOKEN}")
    assert page.status_code == 200 and b"/static/app.js" in page.data
    assert "script-src 'self'" in page.headers["Content-Security-Policy"]
    assert client.get("/static/app.js").status_code == 200          # page code only, no data
    assert not (folder / "labels" / "Scribbles").exists()


def test_save_load_and_resume(folder):
    store, client = make_client(folder)
    s = client.get("/api/session", headers=AUTH).json
    assert s["classes"] == ["background", "horse", "cat"] and [i["id"] for i in s["images"]] == ["a", "b", "c"]
    assert s["progress"] == {"annotated": 0, "skipped": 0, "todo": 3, "total": 3} and s["resume"] == "a"
    assert s["overlay"] is False and "data.image_dir=" in s["train_command"]

    assert client.get("/api/images/b/annotation", headers=AUTH).json["rle"] == [255, H * W]
    r = client.put("/api/images/b/annotation", headers=AUTH, json=body(scribble(), tags=[2]))
    assert r.status_code == 200 and r.json["status"] == "annotated" and r.json["progress"]["annotated"] == 1
    out = folder / "labels"
    png = out / "Scribbles" / "b.png"
    assert np.array_equal(read_label(png), scribble()) and Image.open(png).mode == "P"
    assert json.loads((out / "tags.json").read_text()) == {"b": [0, 1, 2]}   # ticked cat + scribbled horse
    assert (out / "ImageSets/Segmentation/train.txt").read_text() == "b\n"
    # a tag-only image is a tag-method sample, not a scribble sample
    client.put("/api/images/c/annotation", headers=AUTH, json=body(np.full((H, W), 255, np.uint8), tags=[2]))
    assert (out / "ImageSets/Segmentation/train.txt").read_text() == "b\n"
    assert (out / "ImageSets/Segmentation/train_tags.txt").read_text() == "b\nc\n"
    assert client.post("/api/images/a/skip", headers=AUTH, json={"skipped": True}).json["status"] == "skipped"
    client.get("/api/images/b/annotation", headers=AUTH)                 # the user is on b when they stop
    assert not list(out.rglob(".*.tmp*"))                                # atomic writes leave no temporaries

    store2, client2 = make_client(folder)                                # re-open: resume where the user stopped
    s = client2.get("/api/session", headers=AUTH).json
    assert s["progress"] == {"annotated": 2, "skipped": 1, "todo": 0, "total": 3} and s["resume"] == "b"
    assert [i["status"] for i in s["images"]] == ["skipped", "annotated", "annotated"]
    ann = client2.get("/api/images/b/annotation", headers=AUTH).json
    assert np.array_equal(rle_decode(ann["rle"], H, W, 3), scribble()) and ann["tags"] == [1, 2]
    # annotating a skipped image un-skips it
    assert client2.put("/api/images/a/annotation", headers=AUTH, json=body(scribble())).json["status"] == "annotated"
    with pytest.raises(DataError, match="differ from the requested"):   # other classes would change the ids' meaning
        (folder / "other.txt").write_text("background\ndog\n")
        open_store(folder / "images", out, folder / "other.txt")


def test_training_reads_the_folder_with_the_printed_overrides(folder):
    from weakseg.engine import builders
    from weakseg.engine.config import load_config

    store, client = make_client(folder)
    client.put("/api/images/b/annotation", headers=AUTH, json=body(scribble(), tags=[2]))
    cfg = load_config(PRESET, store.train_overrides())
    ds = builders.build_train_dataset(cfg, "scribble", builders.dataset_meta(cfg), transform=lambda s: s)
    assert ds.ids == ["b"] and ds.meta.classes == ("background", "horse", "cat")
    sample = ds[0]
    assert np.array_equal(sample["scribble"], scribble()) and sample["tags"].tolist() == [1, 1, 0]
    cfg = load_config(PRESET, store.train_overrides() + ["data.tags_source=file", "data.tags_file=tags.json",
                                                         "data.train_list=ImageSets/Segmentation/train_tags.txt"])
    ds = builders.build_train_dataset(cfg, "tags", builders.dataset_meta(cfg), transform=lambda s: s)
    assert ds[0]["tags"].tolist() == [1, 1, 1]


@pytest.mark.parametrize("sid", ["../a", "..%2Fa", "a.jpg", "notes", "zzz", "%00", ".a"])
def test_unknown_ids_are_refused_and_nothing_is_written(folder, sid):
    _, client = make_client(folder)
    for resp in (client.get(f"/api/images/{sid}/image", headers=AUTH),
                 client.get(f"/api/images/{sid}/annotation", headers=AUTH),
                 client.put(f"/api/images/{sid}/annotation", headers=AUTH, json=body(scribble())),
                 client.post(f"/api/images/{sid}/skip", headers=AUTH, json={"skipped": True})):
        assert resp.status_code == 404
    assert sorted(p.name for p in folder.rglob("*.png")) == []
    assert sorted(p.name for p in (folder / "images").iterdir()) == ["a.jpg", "b.jpg", "c.jpg", "notes.txt"]


@pytest.mark.parametrize("payload, match", [
    ("not json", "JSON object"),
    ([1, 2], "JSON object"),
    ({"width": W + 1, "height": H, "rle": [255, (W + 1) * H], "tags": []}, "image size"),
    ({"width": W, "height": H, "rle": [255, H * W - 1], "tags": []}, "covers"),
    ({"width": W, "height": H, "rle": [9, H * W], "tags": []}, "not a class id"),
    ({"width": W, "height": H, "rle": [255.0, H * W], "tags": []}, "integers"),
    ({"width": W, "height": H, "rle": "255,768", "tags": []}, "rle must be a list"),
    ({"width": W, "height": H, "rle": [255, H * W], "tags": [3]}, "tags must be class ids"),
    ({"width": W, "height": H, "rle": [255, H * W], "tags": [True]}, "tags must be class ids"),
    ({"width": W, "height": H, "rle": [255, H * W], "tags": "horse"}, "list of class ids"),
])
def test_bad_payloads_get_400_with_the_reason(folder, payload, match):
    _, client = make_client(folder)
    if isinstance(payload, str):
        resp = client.put("/api/images/a/annotation", headers=AUTH, data=payload, content_type="application/json")
    else:
        resp = client.put("/api/images/a/annotation", headers=AUTH, json=payload)
    assert resp.status_code == 400 and match in resp.json["error"]
    assert not (folder / "labels" / "Scribbles" / "a.png").exists()
    assert client.post("/api/images/a/skip", headers=AUTH, json={"skipped": "yes"}).status_code == 400
    deep = "[" * 50000 + "]" * 50000
    assert client.put("/api/images/a/annotation", headers=AUTH, data=deep,
                      content_type="application/json").status_code == 400


def test_request_size_is_bounded(folder):
    _, client = make_client(folder, max_request_bytes=2000)
    noisy = np.random.default_rng(0).integers(0, 2, (H, W)).astype(np.uint8)   # ~H·W/2 runs: far over 2000 bytes
    resp = client.put("/api/images/a/annotation", headers=AUTH, json=body(noisy))
    assert resp.status_code == 413
    assert client.put("/api/images/a/annotation", headers=AUTH, json=body(scribble())).status_code == 200


def test_exif_rotated_photo_is_served_with_the_pixels_training_reads(folder):
    img = Image.fromarray(np.zeros((H, W, 3), np.uint8))
    exif = Image.Exif()
    exif[0x0112] = 6                                   # "rotate 90° CW to display": browsers would show it W×H
    img.save(folder / "images" / "r.jpg", exif=exif.tobytes())
    _, client = make_client(folder)
    plain = client.get("/api/images/a/image", headers=AUTH)
    assert plain.mimetype == "image/jpeg"
    rotated = client.get("/api/images/r/image", headers=AUTH)
    assert rotated.mimetype == "image/png"
    served = Image.open(io.BytesIO(rotated.data))
    assert served.size == (W, H) and served.getexif().get(0x0112) is None


def test_overlay_layers_by_hand():
    probs = np.array([[[0.9, 0.2]], [[0.1, 0.5]], [[0.0, 0.3]]], dtype=np.float32)   # C=3, 1×2 pixels
    u = uncertainty_rgba(probs)
    assert u[0, 0, 3] == round(255 * 0.1 / (2 / 3)) and u[0, 1, 3] == round(255 * 0.5 / (2 / 3))
    assert tuple(u[0, 0, :3]) == (255, 0, 255)
    pal = np.zeros((256, 3), np.uint8)
    pal[1] = (10, 20, 30)
    p = prediction_rgba(probs.argmax(0), pal)
    assert p[0, 0, 3] == 0 and tuple(p[0, 1]) == (10, 20, 30, 255)


def test_overlay_from_a_checkpoint(folder, tmp_path, one_thread):
    from weakseg.engine.builders import build_method
    from weakseg.engine.checkpoint import save_checkpoint
    from weakseg.engine.config import load_config, to_dict

    cfg = load_config(PRESET, ["model.pretrained=null"])
    method = build_method(cfg, 3)
    ckpt = tmp_path / "model_final.pth"
    save_checkpoint(ckpt, model_state=method.state_dict(), iteration=1, config=to_dict(cfg),
                    extra={"classes": ["background", "horse", "cat"]})
    store, _ = open_store(folder / "images", folder / "labels", folder / "classes.txt")
    overlay = ModelOverlay(ckpt, store.meta, device="cpu")
    client = create_app(store, TOKEN, overlay=overlay).test_client()
    assert client.get("/api/session", headers=AUTH).json["overlay"] is True
    layers = {}
    for layer in ("prediction", "uncertainty"):
        resp = client.get(f"/api/images/a/overlay/{layer}", headers=AUTH)
        assert resp.status_code == 200 and resp.mimetype == "image/png"
        layers[layer] = np.asarray(Image.open(io.BytesIO(resp.data)))
        assert layers[layer].shape == (H, W, 4)
    from weakseg.utils.io import read_rgb

    probs = overlay.probs(read_rgb(store.images["a"]))
    assert probs.shape == (3, H, W) and np.allclose(probs.sum(0), 1, atol=1e-4)
    assert np.array_equal(layers["uncertainty"], uncertainty_rgba(probs))
    assert np.array_equal(layers["prediction"][..., 3] > 0, probs.argmax(0) != 0)
    assert client.get("/api/images/a/overlay/logits", headers=AUTH).status_code == 404
    with pytest.raises(DataError, match="differ from the annotation classes"):
        (tmp_path / "two.txt").write_text("background\nhorse\n")
        from weakseg.annotate.store import read_classes_file

        ModelOverlay(ckpt, read_classes_file(tmp_path / "two.txt"))


def test_command_reports_a_bad_folder_in_one_line(tmp_path, capsys):
    from weakseg.cli import main

    (tmp_path / "classes.txt").write_text("background\nhorse\n")
    rc = main(["annotate", str(tmp_path / "missing"), "--classes", str(tmp_path / "classes.txt"),
               "--out", str(tmp_path / "labels")])
    assert rc == 2 and "missing: image folder not found" in capsys.readouterr().err
    (tmp_path / "mixed").mkdir()
    save_image(tmp_path / "mixed" / "a.jpg", np.zeros((4, 4, 3), np.uint8))
    save_image(tmp_path / "mixed" / "b.png", np.zeros((4, 4, 3), np.uint8))
    rc = main(["annotate", str(tmp_path / "mixed"), "--out", str(tmp_path / "labels")])
    assert rc == 2 and "no classes.txt yet" in capsys.readouterr().err
    rc = main(["annotate", str(tmp_path / "mixed"), "--classes", str(tmp_path / "classes.txt"),
               "--out", str(tmp_path / "labels")])
    assert rc == 2 and "choose it with --ext" in capsys.readouterr().err


def test_a_session_on_another_subset_keeps_the_other_images_annotations(folder):
    out = folder / "labels"
    (folder / "first.txt").write_text("a\nb\n")
    (folder / "second.txt").write_text("c\n")
    store, _ = open_store(folder / "images", out, folder / "classes.txt", list_file=folder / "first.txt")
    store.save("b", scribble(), [])
    store.set_skipped("a", True)
    store2, _ = open_store(folder / "images", out, list_file=folder / "second.txt")
    assert list(store2.images) == ["c"]
    store2.save("c", scribble(), [2])
    assert (out / "ImageSets/Segmentation/train.txt").read_text() == "b\nc\n"
    assert json.loads((out / "tags.json").read_text()) == {"b": [0, 1], "c": [0, 1, 2]}
    assert json.loads((out / "annotate.json").read_text())["skipped"] == ["a"]
