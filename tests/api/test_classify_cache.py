"""The API's classifier cache: a memory bound in bytes (LRU), one load per model however many ask at once."""

from __future__ import annotations

import threading

from api.classifier_cache import ClassifierCache, model_bytes
from saft_core.config import ModelSpec


def test_cache_keeps_within_its_byte_bound_and_evicts_the_least_recently_used() -> None:
    spec = ModelSpec()
    probe = ClassifierCache(size=4, device="cpu")
    one = model_bytes(probe.get(spec, None, None, 1.0))
    assert one > 1_000_000  # saft-tiny: about 32 MB of fp32 weights
    cache = ClassifierCache(size=4, device="cpu", max_bytes=int(one * 2.5))  # room for two, not three
    for alpha in (1.0, 0.5, 1.0, 0.25):  # 1.0 is used again before 0.25 comes, so 0.5 is the oldest
        cache.get(spec, None, None, alpha)
    assert cache.bytes <= int(one * 2.5)
    assert [k[3] for k in cache.loaded()] == [1.0, 0.25]
    # A model larger than the whole bound is served but not kept.
    tight = ClassifierCache(size=4, device="cpu", max_bytes=one // 2)
    assert tight.get(spec, None, None, 1.0) is not None and tight.loaded() == [] and tight.bytes == 0


def test_concurrent_requests_for_one_model_load_it_once() -> None:
    cache = ClassifierCache(size=2, device="cpu")
    got: list[object] = []
    threads = [
        threading.Thread(target=lambda: got.append(cache.get(ModelSpec(), None, None, 1.0))) for _ in range(4)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert len(got) == 4 and len({id(c) for c in got}) == 1
