"""Other model files of the same ViT image tower, for `bench/lead_ab.py --model` (what was tried for the lead).

- ``plain.onnx``      open_clip's visual tower through the project's exporter (``export_onnx``), as model.onnx
- ``lean.onnx``       the same weights with a leaner attention: one QKV projection, batch-first, the softmax
                      scale folded into the query weights, ``F.scaled_dot_product_attention`` (37 Transposes
                      instead of 97 in the ONNX graph)
- ``lean_cls.onnx``   ``lean`` + the last block computed for the class token only (the only row pooled):
                      its query, out-projection and MLP on 1 of 50 tokens
- ``wc_int8.xml``     NNCF int8 weight compression (weights int8, activations in the plugin's precision) of
                      ``plain.onnx``

    python bench/lead_models.py --out /tmp/lead_models
    python bench/lead_ab.py BUNDLE --library openvino --batch 8 --only latency \\
        --model plain=/tmp/lead_models/plain.onnx --model lean=/tmp/lead_models/lean.onnx
(random init, seed 0: speed only; each file's max |diff| to open_clip eager is printed.)
"""

from __future__ import annotations

import argparse
import types
from pathlib import Path

import torch
import torch.nn.functional as F


def lean_attention(visual: torch.nn.Module, cls_only_last: bool) -> None:
    """Replace each residual block's forward (open_clip's, via nn.MultiheadAttention) by an equal, leaner one."""
    blocks = visual.transformer.resblocks
    for i, blk in enumerate(blocks):
        mha = blk.attn
        dim, heads = mha.embed_dim, mha.num_heads
        head = dim // heads
        w, b = mha.in_proj_weight.detach().clone(), mha.in_proj_bias.detach().clone()
        w[:dim] *= head ** -0.5  # softmax scale folded into the query projection
        b[:dim] *= head ** -0.5
        blk.qkv_w, blk.qkv_b = torch.nn.Parameter(w), torch.nn.Parameter(b)
        last = cls_only_last and i == len(blocks) - 1

        def forward(self, q_x, k_x=None, v_x=None, attn_mask=None, last=last, heads=heads, head=head, dim=dim):
            n, s, _ = q_x.shape
            h = self.ln_1(q_x)
            if last:  # only the class token leaves the tower: its query, the keys/values of all tokens
                q = F.linear(h[:, :1], self.qkv_w[:dim], self.qkv_b[:dim]).view(n, 1, heads, head).transpose(1, 2)
                kv = F.linear(h, self.qkv_w[dim:], self.qkv_b[dim:]).view(n, s, 2, heads, head).permute(2, 0, 3, 1, 4)
                k, v = kv.unbind(0)
                q_x, rows = q_x[:, :1], 1
            else:
                qkv = F.linear(h, self.qkv_w, self.qkv_b).view(n, s, 3, heads, head).permute(2, 0, 3, 1, 4)
                q, k, v = qkv.unbind(0)
                rows = s
            o = F.scaled_dot_product_attention(q, k, v, scale=1.0).transpose(1, 2).reshape(n, rows, dim)
            x = q_x + self.ls_1(self.attn.out_proj(o))
            return x + self.ls_2(self.mlp(self.ln_2(x)))

        blk.forward = types.MethodType(forward, blk)


def main() -> None:
    import open_clip

    import clap_edge.models  # noqa: F401  (the project's model configs)
    from clap_edge.export.builders.onnx_export import export_onnx

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="ViT-B-32")
    p.add_argument("--out", type=Path, required=True)
    a = p.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    for name, lean, cls_only in (("plain", False, False), ("lean", True, False), ("lean_cls", True, True)):
        torch.manual_seed(0)
        visual = open_clip.create_model(a.model).visual.eval()
        with torch.no_grad():
            ref = visual(x)
            if lean:
                lean_attention(visual, cls_only)
            diff = (visual(x) - ref).abs().max().item()
        export_onnx(visual, x, a.out / f"{name}.onnx")
        print(f"{name}.onnx: max |diff| to open_clip eager {diff:.2e}")
    import nncf
    import openvino as ov

    compressed = nncf.compress_weights(ov.Core().read_model(str(a.out / "plain.onnx")),
                                       mode=nncf.CompressWeightsMode.INT8_ASYM)
    ov.save_model(compressed, str(a.out / "wc_int8.xml"), compress_to_fp16=False)
    print("wc_int8.xml: NNCF INT8_ASYM weight compression of plain.onnx")


if __name__ == "__main__":
    main()
