"""The hub layout ``datvit convert`` writes (timm's: ``model.safetensors``, ``config.json``, ``README.md``): one
directory loads with identical logits through ``timm.create_model("local-dir:DIR")``, transformers'
``AutoModelForImageClassification`` (its TimmWrapper, ``AutoImageProcessor`` giving timm's preprocessing) and
``datvit.inference.load_model``, for a variant and for custom configurations; earlier datvit layouts still load;
``--push-to-hub`` hands the directory to huggingface_hub (a stand-in here: no network)."""

from __future__ import annotations

import json
import re
import shutil

import numpy as np
import pytest
import timm
import torch
from PIL import Image

from datvit.cli.main import main
from datvit.inference import build_checkpoint, eval_transform, hub_config, load_model, save_hub_directory
from datvit.inference.hub import is_authors_variant, model_card
from datvit.models.factory import arch_record, build_model, resolve_model_kwargs
from datvit.tools.flops import count_flops
from train_helpers import TINY_MODEL_KWARGS

DATA_CONFIG = {"input_size": [3, 32, 32], "mean": [0.5, 0.4, 0.3], "std": [0.25, 0.2, 0.3], "crop_pct": 0.9}
# A DAT++ configuration of its own (N and D blocks, not a registered variant): config.json names datpp_tiny. What
# it leaves to DAT's defaults differs from datpp_tiny's configuration (the patch stem: datpp_tiny has a conv stem),
# so model_args must spell those out for timm and transformers to build the same network.
TINY_PP_KWARGS = dict(
    generation="pp",
    img_size=32,
    dim_stem=16,
    dims=[16, 32, 64, 128],
    depths=[1, 1, 2, 1],
    heads=[1, 2, 4, 8],
    groups=[1, 1, 2, 4],
    strides=[1, 1, 1, 1],
    offset_range_factor=[-1, -1, -1, -1],
    use_pes=[True] * 4,
    use_dwc_mlps=[True] * 4,
    use_lpus=[True] * 4,
    window_sizes=[4, 4, 4, 4],
    nat_ksizes=[3, 3, 3, 3],
    stage_spec=[["N"], ["N"], ["D", "D"], ["D"]],
    drop_path_rate=0.2,
)
CASES = {
    # name: (model, kwargs, in_chans, class names)
    "dat_tiny": ("dat_tiny", {**TINY_MODEL_KWARGS, "drop_path_rate": 0.2}, 3, ["cat", "dog", "fish"]),
    "dat_nano": ("dat_nano", {}, 1, list("abcde")),
    "custom_pp": ("my-datpp", TINY_PP_KWARGS, 3, ["x", "y"]),
}


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    """Nothing here may reach the network: huggingface_hub read HF_HUB_OFFLINE when timm imported it, so its
    constant is set too."""
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


def logits(model, x):
    with torch.no_grad():
        out = model(x)
    return getattr(out, "logits", out)


def write_checkpoint(tmp_path, case):
    """A datvit checkpoint of ``case`` and the model it holds (eval mode)."""
    name, overrides, in_chans, classes = CASES[case]
    kwargs = resolve_model_kwargs(
        name if name != "my-datpp" else "custom", None, overrides, num_classes=len(classes), in_chans=in_chans
    )
    torch.manual_seed(0)
    model = build_model(name, kwargs).eval()
    data_config = {**DATA_CONFIG, "input_size": [in_chans, 32, 32]}
    if in_chans == 1:
        data_config.update(mean=[0.3], std=[0.3])
    src = tmp_path / f"{case}.pth"
    torch.save(
        build_checkpoint(
            model.state_dict(), arch=arch_record(name, kwargs), data_config=data_config, class_names=classes
        ),
        src,
    )
    return src, model


@pytest.fixture(scope="module")
def transformers():
    return pytest.importorskip("transformers")


