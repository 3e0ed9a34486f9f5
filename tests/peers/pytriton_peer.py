"""Test peer: a real Triton Inference Server (PyTriton) serving models with their own tensors.

Run with the peers' venv (``.venv-peers``, built by ``make peers``):

    python tests/peers/pytriton_peer.py --http-port P --grpc-port G --metrics-port M \
        --models embedder[,bert] [--variant renamed]

- ``embedder``: ``TEXT`` (BYTES [-1, 1]) -> ``EMBEDDING`` (FP32 [-1, 8]), a deterministic
  vector of the text's bytes (``slow`` takes 3 s; ``--variant renamed`` serves ``VECTOR`` instead of
  ``EMBEDDING``: an upstream that changed its contract);
- ``bert``: a raw all-MiniLM-L6-v2 ONNX graph (``--onnx PATH``) on onnxruntime:
  ``input_ids`` / ``attention_mask`` / ``token_type_ids`` (INT64 [-1, -1]) ->
  ``last_hidden_state`` (FP32 [-1, -1, 384]); no tokenizer and no pooling on the server;
- ``classifier``: ``TEXT`` -> ``logits`` (FP32 [-1, 3]) from the text's length;
- ``ranker``: ``TEXT`` -> ``scores`` (FP32 [-1, 5]);
- ``vision``: ``pixel_values`` (FP32 [-1, 3, 64, 64]) -> ``image_embeds`` (FP32 [-1, 6]): the
  per-channel mean and standard deviation of the pixels it was sent.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import time

import numpy as np
from pytriton.decorators import batch
from pytriton.model_config import ModelConfig, Tensor
from pytriton.triton import Triton, TritonConfig


def _vector(text: bytes, dim: int) -> np.ndarray:
    digest = hashlib.sha256(text).digest()
    return (np.frombuffer(digest[:dim], dtype=np.uint8).astype(np.float32) - 128.0) / 128.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--http-port", type=int, required=True)
    parser.add_argument("--grpc-port", type=int, required=True)
    parser.add_argument("--metrics-port", type=int, required=True)
    parser.add_argument("--models", default="embedder")
    parser.add_argument("--variant", default="plain", choices=["plain", "renamed"])
    parser.add_argument("--onnx", default=None)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    models = args.models.split(",")
    out_name = "VECTOR" if args.variant == "renamed" else "EMBEDDING"

    @batch
    def embed(TEXT: np.ndarray) -> dict[str, np.ndarray]:
        if any(bytes(t[0]) == b"slow" for t in TEXT):  # a model that outlives a deadline
            time.sleep(3)
        rows = [_vector(bytes(t[0]), 8) for t in TEXT]
        return {out_name: np.stack(rows)}

    @batch
    def classify(TEXT: np.ndarray) -> dict[str, np.ndarray]:
        lengths = np.array([len(bytes(t[0])) for t in TEXT], dtype=np.float32)
        return {"logits": np.stack([lengths % 3, lengths % 5, lengths % 7], axis=1) / 2.0}

    @batch
    def rank(TEXT: np.ndarray) -> dict[str, np.ndarray]:
        return {"scores": np.stack([_vector(bytes(t[0]), 5) for t in TEXT])}

    config = TritonConfig(
        http_port=args.http_port,
        grpc_port=args.grpc_port,
        metrics_port=args.metrics_port,
        http_address="127.0.0.1",
        grpc_address="127.0.0.1",
        log_verbose=0,
    )
    with Triton(config=config) as triton:
        if "embedder" in models:
            triton.bind(
                model_name="embedder",
                infer_func=embed,
                inputs=[Tensor(name="TEXT", dtype=bytes, shape=(1,))],
                outputs=[Tensor(name=out_name, dtype=np.float32, shape=(8,))],
                config=ModelConfig(max_batch_size=64),
                strict=True,
            )
        if "classifier" in models:
            triton.bind(
                model_name="classifier",
                infer_func=classify,
                inputs=[Tensor(name="TEXT", dtype=bytes, shape=(1,))],
                outputs=[Tensor(name="logits", dtype=np.float32, shape=(3,))],
                config=ModelConfig(max_batch_size=64),
                strict=True,
            )
        if "ranker" in models:
            triton.bind(
                model_name="ranker",
                infer_func=rank,
                inputs=[Tensor(name="TEXT", dtype=bytes, shape=(1,))],
                outputs=[Tensor(name="scores", dtype=np.float32, shape=(5,))],
                config=ModelConfig(max_batch_size=64),
                strict=True,
            )
        if "vision" in models:

            @batch
            def vision(pixel_values: np.ndarray) -> dict[str, np.ndarray]:
                # per-channel mean and standard deviation: enough to tell the pixels apart
                flat = pixel_values.reshape(pixel_values.shape[0], 3, -1)
                return {"image_embeds": np.concatenate([flat.mean(2), flat.std(2)], axis=1)}

            triton.bind(
                model_name="vision",
                infer_func=vision,
                inputs=[Tensor(name="pixel_values", dtype=np.float32, shape=(3, 64, 64))],
                outputs=[Tensor(name="image_embeds", dtype=np.float32, shape=(6,))],
                config=ModelConfig(max_batch_size=16),
                strict=True,
            )
        if "bert" in models:
            import onnxruntime as ort

            options = ort.SessionOptions()
            options.intra_op_num_threads = 1
            session = ort.InferenceSession(args.onnx, options, providers=["CPUExecutionProvider"])

            @batch
            def bert(
                input_ids: np.ndarray, attention_mask: np.ndarray, token_type_ids: np.ndarray
            ) -> dict[str, np.ndarray]:
                (hidden,) = session.run(
                    ["last_hidden_state"],
                    {
                        "input_ids": input_ids.astype(np.int64),
                        "attention_mask": attention_mask.astype(np.int64),
                        "token_type_ids": token_type_ids.astype(np.int64),
                    },
                )
                return {"last_hidden_state": hidden.astype(np.float32)}

            triton.bind(
                model_name="bert",
                infer_func=bert,
                inputs=[
                    Tensor(name="input_ids", dtype=np.int64, shape=(-1,)),
                    Tensor(name="attention_mask", dtype=np.int64, shape=(-1,)),
                    Tensor(name="token_type_ids", dtype=np.int64, shape=(-1,)),
                ],
                outputs=[Tensor(name="last_hidden_state", dtype=np.float32, shape=(-1, 384))],
                config=ModelConfig(max_batch_size=64),
                strict=True,
            )
        print("serving", flush=True)
        triton.serve()


if __name__ == "__main__":
    main()
