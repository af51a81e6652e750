import time

import pytest
import torch

from saft_core.config import ModelSpec
from saft_core.errors import ModelError
from saft_core.models import available_models, load_model, parameter_count, weights_sha256


def test_random_init_is_seeded_and_fingerprinted():
    a = load_model(ModelSpec("saft-tiny", None, init_seed=0), "cpu")
    b = load_model(ModelSpec("saft-tiny", "none", init_seed=0), "cpu")
    c = load_model(ModelSpec("saft-tiny", None, init_seed=1), "cpu")
    assert a.sha256 == b.sha256 != c.sha256
    with torch.no_grad():
        next(a.model.parameters()).view(-1)[0] += 1e-3
    assert weights_sha256(a.model) != b.sha256


def test_parameter_count_without_building_the_model():
    tiny = load_model(ModelSpec("saft-tiny", None), "cpu")
    assert parameter_count("saft-tiny") == sum(p.numel() for p in tiny.model.parameters())
    assert parameter_count("ViT-B-32") == 151_277_313  # counted on the meta device: nothing allocated
    assert parameter_count("roberta-ViT-B-32") is None  # its text tower's config is a download
    assert parameter_count("hf-hub:laion/CLIP-ViT-B-32") is None
    assert parameter_count("no-such-model") is None


def test_local_weights_file_loads(tmp_path):
    from safetensors.torch import save_file

    a = load_model(ModelSpec("saft-tiny", None, init_seed=3), "cpu")
    path = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in a.model.state_dict().items()}, str(path))
    b = load_model(ModelSpec("saft-tiny", str(path)), "cpu")
    assert b.sha256 == a.sha256


def test_unknown_model_and_tag_are_clear_errors():
    with pytest.raises(ModelError, match="unknown model 'no-such-model'"):
        load_model(ModelSpec("no-such-model"), "cpu")
    with pytest.raises(ModelError, match="unknown pretrained tag 'nope' for model 'RN50'.*openai"):
        load_model(ModelSpec("RN50", "nope"), "cpu")


def load_weights_not_on_disk_offline(monkeypatch) -> float:
    """Both kinds of weights missing offline are clear errors; the seconds the two loads took."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.monotonic()
    with pytest.raises(ModelError, match="not on disk and cannot be downloaded"):
        load_model(ModelSpec("ViT-B-16", "openai"), "cpu")
    with pytest.raises(ModelError, match="not in the local Hugging Face cache"):
        load_model(ModelSpec("hf-hub:laion/CLIP-ViT-B-32-laion2B-s34B-b79K"), "cpu")
    return time.monotonic() - start


def test_weights_not_on_disk_are_a_clear_error_offline(monkeypatch):
    load_weights_not_on_disk_offline(monkeypatch)


@pytest.mark.perf
def test_weights_not_on_disk_fail_fast_offline(monkeypatch):
    # no minute of download retries (generous bound for a busy machine)
    assert load_weights_not_on_disk_offline(monkeypatch) < 30


def test_cuda_request_without_cuda_is_an_error():
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(ModelError, match="no CUDA device"):
        load_model(ModelSpec("saft-tiny"), "cuda")


def test_available_models_lists_saft_tiny_as_local():
    models = {m["name"]: m for m in available_models()}
    assert models["saft-tiny"]["local"] is True
    assert "openai" in models["ViT-B-16"]["pretrained"]