@pytest.mark.parametrize("case", list(CASES))
def test_one_directory_loads_identically_through_timm_transformers_and_datvit(tmp_path, case, transformers, capsys):
    src, model = write_checkpoint(tmp_path, case)
    name, _, in_chans, classes = CASES[case]
    dst = tmp_path / "hub"
    assert main(["convert", str(src), str(dst)]) == 0
    assert "README.md" in capsys.readouterr().err
    assert sorted(p.name for p in dst.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    config = json.loads((dst / "config.json").read_text())
    # timm's layout: the head size and class names at the top, architecture arguments only in model_args
    assert config["architecture"] == ("datpp_tiny" if case == "custom_pp" else "dat_tiny")
    assert config["num_classes"] == len(classes) and config["label_names"] == classes
    assert not {"num_classes", "drop_path_rate", "drop_rate", "attn_drop_rate"} & set(config["model_args"])
    assert config["model_args"]["in_chans"] == in_chans and config["datvit"]["model"] == name
    assert config["model_args"]["use_conv_patches"] is False and config["model_args"]["layer_norm_eps"] == 1e-5
    assert config["pretrained_cfg"]["input_size"] == [in_chans, 32, 32]

    x = torch.randn(2, in_chans, 32, 32)
    expected = logits(model, x)
    through_timm = timm.create_model(f"local-dir:{dst}", pretrained=True).eval()
    assert torch.equal(logits(through_timm, x), expected)
    loaded = load_model(dst)
    assert loaded.arch["name"] == name and loaded.class_names == classes
    assert torch.equal(logits(loaded.model, x), expected)
    hf = transformers.AutoModelForImageClassification.from_pretrained(dst).eval()
    assert type(hf).__name__ == "TimmWrapperForImageClassification"
    assert hf.config.id2label == dict(enumerate(classes)) and hf.config.num_labels == len(classes)
    torch.testing.assert_close(logits(hf, x), expected, rtol=0, atol=0)
    if in_chans == 3:  # transformers' processor is timm's evaluation transform of the same config
        processor = transformers.AutoImageProcessor.from_pretrained(dst)
        image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 50, 3), dtype=np.uint8))
        pixels = processor(image, return_tensors="pt")["pixel_values"]
        assert torch.equal(pixels, eval_transform(loaded.data_config)(image)[None])
        torch.testing.assert_close(logits(hf, pixels), logits(model, pixels))


def test_directories_of_earlier_datvit_versions_still_load(tmp_path):
    """Earlier layouts repeated num_classes (and the training-only drop_path_rate) in model_args and kept the
    complete constructor arguments under datvit.arch; a plain timm config.json has no datvit entry at all."""
    src, model = write_checkpoint(tmp_path, "dat_tiny")
    loaded = load_model(src)
    full = {**loaded.arch["kwargs"]}
    config = hub_config(loaded.arch, loaded.data_config, loaded.model, loaded.class_names)
    old = {k: v for k, v in config.items() if k not in ("datvit",)}
    old["model_args"] = full
    old["datvit"] = {"arch": {"name": "dat_tiny", "kwargs": full}, "format_version": 1}
    save_hub_directory(tmp_path / "old", model.state_dict(), old)
    x = torch.randn(1, 3, 32, 32)
    assert torch.equal(logits(load_model(tmp_path / "old").model, x), logits(model, x))
    del old["datvit"]
    save_hub_directory(tmp_path / "plain", model.state_dict(), old)
    plain = load_model(tmp_path / "plain" / "config.json")
    assert plain.arch["name"] == "dat_tiny" and plain.class_names == CASES["dat_tiny"][3]
    assert torch.equal(logits(plain.model, x), logits(model, x))
    # datvit convert rewrites an earlier directory in the current layout
    assert main(["convert", str(tmp_path / "old"), str(tmp_path / "new")]) == 0
    config = json.loads((tmp_path / "new" / "config.json").read_text())
    assert "num_classes" not in config["model_args"] and "drop_path_rate" not in config["model_args"]
    assert torch.equal(logits(load_model(tmp_path / "new").model, x), logits(model, x))


def test_model_card_front_matter_table_and_snippets(tmp_path):
    src, _ = write_checkpoint(tmp_path, "custom_pp")
    assert main(["convert", "--checkpoint", str(src), "--output", str(tmp_path / "hub")]) == 0
    card = (tmp_path / "hub" / "README.md").read_text()
    front, body = card.split("---\n")[1], card.split("---\n", 2)[2]
    for line in ("library_name: timm", "license: apache-2.0", "- arxiv:2309.01430", "- transformers"):
        assert line in front.splitlines()
    assert "datasets" not in front and "top-1" not in body  # a custom model: no published accuracy
    assert "| input size | 3×32×32 (C×H×W) |" in body and "| classes | 2 |" in body
    assert re.search(r"^\| FLOPs [^|]*\| \d+\.\d+[MG] \|$", body, re.M) and "| parameters |" in body
    assert "| architecture | `datpp_tiny` with the `model_args` of `config.json` (datvit model `my-datpp`) |" in body
    assert 'create_model("local-dir:DIR"' in body and "import datvit" in body and "DAT++" in body


