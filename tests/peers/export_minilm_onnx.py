"""Export the packaged all-MiniLM-L6-v2 as a raw BERT ONNX graph (run with Prism's own venv).

The graph takes ``input_ids`` / ``attention_mask`` / ``token_type_ids`` (INT64 [n, seq]) and
gives ``last_hidden_state`` (FP32 [n, seq, 384]): no tokenizer and no pooling, the way a
team exports a Hugging Face encoder for Triton. The test peer serves it with onnxruntime
only, so the peer's venv needs no torch.

    python -m tests.peers.export_minilm_onnx build/minilm-onnx/model.onnx
"""

from __future__ import annotations

import sys
from pathlib import Path


def export(out: Path) -> Path:
    import torch
    from transformers import AutoModel

    from prism.backends._text_encoder import packaged_model_path

    folder = packaged_model_path("minilm")
    model = AutoModel.from_pretrained(folder, local_files_only=True).eval()

    class Raw(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.bert = model

        def forward(self, input_ids, attention_mask, token_type_ids):  # type: ignore[no-untyped-def]
            return self.bert(
                input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
            ).last_hidden_state

    ids = torch.ones((2, 8), dtype=torch.int64)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    dynamic = {0: "batch", 1: "sequence"}
    torch.onnx.export(
        Raw(),
        (ids, torch.ones_like(ids), torch.zeros_like(ids)),
        str(tmp),
        input_names=["input_ids", "attention_mask", "token_type_ids"],
        output_names=["last_hidden_state"],
        dynamic_axes={
            "input_ids": dynamic,
            "attention_mask": dynamic,
            "token_type_ids": dynamic,
            "last_hidden_state": dynamic,
        },
        opset_version=17,
        dynamo=False,
    )
    tmp.replace(out)  # a half-written graph never passes for a finished one
    return out


if __name__ == "__main__":
    target = Path(sys.argv[1] if len(sys.argv) > 1 else "build/minilm-onnx/model.onnx")
    print(export(target))
