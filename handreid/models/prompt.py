"""CoOp / CLIP-ReID prompt learner: class-specific context vectors in fixed templates.

Each template's ``X`` placeholders (or its ``{}`` slot, filled with ``n_ctx`` of them) are
replaced by the class's learned context; the rest of the template comes from CLIP's
frozen token embedding. The text feature is taken at the EOT token and projected with
``text_projection``, as CLIP does; features are averaged over templates.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

PLACEHOLDER = "X"


def fill_template(template: str, n_ctx: int) -> str:
    return template.replace("{}", " ".join([PLACEHOLDER] * n_ctx))


class TextEncoder(nn.Module):
    """CLIP's text tower run on given token embeddings (frozen; gradients pass through)."""

    def __init__(self, clip: nn.Module):
        super().__init__()
        self.transformer = clip.transformer
        self.positional_embedding = clip.positional_embedding
        self.ln_final = clip.ln_final
        self.text_projection = clip.text_projection
        self.register_buffer("attn_mask", clip.attn_mask, persistent=False)

    def forward(self, embeddings: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        x = embeddings + self.positional_embedding.to(embeddings.dtype)
        x = self.transformer(x, attn_mask=self.attn_mask)
        x = self.ln_final(x)
        eot = tokens.argmax(dim=-1)  # EOT has the largest id in CLIP's vocabulary
        x = x[torch.arange(x.shape[0], device=x.device), eot]
        if isinstance(self.text_projection, nn.Linear):
            return self.text_projection(x)
        return x @ self.text_projection


class PromptLearner(nn.Module):
    """Learnable class-specific context; ``forward(labels)`` returns unit text features."""

    def __init__(self, clip: nn.Module, tokenizer, num_classes: int, n_ctx: int, templates):
        super().__init__()
        texts = [fill_template(t, n_ctx) for t in templates]
        tokens = tokenizer(texts)  # (T, L)
        placeholder_id = tokenizer(PLACEHOLDER)[0, 1].item()
        slots = tokens == placeholder_id
        for text, row in zip(texts, slots):
            if int(row.sum()) != n_ctx:
                raise ValueError(
                    f"template {text!r} has {int(row.sum())} placeholders, need {n_ctx}"
                )
        with torch.no_grad():
            embedded = clip.token_embedding(tokens)
        width = embedded.shape[-1]
        self.register_buffer("tokens", tokens, persistent=False)
        self.register_buffer("slots", slots, persistent=False)
        self.register_buffer("template_embeddings", embedded, persistent=False)
        self.ctx = nn.Parameter(torch.randn(num_classes, n_ctx, width) * 0.02)
        self.text_encoder = TextEncoder(clip)
        self.text_encoder.requires_grad_(False)

    @property
    def num_templates(self) -> int:
        return self.tokens.shape[0]

    def prompt_embeddings(self, labels: torch.Tensor, template: int) -> torch.Tensor:
        """(B, L, width): template ``template`` with each label's context in the X slots."""
        base = self.template_embeddings[template].to(self.ctx.dtype)
        out = base.unsqueeze(0).repeat(labels.shape[0], 1, 1)
        out[:, self.slots[template]] = self.ctx[labels]
        return out

    def forward(self, labels: torch.Tensor) -> torch.Tensor:
        feats = []
        for t in range(self.num_templates):
            emb = self.prompt_embeddings(labels, t)
            tokens = self.tokens[t].expand(labels.shape[0], -1)
            feats.append(F.normalize(self.text_encoder(emb, tokens), dim=-1))
        return F.normalize(torch.stack(feats).mean(0), dim=-1)