def test_an_authors_variant_card_has_the_published_top1():
    """dat_tiny as released (its arguments, 1000 classes) is the authors' variant; another head is not. Built on
    the meta device: the card counts parameters and FLOPs without computing anything."""
    with torch.device("meta"):
        model = timm.create_model("dat_tiny")
    kwargs = resolve_model_kwargs("dat_tiny", num_classes=1000)
    data = {**DATA_CONFIG, "input_size": [3, 224, 224]}
    config = hub_config(arch_record("dat_tiny", kwargs), data, model)
    assert is_authors_variant(config) and config["model_args"]["img_size"] == 224
    card = model_card(config, model, "someone/dat_tiny", macs=count_flops(model, (3, 224, 224)).macs)
    assert "| ImageNet-1k top-1 (published, the authors' weights) | 82.0% |" in card
    assert "| architecture | `dat_tiny` |" in card and "| FLOPs (multiply-adds, the papers' count) | 4.59G |" in card
    assert "| parameters | 28.32M |" in card and "- imagenet-1k" in card and "- arxiv:2201.00520" in card
    assert 'create_model("hf-hub:someone/dat_tiny"' in card and 'from_pretrained("someone/dat_tiny")' in card
    assert not is_authors_variant({**config, "num_classes": 10})
    assert not is_authors_variant({**config, "model_args": {**config["model_args"], "depths": [1, 1, 1, 1]}})


class FakeHfApi:
    """Records what datvit asks of huggingface_hub.HfApi and keeps a copy of the uploaded folder."""

    calls: list = []

    def __init__(self, token=None, library_name=None, library_version=None, **kwargs):
        self.calls.append(("init", token, library_name))

    def create_repo(self, repo_id, private=None, exist_ok=False, **kwargs):
        self.calls.append(("create_repo", repo_id, private, exist_ok))
        return f"https://huggingface.co/{repo_id}"

    def upload_folder(self, *, repo_id, folder_path, allow_patterns=None, revision=None, commit_message=None, **kw):
        self.calls.append(("upload_folder", repo_id, sorted(allow_patterns), revision))
        shutil.copytree(folder_path, self.uploaded, dirs_exist_ok=True)


def test_push_to_hub_uploads_the_directory(tmp_path, monkeypatch, capsys):
    import huggingface_hub

    src, model = write_checkpoint(tmp_path, "dat_tiny")
    FakeHfApi.calls, FakeHfApi.uploaded = [], tmp_path / "uploaded"
    monkeypatch.setattr(huggingface_hub, "HfApi", FakeHfApi)
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: None)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    # no token anywhere: refused in one line before anything is written or sent
    out = tmp_path / "hub"
    assert main(["convert", str(src), "--output", str(out), "--push-to-hub", "me/dat-tiny-pets"]) == 2
    assert "hf auth login" in capsys.readouterr().err and FakeHfApi.calls == [] and not out.exists()

    monkeypatch.setattr(huggingface_hub, "get_token", lambda: "hf_stored")
    args = ["convert", str(src), "--output", str(out), "--push-to-hub", "me/dat-tiny-pets", "--private"]
    assert main(args) == 0
    files = ["README.md", "config.json", "model.safetensors"]
    assert FakeHfApi.calls == [
        ("init", "hf_stored", "datvit"),
        ("create_repo", "me/dat-tiny-pets", True, True),
        ("upload_folder", "me/dat-tiny-pets", files, None),
    ]
    assert sorted(p.name for p in FakeHfApi.uploaded.iterdir()) == files
    assert 'from_pretrained("me/dat-tiny-pets")' in (FakeHfApi.uploaded / "README.md").read_text()
    assert "pushed" in capsys.readouterr().err

    # without --output a temporary directory is uploaded; --token wins over the stored one
    FakeHfApi.calls = []
    assert main(["convert", str(src), "--push-to-hub", "me/other", "--token", "hf_given", "--revision", "dev"]) == 0
    assert FakeHfApi.calls[0] == ("init", "hf_given", "datvit") and FakeHfApi.calls[-1][-1] == "dev"
    x = torch.randn(1, 3, 32, 32)
    assert torch.equal(logits(load_model(FakeHfApi.uploaded).model, x), logits(model, x))
