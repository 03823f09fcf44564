"""``python -m trilens.demo``: load a real encoder, look inside it, stream activations to disk.

Runs offline on the all-MiniLM-L6-v2 encoder packaged on PyPI (``zoo:minilm``) until the zoo's
own trained models land.
"""

from __future__ import annotations

import sys
import tempfile
import time

import torch

PAIRS = [
    ("A man is playing a guitar.", "Someone plays an acoustic guitar."),
    ("The cat sleeps on the sofa.", "A kitten is napping on the couch."),
    ("Stock markets fell sharply today.", "The recipe needs two eggs and flour."),
]


def _mean_pool(resid: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    m = mask[None, :, :, None].float()
    return (resid * m).sum(2) / m.sum(2)


def main(out=sys.stdout) -> int:
    import trilens

    start = time.perf_counter()
    model = trilens.load("zoo:minilm")
    info = model.info()
    print(f"{model}\n  sites: {info['n_sites']} hook points; kinds: {', '.join(info['site_kinds'][:10])}, ...", file=out)

    texts = [t for pair in PAIRS for t in pair]
    cache = model.trace(texts, sites=["resid", "attn_pattern"])
    resid = cache.accumulated_resid()  # [layer+1, batch, pos, d]
    pooled = torch.nn.functional.normalize(_mean_pool(resid, cache.mask()), dim=-1)
    sims = (pooled[:, 0::2] * pooled[:, 1::2]).sum(-1)  # [layer+1, pair]
    print("\nCosine similarity of mean-pooled sentences, per layer (0 = embeddings):", file=out)
    print("  layer " + "".join(f"{'pair ' + str(i + 1):>10}" for i in range(len(PAIRS))), file=out)
    for layer, row in enumerate(sims.tolist()):
        print(f"  {layer:>5} " + "".join(f"{v:>10.3f}" for v in row), file=out)
    print("  (pairs 1-2 are paraphrases, pair 3 is unrelated: the gap should widen with depth)", file=out)

    pats = cache.stack("attn_pattern")[:, 0]  # [layer, head, q, k] for the first sentence
    n = int(cache.mask()[0].sum())
    ent = -(pats[..., :n, :n].clamp_min(1e-12).log() * pats[..., :n, :n]).sum(-1).mean((-1, -2))
    print("\nMean attention entropy per layer (nats), first sentence:", file=out)
    print("  " + "  ".join(f"L{i}: {v:.2f}" for i, v in enumerate(ent.tolist())), file=out)

    from trilens.capture.dataset import capture_dataset

    with tempfile.TemporaryDirectory() as tmp:
        store = capture_dataset(model, texts * 20, ["resid_post"], tmp, batch_size=8, texts_per_shard=40, progress=False)
        rows = store.read(model.site("resid_post", -1))
        print(f"\nActivation store: {len(store.to_frame())} shards, last-layer resid_post {tuple(rows.shape)} "
              f"(tokens x d_model, padding not stored)", file=out)
    print(f"\nDone in {time.perf_counter() - start:.1f} s.", file=out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
