"""runtime/cache.py: the one bounded LRU (results in the services, API-key lookups and rate
buckets in the gateway)."""

from __future__ import annotations

from runtime.cache import Lru, ResultCache, cache_key


def test_the_least_recently_used_entry_goes_beyond_the_capacity() -> None:
    lru: Lru[str, int] = Lru(2)
    lru.put("a", 1)
    lru.put("b", 2)
    assert lru.get("a") == 1  # "a" is now the most recent
    lru.put("c", 3)
    assert "b" not in lru
    assert ("a" in lru, "c" in lru, len(lru)) == (True, True, 2)
    lru.put("a", 10)  # rewriting also makes it the most recent
    lru.put("d", 4)
    assert "c" not in lru
    assert lru.get("a") == 10


def test_pop_forgets_and_a_capacity_of_zero_keeps_nothing() -> None:
    lru: Lru[str, int] = Lru(3)
    lru.put("a", 1)
    lru.pop("a")
    lru.pop("never there")
    assert lru.get("a") is None
    empty: Lru[str, int] = Lru(0)
    empty.put("a", 1)
    assert len(empty) == 0


def test_result_cache_counts_hits_and_misses() -> None:
    cache: ResultCache[str] = ResultCache(4)
    key = cache_key(sha256="ab", engine="x")
    assert key == cache_key(engine="x", sha256="ab")
    assert cache.get(key) is None
    cache.put(key, "result")
    assert cache.get(key) == "result"
    assert (cache.hits, cache.misses) == (1, 1)
