"""``BatchLanes``: a batch run as single-threaded slices side by side gives every row the
answer one run over the whole batch gives, in row order, on a real ONNX Runtime session."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from prism.backends._onnx_lanes import BatchLanes, session_options


def _masked_mean_graph(path: Path) -> None:
    """``out[n] = sum(x[n] * mask[n]) / sum(mask[n])``: a row's answer ignores its padding,
    as a pooled text encoder's does."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "tokens"])
    mask = helper.make_tensor_value_info("mask", TensorProto.INT64, ["batch", "tokens"])
    out = helper.make_tensor_value_info("out", TensorProto.FLOAT, ["batch", 1])
    axes = helper.make_tensor("axes", TensorProto.INT64, [1], [1])
    nodes = [
        helper.make_node("Cast", ["mask"], ["m"], to=TensorProto.FLOAT),
        helper.make_node("Mul", ["x", "m"], ["xm"]),
        helper.make_node("ReduceSum", ["xm", "axes"], ["total"]),
        helper.make_node("ReduceSum", ["m", "axes"], ["count"]),
        helper.make_node("Div", ["total", "count"], ["out"]),
    ]
    graph = helper.make_graph(nodes, "masked_mean", [x, mask], [out], initializer=[axes])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, path)


class Recorded:
    """A real session that notes the shape of every run and the thread it ran on."""

    def __init__(self, session: Any) -> None:
        self.session = session
        self.shapes: list[tuple[int, ...]] = []
        self.threads: set[int] = set()
        self._lock = threading.Lock()

    def run(self, outputs: list[str], feed: dict[str, np.ndarray]) -> Any:
        with self._lock:
            self.shapes.append(feed["x"].shape)
            self.threads.add(threading.get_ident())
        return self.session.run(outputs, feed)


@pytest.fixture(scope="module")
def session(tmp_path_factory: pytest.TempPathFactory) -> Any:
    path = tmp_path_factory.mktemp("lanes") / "masked_mean.onnx"
    _masked_mean_graph(path)
    return ort.InferenceSession(str(path), session_options(ort), providers=["CPUExecutionProvider"])


def _padded_batch(rows: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Right-padded rows of 1-12 real tokens in a batch 12 wide; padding holds garbage."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, 13, size=rows)
    mask = (np.arange(12)[None, :] < lengths[:, None]).astype(np.int64)
    return {"x": rng.normal(size=(rows, 12)).astype(np.float32) * 100, "mask": mask}


@pytest.mark.parametrize(("lanes", "rows"), [(2, 32), (3, 7), (4, 2), (2, 1), (1, 9)])
def test_slices_give_each_row_the_whole_batch_answer_in_order(
    session: Any, lanes: int, rows: int
) -> None:
    feed = _padded_batch(rows)
    whole = session.run(["out"], feed)[0]
    recorded = Recorded(session)
    runner = BatchLanes(lanes)
    try:
        got = runner.run(recorded, "out", feed, mask="mask")
    finally:
        runner.close()
    np.testing.assert_allclose(got, whole, rtol=1e-6)
    # one run per slice, never more slices than rows or lanes, every row in one of them
    assert len(recorded.shapes) == min(lanes, rows)
    assert sum(shape[0] for shape in recorded.shapes) == rows


def test_each_slice_drops_only_its_all_padding_columns(session: Any) -> None:
    feed = _padded_batch(4)
    feed["mask"][:] = 0
    feed["mask"][:2, :3] = 1  # the first slice's rows: 3 real tokens
    feed["mask"][2:, :10] = 1  # the second's: 10
    recorded = Recorded(session)
    runner = BatchLanes(2)
    try:
        got = runner.run(recorded, "out", feed, mask="mask")
    finally:
        runner.close()
    assert sorted(recorded.shapes) == [(2, 3), (2, 10)]
    np.testing.assert_allclose(got, session.run(["out"], feed)[0], rtol=1e-6)


def test_slices_run_side_by_side_on_their_own_threads(session: Any) -> None:
    recorded = Recorded(session)
    runner = BatchLanes(2)
    try:
        runner.run(recorded, "out", _padded_batch(8), mask="mask")
    finally:
        runner.close()
    assert threading.get_ident() in recorded.threads and len(recorded.threads) == 2


def test_zero_lanes_means_one_per_core_this_process_may_use() -> None:
    import os

    runner = BatchLanes(0)
    try:
        assert runner.lanes == len(os.sched_getaffinity(0))
    finally:
        runner.close()


def test_a_single_row_runs_on_the_one_row_session_when_given(session: Any) -> None:
    batched, single = Recorded(session), Recorded(session)
    runner = BatchLanes(2)
    try:
        one = _padded_batch(1)
        got = runner.run(batched, "out", one, mask="mask", one_row=single)
        np.testing.assert_allclose(got, session.run(["out"], one)[0], rtol=1e-6)
        assert (len(single.shapes), len(batched.shapes)) == (1, 0)
        runner.run(batched, "out", _padded_batch(2), mask="mask", one_row=single)
        assert (len(single.shapes), len(batched.shapes)) == (1, 2)  # two rows: two slices
    finally:
        runner.close()
