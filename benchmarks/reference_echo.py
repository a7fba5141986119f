"""Echo embeddings computed the way the original research code does, as the benchmark's baseline.

Each prompt piece and the text are tokenized separately and concatenated; texts go through in
input order, in right-padded batches of a fixed size, every token of every prompt is computed
(no cache), and the last hidden states of the second copy are mean-pooled. Written here, on
purpose, without any of the package's code.
"""

from __future__ import annotations

import torch
from torch import nn

PIECES = ("Rewrite the following sentence:", " {x}", "\nThe rewritten sentence:", " {x}")


def _ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def reference_echo(model: nn.Module, tokenizer, texts: list[str], batch_size: int = 32) -> torch.Tensor:
    """``[len(texts), hidden]`` fp32 echo embeddings, mean over the second copy."""
    bos = [tokenizer.bos_token_id] if tokenizer("a")["input_ids"][0] == tokenizer.bos_token_id else []
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    out = []
    for start in range(0, len(texts), batch_size):
        rows, spans = [], []
        for text in texts[start : start + batch_size]:
            ids, span = list(bos), (0, 0)
            for i, piece in enumerate(PIECES):
                piece_ids = _ids(tokenizer, piece.replace("{x}", text))
                if i == len(PIECES) - 1:
                    span = (len(ids), len(ids) + len(piece_ids))
                ids += piece_ids
            rows.append(ids)
            spans.append(span)
        width = max(len(r) for r in rows)
        input_ids = torch.full((len(rows), width), pad, dtype=torch.long)
        attention = torch.zeros((len(rows), width), dtype=torch.long)
        pooled = torch.zeros((len(rows), width))
        for i, (ids, (a, b)) in enumerate(zip(rows, spans)):
            input_ids[i, : len(ids)] = torch.tensor(ids)
            attention[i, : len(ids)] = 1
            pooled[i, a:b] = 1
        hidden = model(input_ids=input_ids.to(device), attention_mask=attention.to(device)).last_hidden_state.float()
        mask = pooled.to(device).unsqueeze(-1)
        out.append(((hidden * mask).sum(1) / mask.sum(1)).cpu())
    return torch.cat(out)
