"""The engine's array pieces on their own: the compact label -> id map (append, kill, compaction,
views that stay consistent while it changes) and the merge of label/score arrays (best first,
ties by id, exclusions, padding)."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from annserve.engine.labels import MIN_DEAD_TO_COMPACT, LabelMap
from annserve.engine.merge import Candidates, brute_force, merge_hits, top_k
from annserve.engine.shard import SnapshotNames
from annserve.indexes import brute_force_knn


def test_label_map_appends_kills_and_answers_ids():
    m = LabelMap()
    m.append(np.array([1, 2, 5]), ["a", "bé", "c"])
    m.append(np.array([9]), ["d"])
    view = m.view()
    assert view.ids(np.array([5, 1])) == ["c", "a"] and view.ids(np.array([2])) == ["bé"]
    assert view.is_live(np.array([[1, 3], [9, -1]])).tolist() == [[True, False], [True, False]]
    assert m.kill(np.array([2, 2, 7])) == 1 and m.live == 3  # repeats and unknown labels ignored
    assert m.view().live_labels().tolist() == [1, 5, 9]
    assert m.view().live_labels(after=1, upto=5).tolist() == [5]
    assert m.view().live_ids() == ["a", "c", "d"]
    with pytest.raises(ValueError, match="labels must grow"):
        m.append(np.array([9]), ["again"])
    with pytest.raises(KeyError):
        view.ids(np.array([4]))


def test_compaction_keeps_the_live_and_old_views_keep_working():
    m = LabelMap()
    n = 3 * MIN_DEAD_TO_COMPACT
    m.append(np.arange(1, n + 1), [f"id-{i}" for i in range(1, n + 1)])
    before = m.view()
    dead = np.arange(1, n + 1)[np.arange(n) % 4 != 0]  # three quarters die: compaction
    m.kill(dead)
    after = m.view()
    assert after.n == m.live == n // 4 < before.n  # compacted into new arrays
    assert after.live_labels().tolist() == list(range(1, n + 1, 4))
    assert after.ids(np.array([1, n - 3])) == ["id-1", f"id-{n - 3}"]
    assert before.ids(np.array([2])) == ["id-2"]  # a view taken before still maps what it saw
    m.append(np.array([n + 10]), ["late"])
    assert m.view().ids(np.array([n + 10, 5])) == ["late", "id-5"]
    # About 17 bytes per entry plus the id's own bytes, with growth slack (dicts: ~225).
    assert m.memory_bytes() < 2 * m.live * (8 + 8 + 1 + 8) + 4096 * 17


def test_readers_see_consistent_views_while_a_writer_appends_and_kills():
    m = LabelMap()
    errors: list[BaseException] = []
    done = threading.Event()

    def read() -> None:
        try:
            while not done.is_set():
                view = m.view()
                live = view.live_labels()
                for label, item_id in zip(live.tolist(), view.ids(live)):
                    assert item_id == f"i{label}"
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    readers = [threading.Thread(target=read) for _ in range(2)]
    for t in readers:
        t.start()
    for b in range(200):
        labels = np.arange(b * 100 + 1, b * 100 + 101)
        m.append(labels, [f"i{x}" for x in labels])
        m.kill(labels[::3] - 50 if b else labels[:0])
    done.set()
    for t in readers:
        t.join()
    assert not errors, errors[:3]


def test_merge_is_best_first_ties_by_id_and_leaves_out_the_excluded():
    ids = SnapshotNames({1: "b", 2: "a", 3: "c", 4: "d", 10: "z"})
    main = Candidates(np.array([[1, 3, -1]]), np.array([[0.9, 0.5, -np.inf]], dtype=np.float32), ids)
    fresh = Candidates(np.array([[2, 4]]), np.array([[0.9, 0.7]], dtype=np.float32), ids)
    assert merge_hits([main, fresh], 3, "ip") == [[("a", pytest.approx(0.9)), ("b", pytest.approx(0.9)), ("d", pytest.approx(0.7))]]
    # The k-th place is tied: the id decides which one gets in, whatever the source order.
    assert [h for h, _ in merge_hits([fresh, main], 1, "ip")[0]] == ["a"]
    assert [h for h, _ in merge_hits([main, fresh], 2, "ip", exclude=["a"])[0]] == ["b", "d"]
    l2 = Candidates(np.array([[10, 3]]), np.array([[4.0, 1.0]], dtype=np.float32), ids)
    assert [h for h, _ in merge_hits([l2], 5, "l2")[0]] == ["c", "z"]  # lowest first, no padding
    empty = Candidates(np.full((2, 3), -1), np.full((2, 3), -np.inf, dtype=np.float32), ids)
    assert merge_hits([empty], 3, "cosine") == [[], []]


def test_top_k_and_chunked_brute_force_equal_exact_search(glove):
    labels, scores = top_k([np.array([[5, 6]]), np.array([[7]])], [np.array([[1.0, 3.0]], np.float32),
                                                                      np.array([[2.0]], np.float32)], 4, "l2")
    assert labels.tolist() == [[5, 7, 6, -1]] and scores[0, 3] == np.inf
    x, q = glove.base[:3000], glove.queries[:20]
    from annserve.indexes.base import prepare_vectors
    all_labels = np.arange(3000) + 1000
    chunks = ((all_labels[s : s + 700], x[s : s + 700]) for s in range(0, 3000, 700))
    found, found_scores = brute_force(prepare_vectors(q, 50, "cosine"), chunks, 10, 50, "cosine")
    truth, truth_scores = brute_force_knn(x, q, 10, "cosine")
    assert np.array_equal(found - 1000, truth)
    np.testing.assert_allclose(found_scores, truth_scores, atol=1e-5)


def test_queries_are_prepared_as_the_library_prepares_vectors(glove, fashion):
    from annserve.engine.inputs import prepare_queries
    from annserve.indexes.base import prepare_vectors

    for data in (glove, fashion):
        for metric in ("cosine", "ip", "l2"):
            for rows in (slice(0, 1), slice(0, 7), slice(0, 200)):
                x = data.queries[rows]
                ours, library = prepare_queries(x, data.dim, metric, "c"), prepare_vectors(x, data.dim, metric)
                assert ours.flags.c_contiguous and ours.dtype == np.float32
                assert np.array_equal(ours, library), (metric, rows)  # bit for bit: the same scores
