"""create_model / list_models: names, the tensor-in logits-out API, official weights through torch hub's cache."""

import urllib.error

import pytest
import torch

import revvit
from revvit.models import factory
from revvit.models.hub import OFFICIAL_URL
from revvit.utils import checkpoint as cu
from revvit.utils.errors import UserError

# rev_vit_s scaled down: 32x32 images, 16x16 patches (4 tokens), width 32, 2 reversible blocks.
TINY = {"MVIT.DEPTH": 2, "MVIT.EMBED_DIM": 32, "MVIT.NUM_HEADS": 2, "DATA.TRAIN_CROP_SIZE": 32, "DATA.TEST_CROP_SIZE": 32}


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """An empty torch hub directory (TORCH_HOME) where any download attempt fails as without network."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))

    def no_network(url, dst, progress=True):
        raise urllib.error.URLError(f"no network in tests ({url})")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    return tmp_path / "torch" / "hub" / "checkpoints"


def _fake_official(hub, file_name, model):
    """Save ``model`` as an official PySlowFast .pyth (model_state, epoch, no class names) in the hub cache."""
    hub.mkdir(parents=True, exist_ok=True)
    torch.save({"model_state": model.state_dict(), "epoch": 299}, hub / file_name)


def test_list_models_names_the_published_models_and_their_twins():
    assert revvit.list_models() == sorted(
        ["rev_vit_s", "rev_vit_b", "rev_mvit_b", "rev_mvit_b_16x4", "vit_s", "vit_b", "mvitv2_b", "mvitv2_b_16x4"]
    )
    assert revvit.list_models(pretrained=True) == ["rev_mvit_b", "rev_mvit_b_16x4", "rev_vit_b", "rev_vit_s"]


@pytest.mark.parametrize("name, classes, rev", [("rev_mvit_b_16x4", 400, True), ("mvitv2_b", 1000, False)])
def test_names_build_the_shipped_configs(name, classes, rev):
    cfg = factory.model_cfg(name)
    assert cfg.MODEL.NUM_CLASSES == classes and cfg.MVIT.REV.ENABLE is rev
    assert factory.config_file(name).endswith(factory._MODELS[name].config)


def test_tensor_and_list_input_both_give_logits():
    torch.manual_seed(0)
    model = revvit.create_model("rev_vit_s", num_classes=7, **TINY).eval()
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        logits = model(x)
        features = model.forward_features(x)
        pooled = model.forward_head(features, pre_logits=True)
        listed = model([x])  # PySlowFast's input convention
    assert logits.shape == (3, 7) and features.shape == (3, 4, 64) and pooled.shape == (3, 64)  # 2 streams of 32
    assert torch.equal(model.forward_head(features), logits)
    assert torch.equal(model.head.projection(pooled), logits)
    assert torch.equal(listed, logits)  # MODEL.HEAD_ACT is evaluation's (engine.evaluate.scores), not the model's
    assert not torch.allclose(logits.sum(1), torch.ones(3))  # logits are not probabilities


def test_keyword_overrides_use_double_underscores_for_dots():
    model = revvit.create_model(
        "rev_vit_s", MVIT__DEPTH=2, MVIT__EMBED_DIM=32, MVIT__NUM_HEADS=2, DATA__TRAIN_CROP_SIZE=32, DATA__TEST_CROP_SIZE=32
    )
    assert len(model.rev_backbone.layers) == 2 and model.cfg.MVIT.EMBED_DIM == 32


def test_pretrained_loads_the_file_in_the_hub_cache_by_name(hub):
    torch.manual_seed(1)
    official = revvit.create_model("rev_vit_s", **TINY)
    _fake_official(hub, "REV_VIT_S.pyth", official)
    torch.manual_seed(2)  # another initialisation, so a silent non-load would show
    model = revvit.create_model("rev_vit_s", pretrained=True, **TINY)
    own, ref = model.state_dict(), official.state_dict()
    assert own.keys() == ref.keys() and all(torch.equal(own[k], ref[k]) for k in ref)


def test_pretrained_with_other_num_classes_keeps_a_fresh_head(hub):
    torch.manual_seed(1)
    official = revvit.create_model("rev_vit_s", **TINY)
    _fake_official(hub, "REV_VIT_S.pyth", official)
    model = revvit.create_model("rev_vit_s", pretrained=True, num_classes=5, **TINY)
    assert model.head.projection.weight.shape == (5, 64)
    ref = official.state_dict()
    body = [k for k in ref if not k.startswith("head.")]
    assert body and all(torch.equal(model.state_dict()[k], ref[k]) for k in body)


def test_pretrained_is_strict(hub):
    _fake_official(hub, "REV_VIT_S.pyth", revvit.create_model("rev_vit_s", **TINY))
    with pytest.raises(cu.CheckpointError, match="shape mismatch"):
        revvit.create_model("rev_vit_s", pretrained=True, **{**TINY, "MVIT.EMBED_DIM": 64})


def test_missing_file_without_network_says_where_to_put_it(hub):
    with pytest.raises(cu.CheckpointError) as e:
        revvit.create_model("rev_vit_b", pretrained=True, **TINY)
    assert OFFICIAL_URL + "REV_VIT_B.pyth" in str(e.value)
    assert str(hub / "REV_VIT_B.pyth") in str(e.value) and "TORCH_HOME" in str(e.value)


def test_twins_and_unknown_names_are_clear_errors(hub):
    with pytest.raises(cu.CheckpointError, match="'vit_b' has no official weights"):
        revvit.create_model("vit_b", pretrained=True)
    with pytest.raises(factory.UnknownModelError, match="Unknown model 'rev_vit_xl'.*rev_vit_b"):
        revvit.create_model("rev_vit_xl")
    assert issubclass(factory.UnknownModelError, UserError)  # one paragraph at the command line, no traceback


def test_model_pretrained_key_initialises_training_from_the_cache(hub, tmp_path):
    from revvit.engine.weights import resume_or_init, start_weights
    from revvit.models import build_model

    torch.manual_seed(1)
    official = revvit.create_model("rev_vit_s", **TINY)
    _fake_official(hub, "REV_VIT_S.pyth", official)
    cfg = factory.model_cfg("rev_vit_s", num_classes=3, **TINY, **{"MODEL.PRETRAINED": "rev_vit_s", "OUTPUT_DIR": str(tmp_path / "run")})
    model = build_model(cfg)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    # The official file says epoch 299: a run initialised by name still starts at epoch 1, with a 3-class head.
    assert resume_or_init(cfg, model, optimizer, scaler).epoch == 0
    assert torch.equal(model.patch_embed.proj.weight, official.patch_embed.proj.weight)
    assert model.head.projection.weight.shape == (3, 64)
    assert start_weights(cfg, "test").path == str(hub / "REV_VIT_S.pyth")


def test_create_model_passes_the_config_gate_once(monkeypatch):
    import revvit.config

    calls = []
    gate = revvit.config.validate_cfg
    monkeypatch.setattr(revvit.config, "validate_cfg", lambda cfg: calls.append(1) or gate(cfg))
    revvit.create_model("rev_vit_s", **TINY)
    assert calls == [1]  # model_cfg is the gate; build_model trusts it
